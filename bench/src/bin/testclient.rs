//! `testclient [URL]` — the original project's test client, kept.
//!
//! Sends `GET URL` (default `http://127.0.0.1:8080/version`) as fast as it
//! can, or at `--rate` requests/s, for as long as it runs (or `--duration`),
//! and prints:
//! - every 1000 requests: `N requests, F failed`;
//! - each failed request: `request N failed: <status or error>`;
//! - each change of version: `version A -> B at request N (T s)`;
//! - on Ctrl-C (or at the end of `--duration`): the summary — total, failed,
//!   elapsed seconds, average requests/s, last version, latency percentiles.
//!
//! A second Ctrl-C exits at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use loadgen::clock::Clock;
use loadgen::sample::Sample;
use loadgen::stats::{Latency, LatencyRecorder};
use loadgen::target::Target;
use loadgen::{LoadConfig, LoadGen, Sink};
use serde::Serialize;

/// `println!` that ignores a closed stdout (`testclient | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The original test client: requests in a loop, a line per 1000, per failure
/// and per version change, and a summary on Ctrl-C.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The URL to request.
    #[arg(default_value = "http://127.0.0.1:8080/version")]
    url: String,
    /// Connections, each with one request in flight (the original was sequential).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Stop after this long (e.g. 10s, 2m) instead of running until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Open loop: this many requests per second in total, at fixed intended
    /// send times; latency counts from the intended time. Default: as fast as it can.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the summary and every version change (with timestamps) to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// OS threads for the connections.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A request not answered within this fails (and its connection is replaced).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// A change of the answering version.
#[derive(Debug, Clone, Serialize)]
struct VersionChange {
    /// The request's number (1-based, in answer order).
    request: u64,
    /// Seconds since the client started, when the answer arrived.
    at_s: f64,
    /// Wall-clock time of the answer, milliseconds since the Unix epoch.
    unix_ms: u64,
    /// `null` for the first version seen.
    from: Option<String>,
    to: String,
}

/// Counters and the version history shared by all workers.
struct Live {
    clock: Clock,
    /// Wall-clock time at the clock's origin, for the JSON timestamps.
    unix_origin_ms: u64,
    /// Finished requests; numbers requests in answer order.
    total: AtomicU64,
    failed: AtomicU64,
    /// The previous answer's version and every change; one lock so the
    /// comparison and the history agree when workers race.
    versions: Mutex<(Option<Arc<str>>, Vec<VersionChange>)>,
}

/// One worker's sink: prints as it goes, keeps its own histogram.
struct Printer {
    live: Arc<Live>,
    latency: LatencyRecorder,
}

impl Sink for Printer {
    fn record(&mut self, s: Sample) {
        let live = &*self.live;
        let n = live.total.fetch_add(1, Ordering::Relaxed) + 1;
        self.latency.record_ns(s.latency_ns());
        if let Some(why) = s.failure() {
            live.failed.fetch_add(1, Ordering::Relaxed);
            say!("request {n} failed: {why}");
        } else if let Some(v) = &s.version {
            let mut guard = live.versions.lock().unwrap_or_else(|p| p.into_inner());
            let (last, changes) = &mut *guard;
            if last.as_deref() != Some(&**v) {
                let at_s = s.done_ns as f64 / 1e9;
                match last {
                    Some(old) => say!("version {old} -> {v} at request {n} ({at_s:.3} s)"),
                    None => say!("version {v} (first answer, {at_s:.3} s)"),
                }
                changes.push(VersionChange {
                    request: n,
                    at_s,
                    unix_ms: live.unix_origin_ms + s.done_ns / 1_000_000,
                    from: last.as_deref().map(str::to_string),
                    to: v.to_string(),
                });
                *last = Some(v.clone());
            }
        }
        if n % 1000 == 0 {
            say!("{n} requests, {} failed", live.failed.load(Ordering::Relaxed));
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    url: String,
    concurrency: usize,
    rate: Option<f64>,
    total: u64,
    failed: u64,
    elapsed_s: f64,
    rps: f64,
    last_version: Option<String>,
    latency: Latency,
    version_changes: Vec<VersionChange>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = Target::parse(&args.url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args, target))
}

async fn run(args: Args, target: Target) -> anyhow::Result<()> {
    // Listen for Ctrl-C before the first request, so none is lost to the default handler.
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let clock = Clock::start();
    let unix_origin_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let live = Arc::new(Live {
        clock,
        unix_origin_ms,
        total: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        versions: Mutex::new((None, Vec::new())),
    });
    let mut cfg = LoadConfig::new(target, args.concurrency);
    cfg.rate = args.rate;
    cfg.threads = args.threads;
    cfg.request_timeout = args.timeout;
    cfg.duration = args.duration;
    let load = LoadGen::start(cfg, clock, |_| Printer {
        live: live.clone(),
        latency: LatencyRecorder::new(),
    })?;

    if args.duration.is_some() {
        // The generator ends its own schedule: with `--rate`, exactly the
        // requests due within the duration, however busy the machine is.
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = poll.tick() => if load.finished() { break },
                _ = sigint.recv() => break,
            }
        }
    } else {
        sigint.recv().await;
    }
    let elapsed_ns = live.clock.now_ns();
    // Let in-flight requests finish; a second Ctrl-C leaves at once.
    let stopping = tokio::task::spawn_blocking(move || load.stop());
    let sinks = tokio::select! {
        r = stopping => r.context("stopping the workers")?,
        _ = sigint.recv() => std::process::exit(130),
    };
    let mut latency = LatencyRecorder::new();
    for s in &sinks {
        latency.merge(&s.latency);
    }
    let (last, changes) = live.versions.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let total = live.total.load(Ordering::Relaxed);
    let elapsed_s = elapsed_ns as f64 / 1e9;
    let summary = Summary {
        url: args.url.clone(),
        concurrency: args.concurrency,
        rate: args.rate,
        total,
        failed: live.failed.load(Ordering::Relaxed),
        elapsed_s,
        rps: if elapsed_s > 0.0 {
            total as f64 / elapsed_s
        } else {
            0.0
        },
        last_version: last.as_deref().map(str::to_string),
        latency: latency.summary(),
        version_changes: changes,
    };
    let l = &summary.latency;
    say!("--- summary ---");
    say!("total requests: {}", summary.total);
    say!("failed: {}", summary.failed);
    say!("elapsed: {:.2} s", summary.elapsed_s);
    say!("average: {:.1} requests/s", summary.rps);
    say!(
        "last version: {}",
        summary.last_version.as_deref().unwrap_or("none")
    );
    say!(
        "latency: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.p99_9_ms,
        l.max_ms
    );
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
