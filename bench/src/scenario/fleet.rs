//! `--scenario fleet` (`--replicas N`): many proxies, one decision.
//!
//! N switchyards (in this process, each with its own config directory and
//! listeners, as a Deployment's replicas have) in front of translation-api
//! blue and green. One load generator spreads its keep-alive connections
//! over them (connection `i` to replica `i mod N`; with `--rate`, each
//! replica's share of the rate follows its share of the connections). At
//! half the phase the real CLI, `switchyard switch green --admin URL ...
//! --json`, runs as a child process and switches them all; the phase goes
//! on for another half after it returns.
//!
//! Reported per replica: the CLI's acknowledgement time (`took`, from the
//! CLI's own start, whole milliseconds, as the CLI reports it), its first
//! green and its last blue answer (from the moment the CLI was started, on
//! the run's clock), and its own mixed window; for the fleet: the first new
//! answer anywhere to the last old answer anywhere (the fleet's mixed
//! window). PASS only on the CLI's exit 0 with every replica agreeing,
//! 0 failed requests, and 0 old answers to requests sent after the CLI
//! returned.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    all_passed, fmt_ms, format_total, format_verdict, ms_between, rate_words, start_load, stop_load, Check,
    Finished, Green, Pacer, Scenario, Settings, World, BLUE, GREEN,
};
use crate::admin::AdminClient;
use crate::plot::{Mark, MarkKind};
use crate::table::{format_table, num};
use loadgen::clock::Clock;
use loadgen::report::totals;
use loadgen::sample::Sample;

/// How long the CLI may take (its `--timeout`).
const CLI_TIMEOUT: &str = "10s";

/// The `switchyard` binary for the CLI: `explicit` when given; else the one
/// beside this executable (`target/<profile>/switchyard`), built first with
/// `cargo build --locked -p bench -p switchyard --bin switchyard` (same
/// profile, same target directory) when this executable's workspace is still
/// where it was built, so the CLI is never older than the tree. Selecting
/// `bench` too makes cargo unify the dependencies' features exactly as the
/// `cargo run -p bench --bin cutover` that started this process did, so the
/// build reuses every compiled dependency and only builds the binary itself
/// (`-p switchyard` alone resolves other features and rebuilds them all).
pub fn switchyard_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--switchyard-bin {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut dir = exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let candidate = dir.join("switchyard");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    let profile = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    if let (Some(ws), Some(profile), Some(target_dir)) = (workspace, profile, dir.parent()) {
        if ws.join("Cargo.toml").is_file() && ws.join("proxy").is_dir() {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.current_dir(ws)
                .args([
                    "build",
                    "--quiet",
                    "--locked",
                    "-p",
                    "bench",
                    "-p",
                    "switchyard",
                    "--bin",
                    "switchyard",
                ])
                .env("CARGO_TARGET_DIR", target_dir);
            match profile.as_str() {
                "debug" => {}
                "release" => {
                    cmd.arg("--release");
                }
                other => {
                    cmd.args(["--profile", other]);
                }
            }
            eprintln!(
                "cutover: building the switchyard CLI ({profile}) into {}",
                dir.display()
            );
            match cmd.status() {
                Ok(st) if st.success() => {}
                Ok(st) if candidate.is_file() => {
                    eprintln!("cutover: building the CLI failed ({st}); using the one already built")
                }
                Ok(st) => bail!("building the switchyard CLI failed ({st}); give one with --switchyard-bin"),
                Err(e) if candidate.is_file() => {
                    eprintln!("cutover: cannot run cargo ({e}); using the CLI already built")
                }
                Err(e) => bail!(
                    "cannot run cargo to build the switchyard CLI ({e}); give one with --switchyard-bin"
                ),
            }
        }
    }
    if !candidate.is_file() {
        bail!(
            "no switchyard binary at {}: build it (cargo build -p switchyard) or give one with --switchyard-bin",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// The CLI run.
#[derive(Debug, Clone, Serialize)]
pub struct Cli {
    /// The command line (the binary's path shortened to its name).
    pub command: String,
    pub exit_code: Option<i32>,
    /// From starting the child process to its exit, on the run's clock.
    pub took_ms: f64,
    /// The CLI's `agree` (every replica reports green).
    pub agree: Option<bool>,
    /// Its stderr, when it wrote any.
    pub stderr: Option<String>,
    /// Why its output could not be read, if it could not.
    pub error: Option<String>,
}

/// One replica's figures. Times are from the moment the CLI was started.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    /// Its admin URL, as given to the CLI.
    pub admin: String,
    /// Its proxy listener.
    pub proxy: String,
    /// Load connections to it.
    pub connections: usize,
    pub requests: u64,
    pub failed: u64,
    /// The CLI's state for it (`switched`, ...).
    pub state: Option<String>,
    /// The CLI's `took`: from the CLI's start to this replica's answer (whole ms).
    pub ack_ms: Option<u64>,
    /// Its first green answer.
    pub first_new_ms: Option<f64>,
    /// Its last blue answer.
    pub last_old_ms: Option<f64>,
    /// From its first green answer to its last blue one (0 if they do not overlap).
    pub mixed_window_ms: Option<f64>,
    /// Requests to it sent after the CLI returned and answered by blue (must be 0).
    pub stale_after_cli: u64,
    /// `/status.active` at the end.
    pub active_after: Option<String>,
}

/// The scenario's report (`fleet` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub replicas: Vec<Replica>,
    pub cli: Cli,
    /// The first green answer anywhere, from the CLI's start.
    pub first_new_ms: Option<f64>,
    /// The last blue answer anywhere, from the CLI's start.
    pub last_old_ms: Option<f64>,
    /// The fleet's mixed window: first new answer anywhere to last old answer anywhere (0 if none overlap).
    pub mixed_window_ms: Option<f64>,
    /// The reverse, when they do not overlap: a pause with no answer anywhere.
    pub gap_ms: Option<f64>,
    pub stale_after_cli: u64,
    pub checks: Vec<Check>,
}

/// Connections per replica: `total` spread as `i mod n`.
pub fn spread(total: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| total / n + usize::from(i < total % n)).collect()
}

/// Runs the scenario with `n` replicas and the CLI at `bin`.
pub async fn run(
    s: &Settings,
    n: usize,
    bin: &Path,
    clock: Clock,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<Finished> {
    anyhow::ensure!(n >= 1, "--replicas must be at least 1");
    anyhow::ensure!(
        s.concurrency >= n,
        "--concurrency {} is less than --replicas {n}: every replica needs a connection",
        s.concurrency
    );
    // Every replica's upstreams file: blue and green, no health checks (every
    // endpoint not ejected counts as ready, so the gate lets the switch through).
    let world = World::start_fleet(s, Scenario::Fleet, Green::Up { fail_ratio: 0.0 }, n, "")?;
    let admins = world.admin_urls();
    let pacer = Pacer::new(clock, bar);
    let conns = spread(s.concurrency, n);
    let mut loads = Vec::with_capacity(n);
    for (p, c) in world.proxies().iter().zip(&conns) {
        let url = format!("http://{}/version", p.http_addr());
        let cfg = s.load_config(&url, *c, s.rate_share(*c, s.concurrency))?;
        loads.push(start_load(cfg, clock, &pacer.count)?);
    }
    let half = s.half_ns();
    pacer.warm_up(s, "blue, before the switch").await;

    let mut args: Vec<String> = vec!["switch".into(), "green".into(), "--admin".into()];
    args.extend(admins.iter().cloned());
    args.extend(["--timeout".into(), CLI_TIMEOUT.into(), "--json".into()]);
    pacer.say("switchyard switch green");
    let spawned_ns = clock.now_ns();
    let output = tokio::process::Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await;
    let exited_ns = clock.now_ns();
    pacer.sleep_until(exited_ns + half, "after the switch").await;

    let mut per_replica: Vec<Vec<Sample>> = loads.into_iter().map(stop_load).collect();
    let mut active_after = Vec::with_capacity(n);
    for a in &admins {
        let st = AdminClient::new(a, None, clock)?.status().await.ok();
        active_after.push(st.and_then(|st| st["active"].as_str().map(str::to_string)));
    }
    let http: Vec<String> = world
        .proxies()
        .iter()
        .map(|p| p.http_addr().to_string())
        .collect();
    world.stop();

    let command = format!("switchyard {}", args.join(" "));
    let (cli, rows) = match output {
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let parsed: Result<Value, _> = serde_json::from_slice(&out.stdout);
            let (agree, rows, error) = match parsed {
                Ok(v) => (
                    v["agree"].as_bool(),
                    v["replicas"].as_array().cloned().unwrap_or_default(),
                    None,
                ),
                Err(e) => (
                    None,
                    Vec::new(),
                    Some(format!(
                        "its output is not the JSON report ({e}): {}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    )),
                ),
            };
            (
                Cli {
                    command,
                    exit_code: out.status.code(),
                    took_ms: ms_between(spawned_ns, exited_ns),
                    agree,
                    stderr: (!stderr.is_empty()).then_some(stderr),
                    error,
                },
                rows,
            )
        }
        Err(e) => (
            Cli {
                command,
                exit_code: None,
                took_ms: ms_between(spawned_ns, exited_ns),
                agree: None,
                stderr: None,
                error: Some(format!("cannot run {}: {e}", bin.display())),
            },
            Vec::new(),
        ),
    };

    let since = |at: u64| ms_between(spawned_ns, at);
    let mut replicas = Vec::with_capacity(n);
    for (i, samples) in per_replica.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r["replica"].as_str() == Some(admins[i].as_str()));
        let first_new = first_of(samples, GREEN);
        let last_old = last_of(samples, BLUE);
        replicas.push(Replica {
            admin: admins[i].clone(),
            proxy: http[i].clone(),
            connections: conns[i],
            requests: samples.len() as u64,
            failed: samples.iter().filter(|x| !x.ok()).count() as u64,
            state: row.and_then(|r| r["state"].as_str().map(str::to_string)),
            ack_ms: row.and_then(|r| r["took_ms"].as_u64()),
            first_new_ms: first_new.map(since),
            last_old_ms: last_old.map(since),
            mixed_window_ms: first_new.zip(last_old).map(|(f, l)| ms_between(f, l).max(0.0)),
            stale_after_cli: samples
                .iter()
                .filter(|x| x.sent_ns > exited_ns && x.ok_version() == Some(BLUE))
                .count() as u64,
            active_after: active_after[i].clone(),
        });
    }
    let all: Vec<Sample> = per_replica.drain(..).flatten().collect();
    let first_new = first_of(&all, GREEN);
    let last_old = last_of(&all, BLUE);
    let total = totals(&all);
    let stale: u64 = replicas.iter().map(|r| r.stale_after_cli).sum();

    let checks = vec![
        Check::new(
            "the CLI exits 0 and every replica agrees on green",
            cli.exit_code == Some(0)
                && cli.agree == Some(true)
                && replicas.iter().all(|r| r.state.as_deref() == Some("switched")),
            match &cli.error {
                Some(e) => e.clone(),
                None => format!(
                    "exit {}, agree {}, states {}{}",
                    cli.exit_code.map_or("-".into(), |c| c.to_string()),
                    cli.agree.map_or("-".into(), |a| a.to_string()),
                    replicas
                        .iter()
                        .map(|r| r.state.as_deref().unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    cli.stderr
                        .as_deref()
                        .map_or(String::new(), |e| format!("; stderr: {e}"))
                ),
            },
        ),
        Check::no_failed(&total),
        Check::new(
            "0 answers from blue to requests sent after the CLI returned",
            stale == 0,
            format!("{stale} stale"),
        ),
        Check::new(
            "every replica answers green after the switch and reports it in /status",
            replicas
                .iter()
                .all(|r| r.first_new_ms.is_some() && r.active_after.as_deref() == Some("green")),
            replicas
                .iter()
                .map(|r| r.active_after.as_deref().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    let passed = all_passed(&checks);
    let report = Report {
        first_new_ms: first_new.map(since),
        last_old_ms: last_old.map(since),
        mixed_window_ms: first_new.zip(last_old).map(|(f, l)| ms_between(f, l).max(0.0)),
        gap_ms: first_new.zip(last_old).map(|(f, l)| ms_between(l, f).max(0.0)),
        stale_after_cli: stale,
        replicas,
        cli,
        checks,
    };

    let mut text = format!("{}\n", report.cli.command);
    text.push_str(&format!(
        "the CLI ran {:.2} ms (exit {}); times below are from its start\n\n",
        report.cli.took_ms,
        report.cli.exit_code.map_or("-".into(), |c| c.to_string())
    ));
    let rows: Vec<Vec<String>> = report
        .replicas
        .iter()
        .map(|r| {
            vec![
                r.admin.clone(),
                r.state.clone().unwrap_or_else(|| "-".into()),
                r.connections.to_string(),
                r.requests.to_string(),
                r.failed.to_string(),
                r.ack_ms.map_or("-".into(), |a| a.to_string()),
                num(r.first_new_ms, 2),
                num(r.last_old_ms, 2),
                num(r.mixed_window_ms, 2),
                r.stale_after_cli.to_string(),
            ]
        })
        .collect();
    text.push_str(&format_table(
        &[
            "replica",
            "state",
            "connections",
            "requests",
            "failed",
            "ack_ms (CLI)",
            "first_new_ms",
            "last_old_ms",
            "mixed_window_ms",
            "stale_after_cli",
        ],
        2,
        &rows,
    ));
    text.push_str(&format!(
        "\nfleet: first new answer {}, last old answer {}, mixed window {} (gap {}), {} stale after the CLI returned\n",
        fmt_ms(report.first_new_ms),
        fmt_ms(report.last_old_ms),
        fmt_ms(report.mixed_window_ms),
        fmt_ms(report.gap_ms),
        report.stale_after_cli
    ));
    text.push_str(&format_total(&total, ""));
    text.push_str(&format_verdict(
        &report.checks,
        "one command switched every replica; 0 failed, 0 stale after it returned",
    ));

    let marks = vec![
        Mark {
            at_ns: spawned_ns,
            label: "switchyard switch".into(),
            kind: MarkKind::Switch,
        },
        Mark {
            at_ns: exited_ns,
            label: "CLI returned".into(),
            kind: MarkKind::RunStart,
        },
    ];
    let json = json!({ "replicas": n, "fleet": report, "total": total });
    Ok(Finished {
        passed,
        text,
        json,
        samples: all,
        marks,
        title: format!(
            "switchyard fleet of {n}: answers per 10 ms by version ({} connections, {})",
            s.concurrency,
            rate_words(s.rate)
        ),
    })
}

fn first_of(samples: &[Sample], version: &str) -> Option<u64> {
    samples
        .iter()
        .filter(|x| x.ok_version() == Some(version))
        .map(|x| x.done_ns)
        .min()
}

fn last_of(samples: &[Sample], version: &str) -> Option<u64> {
    samples
        .iter()
        .filter(|x| x.ok_version() == Some(version))
        .map(|x| x.done_ns)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_spread_over_replicas() {
        assert_eq!(spread(64, 3), [22, 21, 21]);
        assert_eq!(spread(3, 3), [1, 1, 1]);
        assert_eq!(spread(8, 1), [8]);
    }
}
