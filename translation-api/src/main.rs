//! `translation-api`: flags → tracing → the Redis task (its check fatal only
//! with `--require-redis`) and listeners ([`translation_api::spawn`]) → wait
//! for SIGTERM/SIGINT → graceful shutdown → exit code (0 after a clean
//! shutdown, 1 when it could not start, 2 for a usage error).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use ipnet::IpNet;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use translation_api::{build_version, default_trusted_proxies, spawn, Config, DEFAULT_LISTEN};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The translation API that switchyard fronts.
///
/// Environment: REDIS_ADDR (`host` or `host:port`, default port 6379) counts
/// translate requests per client address in the Redis hash `requests_by_ip`
/// (Redis being away at start does not stop the service: it warns, serves and
/// connects in the background, unless --require-redis);
/// APP_VERSION overrides the version built in; RUST_LOG filters the logs
/// (`access=off` silences the access log).
#[derive(Parser, Debug)]
#[command(name = "translation-api", disable_version_flag = true)]
struct Cli {
    /// Print the version and exit.
    #[arg(short = 'V', long = "version")]
    version: bool,

    /// Address to listen on.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// A proxy (CIDR or address) whose X-Forwarded-For is believed; repeatable.
    /// Default: loopback (127.0.0.0/8 and ::1). Giving any replaces the default.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_net)]
    trusted_proxy: Vec<IpNet>,

    /// One log line per request: --access-log=false turns it off.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    access_log: bool,

    /// On SIGTERM: keep serving this long with /readyz = 503 before closing the listener.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_delay: Duration,

    /// Then: how long in-flight requests get to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,

    /// Worker threads (each its own runtime and listener); 0 = one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Exit 1 at start when REDIS_ADDR does not answer PING within 3 s,
    /// instead of serving and connecting in the background. Needs REDIS_ADDR.
    #[arg(long)]
    require_redis: bool,

    /// A testing and demo aid: this share (0.0-1.0) of translate requests
    /// answers 500, evenly spaced (0.2: every 5th). Off (0) by default.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = parse_ratio)]
    fail_ratio: f64,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a ratio from 0.0 to 1.0")),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither a CIDR nor an IP address"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let version = std::env::var("APP_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| build_version().to_owned());
    if cli.version {
        println!("translation-api {version}");
        return ExitCode::SUCCESS;
    }

    // Logs go through a background writer thread: a slow stdout never
    // stalls a response (lines are dropped instead, when its queue is full).
    // The thread writes whatever has queued up with one write(2), through a
    // BufWriter it flushes each time the queue is empty: one syscall per
    // burst instead of one per line (stdout alone is line-buffered).
    let (writer, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("translation-api-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(translation_api::log::Batched::new(writer))
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }

    let redis_addr = std::env::var("REDIS_ADDR").ok().filter(|a| !a.trim().is_empty());
    if cli.require_redis && redis_addr.is_none() {
        eprintln!("translation-api: --require-redis needs REDIS_ADDR (host or host:port)");
        return ExitCode::from(2);
    }
    let mut config = Config::new(cli.listen, version.clone());
    config.trusted_proxies = if cli.trusted_proxy.is_empty() {
        default_trusted_proxies()
    } else {
        cli.trusted_proxy
    };
    config.access_log = cli.access_log;
    config.shutdown_delay = cli.shutdown_delay;
    config.shutdown_grace = cli.shutdown_grace;
    config.redis_addr = redis_addr;
    config.require_redis = cli.require_redis;
    config.workers = cli.workers;
    config.fail_ratio = cli.fail_ratio;
    if cli.fail_ratio > 0.0 {
        tracing::warn!(
            fail_ratio = cli.fail_ratio,
            "--fail-ratio: this share of translate requests answers 500 (a testing aid)"
        );
    }

    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("translation-api: cannot start the signal runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    // Signal handlers first, so a SIGTERM during start-up is not fatal.
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("translation-api: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let redis = config.redis_addr.clone();
    let version = config.version.clone();
    let running = match spawn(config) {
        Ok(running) => running,
        Err(e) => {
            eprintln!("translation-api: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %running.addr(), %version, redis = redis.as_deref().unwrap_or("off"), "listening");

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    running.begin_shutdown();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(running.join());
    });
    tokio::select! {
        joined = done_rx => match joined {
            Ok(Ok(())) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "stopped with an error");
                ExitCode::FAILURE
            }
            Err(_) => ExitCode::FAILURE,
        },
        _ = term.recv() => {
            eprintln!("translation-api: second signal: exiting without waiting");
            std::process::exit(1)
        }
        _ = int.recv() => {
            eprintln!("translation-api: second signal: exiting without waiting");
            std::process::exit(1)
        }
    }
}
