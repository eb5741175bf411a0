//! `switchyard` command line: flags → tracing → load + validate (exit 64 if
//! invalid) → bind → run, plus `check` and `status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchyard::fleet;
use switchyard::status::Status;
use switchyard::{raise_open_files_limit, Checked, ConfigErrors, Error, Listeners};

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
    /// Print /status for a person: one replica in detail, several as a
    /// table with an `agree` verdict (exit 1 when they disagree).
    Status(fleet::StatusArgs),
    /// Switch every replica to a pool at once and wait until all report it
    /// (exit 0 only when they all agree).
    Switch(fleet::SwitchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => run(&cli.config),
        Cmd::Check { offline } => check(&cli.config, offline),
        Cmd::Status(a) => match status(&a) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("switchyard status: {e:#}");
                ExitCode::FAILURE
            }
        },
        Cmd::Switch(a) => match switch(&a) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("switchyard switch: {e:#}");
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
    match raise_open_files_limit() {
        Ok((soft, hard, now)) => {
            tracing::info!(
                soft,
                hard,
                now,
                "open-file limit (RLIMIT_NOFILE): soft raised to the hard limit"
            )
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
    let started = Checked::load(config, false)
        .map_err(Error::from)
        .and_then(|checked| {
            let cores = checked.settings.file.runtime.cores();
            Ok((Listeners::bind(&checked.settings, cores)?, checked))
        });
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

fn cli_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn switch(a: &fleet::SwitchArgs) -> Result<ExitCode> {
    let report = cli_runtime()?.block_on(fleet::switch(a))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", fleet::render_switch(&report));
    }
    Ok(if report.agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status(a: &fleet::StatusArgs) -> Result<ExitCode> {
    let rt = cli_runtime()?;
    if let ([admin], None, None) = (a.replicas.admin.as_slice(), &a.replicas.admin_dns, &a.expect) {
        let s: Status = rt.block_on(get_json(admin, "/status"))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            detail(&s);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let f = rt.block_on(fleet::fleet_status(&a.replicas))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        print!("{}", fleet::render_fleet(&f, a.expect.as_deref()));
    }
    Ok(if f.passes(a.expect.as_deref()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn detail(s: &Status) {
    let overridden = match (s.overridden, s.source.as_str()) {
        (false, _) => "",
        (true, "auto") => "  (automatic rollback override)",
        (true, _) => "  (admin override)",
    };
    println!("active      {}{overridden}", s.active);
    if s.split.is_some() {
        println!("split       {}", fleet::served(s));
    }
    if let Some(r) = &s.override_reason {
        println!("why         {r}");
    }
    if let Some(r) = &s.rollback_blocked {
        println!("rollback blocked: {r}");
    }
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
    if !s.file_active.is_empty() && s.file_active != s.active {
        println!("file says   {}", s.file_active);
    }
    if let Some(p) = &s.pending {
        println!(
            "pending     {}  (waiting since {}: {})",
            p.active, p.since, p.reason
        );
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
        let panic = if p.panic {
            "  PANIC: no usable endpoint, using all"
        } else {
            ""
        };
        let ready = match &p.readiness {
            Some(r) if p.ready => format!(
                "ready ({} of {} healthy, needs {})",
                r.healthy, r.endpoints, r.needs
            ),
            Some(r) => format!(
                "NOT READY ({} of {} healthy, needs {})",
                r.healthy, r.endpoints, r.needs
            ),
            None => "readiness unknown".into(),
        };
        println!(
            "pool {name:<10} {state:<9} inflight {} tunnels {}  {ready}{panic}",
            p.inflight, p.tunnels
        );
        if let Some(t) = &p.drained_at {
            println!("  drained since {t}");
        }
        if let Some(e) = &p.discovery_error {
            println!("  discovery error: {e}");
        }
        if p.endpoints.is_empty() {
            println!("  (no endpoint)");
        }
        for e in &p.endpoints {
            println!("  {} {}", e.address, e.health.label());
        }
    }
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
