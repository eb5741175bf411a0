//! `switchyard` command line: flags → tracing → load + validate (exit 64 if
//! invalid) → bind → run, plus `check` and `status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchyard::config::{self, Settings};
use switchyard::table::Desired;
use switchyard::{Error, Proxy};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An edge proxy that cuts over from blue to green by itself"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// proxy.toml (for the default `run`).
    #[arg(short, long, global = true, default_value = "config/proxy.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the default).
    Run,
    /// Validate proxy.toml and its upstreams file, list every error, and exit.
    Check {
        /// Skip what needs the machine it will run on (token file, DNS names).
        #[arg(long)]
        offline: bool,
    },
    /// Print a proxy's /status for a person.
    Status {
        /// Admin URL, e.g. http://127.0.0.1:9901
        #[arg(long)]
        admin: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => run(&cli.config),
        Cmd::Check { offline } => check(&cli.config, offline),
        Cmd::Status { admin } => match status(&admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard status: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(config: &Path) -> ExitCode {
    let (writer, _guard) = tracing_appender::non_blocking(std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(writer)
        .with_ansi(false)
        .init();
    let proxy = match Proxy::start(config) {
        Ok(p) => p,
        Err(e @ Error::Config(_)) => {
            tracing::error!("{e}");
            eprintln!("switchyard: {e}");
            return ExitCode::from(64);
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    match wait_for_signals(&proxy) {
        Ok(()) => {
            tracing::info!("shutting down");
            proxy.shutdown();
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves SIGHUP (re-read the upstreams file) until SIGTERM or SIGINT.
fn wait_for_signals(proxy: &Proxy) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reloader = proxy.reloader();
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM"); return Ok(()); }
                _ = int.recv() => { tracing::info!("SIGINT"); return Ok(()); }
                _ = hup.recv() => {
                    let outcome = reloader.reload().await;
                    tracing::info!(?outcome, "SIGHUP: upstreams file re-read");
                }
            }
        }
    })
}

fn check(config: &Path, offline: bool) -> ExitCode {
    let mut errors: Vec<String> = Vec::new();
    let mut checked = Vec::new();
    match Settings::load(config) {
        Err(es) => errors.extend(es.iter().map(ToString::to_string)),
        Ok(settings) => {
            checked.push(config.display().to_string());
            let path = &settings.upstreams_path;
            match config::read_upstreams(path) {
                Err(e) => errors.push(e.to_string()),
                Ok(bytes) => match Desired::parse(path, &bytes) {
                    Err(es) => errors.extend(es.iter().map(ToString::to_string)),
                    Ok(desired) => {
                        checked.push(path.display().to_string());
                        if !offline {
                            for (pool, endpoints) in &desired.pools {
                                for ep in endpoints {
                                    if ep.parse::<std::net::SocketAddr>().is_err() {
                                        if let Err(e) = std::net::ToSocketAddrs::to_socket_addrs(ep.as_str())
                                        {
                                            errors.push(format!(
                                                "{}: pools.{pool}: cannot resolve `{ep}`: {e}",
                                                path.display()
                                            ));
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
            }
            if settings.file.admin.persist
                && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
            {
                errors.push(format!(
                    "{}: [admin] persist = true, but the upstreams file {} is a symlink (a ConfigMap mount?)",
                    config.display(),
                    path.display()
                ));
            }
            if !offline {
                if let Err(e) = settings.read_token() {
                    errors.push(e.to_string());
                }
            }
        }
    }
    if errors.is_empty() {
        println!("ok: {}", checked.join(", "));
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s)", errors.len());
        ExitCode::FAILURE
    }
}

fn status(admin: &str) -> Result<()> {
    let url = format!("{}/status", admin.trim_end_matches('/'));
    let body = switchyard_get(&url)?;
    let v: serde_json::Value = serde_json::from_slice(&body).context("the answer is not JSON")?;
    let s = |k: &str| {
        v.get(k)
            .map(|x| x.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    println!(
        "active      {}{}",
        s("active"),
        if v["override"] == true {
            "  (admin override)"
        } else {
            ""
        }
    );
    println!("previous    {}", s("previous"));
    println!(
        "generation  {}  (source: {}, since {})",
        s("generation"),
        s("source"),
        s("switched_at")
    );
    if !v["last_reload_error"].is_null() {
        println!("last reload error: {}", s("last_reload_error"));
    }
    if let Some(pools) = v["pools"].as_object() {
        for (name, p) in pools {
            let state = if p["active"] == true {
                "active"
            } else if p["drained"] == true {
                "drained"
            } else {
                "draining"
            };
            println!("pool {name:<10} {state:<9} inflight {}", p["inflight"]);
            for e in p["endpoints"].as_array().into_iter().flatten() {
                println!(
                    "  {} healthy={}",
                    e["address"].as_str().unwrap_or("?"),
                    e["healthy"]
                );
            }
        }
    }
    Ok(())
}

/// A minimal blocking HTTP/1.1 GET for `status` (plain http only).
fn switchyard_get(url: &str) -> Result<Vec<u8>> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("the admin URL must start with http://")?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream =
        std::net::TcpStream::connect(hostport).with_context(|| format!("cannot connect to {hostport}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP answer")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or("bad answer"));
    }
    Ok(buf[split + 4..].to_vec())
}
