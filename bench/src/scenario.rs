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
use std::path::{Path, PathBuf};
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
use loadgen::report::Totals;
use loadgen::sample::Sample;
use loadgen::target::Target;
use loadgen::{LoadConfig, LoadGen, Recorder};

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
    /// A criterion, whether it held and what was seen.
    pub fn new(criterion: &str, passed: bool, detail: impl Into<String>) -> Self {
        Self {
            criterion: criterion.to_string(),
            passed,
            detail: detail.into(),
        }
    }

    /// `0 failed requests in the whole run` (and some requests made).
    pub fn no_failed(total: &Totals) -> Self {
        Self::new(
            "0 failed requests in the whole run",
            total.failed == 0 && total.requests > 0,
            format!("{} requests, {} failed", total.requests, total.failed),
        )
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

/// The checks as text and the verdict: `PASS: {pass}` when every check
/// passed, else `FAIL`.
pub fn format_verdict(checks: &[Check], pass: &str) -> String {
    let mut out = format_checks(checks);
    if all_passed(checks) {
        out.push_str(&format!("PASS: {pass}\n"));
    } else {
        out.push_str("FAIL\n");
    }
    out
}

/// Every check passed.
pub fn all_passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.passed)
}

/// The run's totals as a line of the report (`failed_note` follows the
/// failed count), with a blank line after it.
pub fn format_total(total: &Totals, failed_note: &str) -> String {
    format!(
        "total: {} requests, failed: {}{failed_note}, {:.1} s, {:.0} requests/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\n",
        total.requests,
        total.failed,
        total.elapsed_s,
        total.rps,
        total.latency.p50_ms,
        total.latency.p99_ms,
        total.latency.max_ms
    )
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

impl<'a> Pacer<'a> {
    /// A pacer on `clock` telling `bar`, with a new request count.
    pub fn new(clock: Clock, bar: Option<&'a ProgressBar>) -> Self {
        Self {
            clock,
            bar,
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sleeps through `--warmup` and half a phase from now, telling the bar
    /// `what`; returns when it began, on the clock.
    pub async fn warm_up(&self, s: &Settings, what: &str) -> u64 {
        let start = self.clock.now_ns();
        self.sleep_until(start + s.warmup.as_nanos() as u64 + s.half_ns(), what)
            .await;
        start
    }

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

/// How often `/status` is read while a scenario waits for a state.
pub const POLL_EVERY: Duration = Duration::from_millis(2);

/// Starts a translation-api answering `version` on `addr` (port 0: a free
/// one) with `workers` worker threads, 2 s of shutdown grace, and `fail_ratio`
/// of its translate requests answering 500 (0: none).
pub fn start_api(
    version: &str,
    addr: SocketAddr,
    workers: usize,
    fail_ratio: f64,
) -> anyhow::Result<translation_api::Running> {
    let mut c = translation_api::Config::new(addr, version);
    c.workers = workers.max(1);
    c.shutdown_grace = Duration::from_secs(2);
    c.fail_ratio = fail_ratio;
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

/// `proxy.toml` of a plain proxy on free loopback ports, no access log; with
/// `tls` (the directory of `tls.crt` and `tls.key`, relative to the file) an
/// HTTPS listener too.
pub fn proxy_toml(persist: bool, upstreams: &str, tls: Option<&str>) -> String {
    let (https, section) = match tls {
        Some(dir) => (
            "https = \"127.0.0.1:0\"\n".to_string(),
            format!("\n[tls]\ncert = \"{dir}/tls.crt\"\nkey = \"{dir}/tls.key\"\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "# written by cutover\n[listen]\nhttp = \"127.0.0.1:0\"\n{https}\n[admin]\nlisten = \"127.0.0.1:0\"\npersist = {persist}\n\n\
         [upstreams]\nfile = \"{upstreams}\"\n\n[log]\naccess = false\n{section}"
    )
}

/// The pools of an upstreams file: `header` (a comment line), `active`,
/// then blue and green with one endpoint each. Sections of a scenario
/// (`[health]`, `[split]`, ...) go after it, a blank line between.
pub fn pools_toml(header: &str, active: &str, blue: SocketAddr, green: SocketAddr) -> String {
    format!(
        "{header}\nactive = \"{active}\"\n\n[pools.blue]\nendpoints = [\"{blue}\"]\n\n\
         [pools.green]\nendpoints = [\"{green}\"]\n"
    )
}

/// The upstreams file of `cutover --scenario NAME`: its pools (blue
/// active), then `section` (`[health]`, `[split]`, ...; `""`: none) after a
/// blank line.
pub fn upstreams_toml(scenario: Scenario, blue: SocketAddr, green: SocketAddr, section: &str) -> String {
    let header = format!("# written by cutover --scenario {}", scenario.name());
    let pools = pools_toml(&header, "blue", blue, green);
    if section.is_empty() {
        pools
    } else {
        format!("{pools}\n{section}")
    }
}

/// How a [`World`] starts green.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Green {
    /// Running, answering 500 to this share of its translate requests (0: none).
    Up { fail_ratio: f64 },
    /// Not running: its address is one it listened on and let go, so it
    /// refuses connections; [`World::start_green`] starts it there.
    Down,
}

/// Everything a scenario starts: translation-api blue and green, and one
/// proxy (or a fleet of them) in front of them, each with its `proxy.toml`
/// and `upstreams.toml` in a temp directory. [`World::stop`] stops it,
/// proxies first (the fields drop in that order too).
pub struct World {
    /// Never empty: [`World::start`] and [`World::start_fleet`] start one at least.
    proxies: Vec<switchyard::Proxy>,
    blue: translation_api::Running,
    /// Green, while it runs.
    green: Option<translation_api::Running>,
    green_addr: SocketAddr,
    /// The config directory of each proxy.
    config_dirs: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

impl World {
    /// Blue, green (`green` says how) and one proxy whose config directory
    /// is the temp directory (`switchyard-cutover-NAME-*`); its upstreams
    /// file is [`upstreams_toml`] with `section`.
    pub fn start(s: &Settings, scenario: Scenario, green: Green, section: &str) -> anyhow::Result<Self> {
        Self::start_with(s, scenario, green, None, section)
    }

    /// As [`World::start`] with `n` proxies (at least 1), each with its own
    /// config directory `replica-I` and listeners, as a Deployment's replicas have.
    pub fn start_fleet(
        s: &Settings,
        scenario: Scenario,
        green: Green,
        n: usize,
        section: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(s, scenario, green, Some(n), section)
    }

    fn start_with(
        s: &Settings,
        scenario: Scenario,
        green: Green,
        replicas: Option<usize>,
        section: &str,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(replicas != Some(0), "a world needs one proxy at least");
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let blue = start_api(BLUE, loopback, s.api_workers, 0.0)?;
        let (green, green_addr) = match green {
            Green::Up { fail_ratio } => {
                let g = start_api(GREEN, loopback, s.api_workers, fail_ratio)?;
                let addr = g.addr();
                (Some(g), addr)
            }
            // A port it listened on and let go, so it refuses.
            Green::Down => (None, start_api(GREEN, loopback, s.api_workers, 0.0)?.addr()),
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("switchyard-cutover-{}-", scenario.name()))
            .tempdir()?;
        let config_dirs: Vec<PathBuf> = match replicas {
            None => vec![dir.path().to_path_buf()],
            Some(n) => (0..n).map(|i| dir.path().join(format!("replica-{i}"))).collect(),
        };
        let text = upstreams_toml(scenario, blue.addr(), green_addr, section);
        let mut proxies = Vec::with_capacity(config_dirs.len());
        for d in &config_dirs {
            std::fs::create_dir_all(d)?;
            std::fs::write(d.join("upstreams.toml"), &text)?;
            std::fs::write(d.join("proxy.toml"), proxy_toml(false, "upstreams.toml", None))?;
            proxies.push(start_proxy(&d.join("proxy.toml"), s.proxy_cores)?);
        }
        Ok(Self {
            proxies,
            blue,
            green,
            green_addr,
            config_dirs,
            _dir: dir,
        })
    }

    /// The (first) proxy.
    pub fn proxy(&self) -> &switchyard::Proxy {
        &self.proxies[0]
    }

    /// Every proxy, in the order started.
    pub fn proxies(&self) -> &[switchyard::Proxy] {
        &self.proxies
    }

    /// `http://ADDR{path}` on the (first) proxy's listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy().http_addr())
    }

    /// Each proxy's admin API, `http://ADDR`.
    pub fn admin_urls(&self) -> Vec<String> {
        self.proxies
            .iter()
            .map(|p| format!("http://{}", p.admin_addr()))
            .collect()
    }

    /// A client for the (first) proxy's admin API.
    pub fn admin(&self, clock: Clock) -> anyhow::Result<AdminClient> {
        AdminClient::new(&format!("http://{}", self.proxy().admin_addr()), None, clock)
    }

    /// The (first) proxy's upstreams file.
    pub fn upstreams_file(&self) -> PathBuf {
        self.config_dirs[0].join("upstreams.toml")
    }

    /// Green's address (where it runs, or will with [`Green::Down`]).
    pub fn green_addr(&self) -> SocketAddr {
        self.green_addr
    }

    /// Starts green on its address (for [`Green::Down`]), with `workers` threads.
    pub fn start_green(&mut self, workers: usize) -> anyhow::Result<()> {
        self.green = Some(start_api(GREEN, self.green_addr, workers, 0.0)?);
        Ok(())
    }

    /// Graceful stop: the proxies first, then blue and green.
    pub fn stop(self) {
        for p in self.proxies {
            p.shutdown();
        }
        drop(self.blue);
        drop(self.green);
    }
}

impl Settings {
    /// `--rate`'s share for `connections` of `of` connections (`None`: closed loop).
    pub fn rate_share(&self, connections: usize, of: usize) -> Option<f64> {
        self.rate.map(|r| r * connections as f64 / of as f64)
    }

    /// A load of `connections` keep-alive connections asking `url`, at
    /// `rate` requests per second (`None`: closed loop), on `--threads` threads.
    pub fn load_config(
        &self,
        url: &str,
        connections: usize,
        rate: Option<f64>,
    ) -> anyhow::Result<LoadConfig> {
        let mut cfg = LoadConfig::new(Target::parse(url)?, connections);
        cfg.rate = rate;
        cfg.threads = self.threads;
        Ok(cfg)
    }
}

/// A rate for plot titles: `R requests/s`, or `closed loop` for `None`.
pub fn rate_words(rate: Option<f64>) -> String {
    rate.map_or("closed loop".to_string(), |r| format!("{r} requests/s"))
}

/// Starts the load `cfg`, every answer counted in `count`.
pub fn start_load(
    cfg: LoadConfig,
    clock: Clock,
    count: &Arc<AtomicU64>,
) -> anyhow::Result<LoadGen<Recorder>> {
    LoadGen::start(cfg, clock, |_| Recorder::new(count.clone()))
}

/// Stops a load and hands back every request of it.
pub fn stop_load(load: LoadGen<Recorder>) -> Vec<Sample> {
    load.stop().into_iter().flat_map(|r| r.samples).collect()
}

/// Waits (polling every [`POLL_EVERY`], 15 s at most) for `/status` to show `pool` active.
pub async fn wait_active(admin: &AdminClient, pool: &str) -> anyhow::Result<Polled> {
    poll_status(
        admin,
        POLL_EVERY,
        Duration::from_secs(15),
        &format!("{pool} active"),
        |st| st["active"] == pool,
    )
    .await
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
