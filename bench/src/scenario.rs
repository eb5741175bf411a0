//! `cutover --scenario NAME`: the stories `cutover` can tell.
//!
//! [`Scenario::Full`] (the default) is the four cut-overs of the README,
//! run by the binary through [`crate::driver`]. The others are modules
//! here, each an `async fn run(&Settings, ...) -> anyhow::Result<Finished>`
//! that starts what it needs, drives the load, checks its own PASS/FAIL
//! criteria and hands back the report; the binary prints it and writes
//! `--json` and `--plot`. To add one: a variant of [`Scenario`] (its doc
//! comment is its `--help` line), a module with its `run`, and an arm in
//! the binary's dispatch.

pub mod bad_release;
pub mod broken_green;
pub mod canary;
pub mod fleet;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::Value;

use crate::admin::AdminClient;
use crate::plot::Mark;
use loadgen::clock::Clock;
use loadgen::sample::Sample;

/// The blue version (translation-api `0.0.1`).
pub const BLUE: &str = "0.0.1";
/// The green version (translation-api `0.0.2`).
pub const GREEN: &str = "0.0.2";

/// The scenarios of `cutover --scenario NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The four cut-overs (admin switch, file switch, rollback, ConfigMap swap) on two proxies (the default).
    Full,
    /// Green is not running when the switch is asked: the admin switch is refused (409), the file switch
    /// waits (pending), blue serves with 0 failed; then green starts and the pending switch applies by itself.
    BrokenGreen,
    /// `--replicas N` proxies (default 3) behind one load generator, all switched by one
    /// `switchyard switch green --admin URL...` (the real CLI, a child process); the fleet's mixed window.
    Fleet,
    /// A split 10 -> 50 -> 100 % green under load (`POST /switch` with `weight`, then `{"to":"green"}`):
    /// green's share for clients without a cookie within ±2 points per step, clients keeping the
    /// sticky cookie never change pool while it has weight, 0 failed.
    Canary,
    /// Green answers 500 to `--fail-ratio` of translate requests; after the admin switch the proxy
    /// rolls back by itself (`[rollback]`): the time to it, and the clients' errors against their bound.
    BadRelease,
}

impl Scenario {
    /// The name on the command line and in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Full => "full",
            Scenario::BrokenGreen => "broken-green",
            Scenario::Fleet => "fleet",
            Scenario::Canary => "canary",
            Scenario::BadRelease => "bad-release",
        }
    }
}

/// What every scenario is given by the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Keep-alive connections in total.
    pub concurrency: usize,
    /// Open loop: requests per second in total; `None`: closed loop.
    pub rate: Option<f64>,
    /// Load generator threads (per generator).
    pub threads: usize,
    /// The length of a phase (the scenario says how it uses it).
    pub duration: Duration,
    /// Load before anything is measured.
    pub warmup: Duration,
    /// Data-plane cores of each proxy (`None`: one per CPU).
    pub proxy_cores: Option<usize>,
    /// Worker threads of each translation-api.
    pub api_workers: usize,
}

impl Settings {
    /// Half a phase, in nanoseconds.
    pub fn half_ns(&self) -> u64 {
        u64::try_from((self.duration / 2).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// One PASS/FAIL criterion of a scenario and what was seen.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The criterion, as a sentence.
    pub criterion: String,
    pub passed: bool,
    /// What was measured or seen.
    pub detail: String,
}

impl Check {
    pub fn new(criterion: &str, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            criterion: criterion.to_string(),
            passed,
            detail: detail.into(),
        }
    }
}

/// The checks as text: one `PASS`/`FAIL` line each.
pub fn format_checks(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{}  {}: {}\n",
            if c.passed { "PASS" } else { "FAIL" },
            c.criterion,
            c.detail
        ));
    }
    out
}

/// What a scenario hands back to the binary.
#[derive(Debug)]
pub struct Finished {
    /// Every criterion passed.
    pub passed: bool,
    /// The report for people (printed as it is).
    pub text: String,
    /// The scenario's part of the `--json` document (merged into it).
    pub json: Value,
    /// Every request of the run, for the totals and the plot.
    pub samples: Vec<Sample>,
    /// Vertical lines for the plot.
    pub marks: Vec<Mark>,
    /// The plot's title.
    pub title: String,
}

/// Sleeps with a spinner message (requests so far) on the progress bar.
#[derive(Clone)]
pub struct Pacer<'a> {
    pub clock: Clock,
    pub bar: Option<&'a ProgressBar>,
    /// Requests finished so far (shared with the load's recorders).
    pub count: Arc<AtomicU64>,
}

impl Pacer<'_> {
    /// Sleeps until `until_ns` on the clock, telling the bar `what`.
    pub async fn sleep_until(&self, until_ns: u64, what: &str) {
        loop {
            let now = self.clock.now_ns();
            if let Some(bar) = self.bar {
                bar.set_message(format!("{what}: {} requests", self.count.load(Ordering::Relaxed)));
                bar.tick();
            }
            if now >= until_ns {
                return;
            }
            let step = (until_ns - now).min(100_000_000);
            tokio::time::sleep(Duration::from_nanos(step)).await;
        }
    }

    /// Tells the bar `what` without sleeping.
    pub fn say(&self, what: &str) {
        if let Some(bar) = self.bar {
            bar.set_message(format!("{what}: {} requests", self.count.load(Ordering::Relaxed)));
        }
    }
}

/// Starts a translation-api answering `version` on `addr` (port 0: a free one).
pub fn start_api(
    version: &str,
    addr: SocketAddr,
    workers: usize,
) -> anyhow::Result<translation_api::Running> {
    let mut c = translation_api::Config::new(addr, version);
    c.workers = workers.max(1);
    c.shutdown_grace = Duration::from_secs(2);
    translation_api::spawn(c).with_context(|| format!("starting translation-api {version} on {addr}"))
}

/// Starts switchyard in this process with the config at `config`, with
/// `cores` data-plane cores (`None`: as the config says, one per CPU by default).
pub fn start_proxy(config: &Path, cores: Option<usize>) -> anyhow::Result<switchyard::Proxy> {
    let started = match cores {
        Some(n) => switchyard::config::Settings::load(config)
            .map_err(switchyard::ConfigErrors)
            .map_err(switchyard::Error::from)
            .and_then(|s| switchyard::Proxy::start_with(s, n)),
        None => switchyard::Proxy::start(config),
    };
    started.with_context(|| format!("starting switchyard with {}", config.display()))
}

/// `proxy.toml` of a plain proxy on free loopback ports, no access log.
pub fn proxy_toml(persist: bool, upstreams: &str) -> String {
    format!(
        "# written by cutover\n[listen]\nhttp = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\npersist = {persist}\n\n\
         [upstreams]\nfile = \"{upstreams}\"\n\n[log]\naccess = false\n"
    )
}

/// Polls `/status` every `every` until `pred` holds (or `within` passes);
/// returns the matching status and the ack time of the poll that saw it,
/// with the issued time of the last poll that did not (`None` if the first did).
pub async fn poll_status(
    admin: &AdminClient,
    every: Duration,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Polled> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last_not = None;
    loop {
        let a = admin
            .request(http::Method::GET, "/status", None)
            .await
            .with_context(|| format!("reading /status while waiting for {what}"))?;
        if a.status == 200 && pred(&a.body) {
            return Ok(Polled {
                status: a.body,
                seen_ns: a.ack_ns,
                not_seen_ns: last_not,
            });
        }
        last_not = Some(a.issued_ns);
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{what}: not seen in /status within {within:?}; the last /status: {}",
                a.body
            );
        }
        tokio::time::sleep(every).await;
    }
}

/// A state seen in `/status` by [`poll_status`].
#[derive(Debug, Clone)]
pub struct Polled {
    pub status: Value,
    /// When the answer that showed it was received.
    pub seen_ns: u64,
    /// When the last poll that did not show it was issued.
    pub not_seen_ns: Option<u64>,
}

/// Milliseconds from `from` to `to` on the run's clock (negative when `to` is earlier).
pub fn ms_between(from: u64, to: u64) -> f64 {
    loadgen::clock::diff_ms(to, from)
}

/// Rounds to 2 decimals for the report (JSON keeps what it is given).
pub fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2} ms"))
}
