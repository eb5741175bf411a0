//! `switchyard` command line: flags → tracing → load + validate (exit 64 if
//! invalid) → bind → run, plus `check` and `status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchyard::status::Status;
use switchyard::{default_cores, Checked, ConfigErrors, Error, Listeners};

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
    let started = Checked::load(config, false)
        .map_err(Error::from)
        .and_then(|checked| Ok((Listeners::bind(&checked.settings, default_cores())?, checked)));
    let (listeners, checked) = match started {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&Error::Runtime {
                what: "the signal runtime",
                source: e,
            })
        }
    };
    match rt.block_on(switchyard::run(checked, listeners, terminated())) {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Logs why the proxy could not run; exit 64 for an invalid configuration.
fn fail(e: &Error) -> ExitCode {
    tracing::error!("{e}");
    eprintln!("switchyard: {e}");
    match e {
        Error::Config(_) => ExitCode::from(64),
        _ => ExitCode::FAILURE,
    }
}

/// Completes at SIGTERM or SIGINT (SIGHUP is the watcher's: a re-read).
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (term, int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; stopping");
            return;
        }
    };
    let (mut term, mut int) = (term, int);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

fn check(config: &Path, offline: bool) -> ExitCode {
    let errors: Vec<String> = match Checked::load(config, offline) {
        Err(ConfigErrors(es)) => es.iter().map(ToString::to_string).collect(),
        Ok(checked) if offline => {
            println!(
                "ok: {}, {}",
                config.display(),
                checked.settings.upstreams_path.display()
            );
            return ExitCode::SUCCESS;
        }
        Ok(checked) => {
            let unresolved = checked.unresolvable_endpoints();
            if unresolved.is_empty() {
                println!(
                    "ok: {}, {}",
                    config.display(),
                    checked.settings.upstreams_path.display()
                );
                return ExitCode::SUCCESS;
            }
            unresolved.iter().map(ToString::to_string).collect()
        }
    };
    for e in &errors {
        eprintln!("error: {e}");
    }
    eprintln!("{} error(s)", errors.len());
    ExitCode::FAILURE
}

fn status(admin: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s: Status = rt.block_on(get_json(admin, "/status"))?;
    let overridden = if s.overridden { "  (admin override)" } else { "" };
    println!("active      {}{overridden}", s.active);
    println!("previous    {}", s.previous.as_deref().unwrap_or("null"));
    println!(
        "generation  {}  (source: {}, since {})",
        s.generation, s.source, s.switched_at
    );
    if let Some(e) = &s.last_reload_error {
        println!("last reload error: {e}");
    }
    if let Some(e) = &s.persist_error {
        println!("persist error: {e}");
    }
    for t in &s.tls {
        println!(
            "tls {:<12} {}  not after {}{}",
            t.name,
            t.names.join(","),
            t.not_after,
            t.last_error
                .as_deref()
                .map(|e| format!("  (a new pair was rejected: {e})"))
                .unwrap_or_default()
        );
    }
    for (name, p) in &s.pools {
        let state = if p.active {
            "active"
        } else if p.drained {
            "drained"
        } else {
            "draining"
        };
        println!(
            "pool {name:<10} {state:<9} inflight {} tunnels {}",
            p.inflight, p.tunnels
        );
        for e in &p.endpoints {
            println!("  {} healthy={}", e.address, e.healthy);
        }
    }
    Ok(())
}

/// `GET admin + path` over HTTP/1.1 (hyper's client), decoded as JSON.
async fn get_json<T: serde::de::DeserializeOwned>(admin: &str, path: &str) -> Result<T> {
    use http_body_util::BodyExt;
    let base: hyper::Uri = admin
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("`{admin}` is not a URL"))?;
    if base.scheme_str() != Some("http") {
        bail!("the admin URL must start with http://");
    }
    let authority = base.authority().context("the admin URL needs a host")?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let deadline = std::time::Duration::from_secs(5);
    let answer = tokio::time::timeout(deadline, async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("{}{path}", base.path().trim_end_matches('/')))
            .header(hyper::header::HOST, authority.as_str())
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let res = send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .with_context(|| format!("{admin} did not answer within {deadline:?}"))??;
    let (code, body) = answer;
    if !code.is_success() {
        bail!("{admin}{path}: {code}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{admin}{path}: the answer is not a status document"))
}
