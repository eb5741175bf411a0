//! Runs a cut-over scenario: load through a proxy while switching it.
//!
//! A [`Run`] is one load generator against one proxy and the [`Step`]s
//! performed while it runs. Each step is a phase of `duration`: half of it
//! before the switch, the switch, half of it after (counted from the moment
//! the switch was issued, so "after" is never cut short by a slow switch).
//! A warm-up (connections opened, caches warm) precedes the first phase and
//! belongs to no cut-over.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use serde_json::Value;

use crate::admin::{pools_of_status, AdminClient};
use crate::upstreams::{read_pools, set_active_by_rename, ConfigMapDir};
use loadgen::clock::Clock;
use loadgen::report::Switch;
use loadgen::sample::Sample;
use loadgen::target::Target;
use loadgen::{LoadConfig, LoadGen, Recorder};

/// Which pool a switch goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolChoice {
    /// This pool.
    Named(String),
    /// The first pool (by name) that is not the active one.
    Other,
}

/// How a switch is made.
#[derive(Debug, Clone)]
pub enum Action {
    /// `POST /switch {"to": ...}`.
    AdminSwitch { to: PoolChoice },
    /// `POST /rollback`.
    Rollback,
    /// Edit `active` in the upstreams file: temp file + rename.
    Rename { path: PathBuf, to: PoolChoice },
    /// Edit `active` in a ConfigMap-layout directory: the kubelet's `..data` swap.
    DataSwap {
        dir: ConfigMapDir,
        file: String,
        to: PoolChoice,
    },
}

impl Action {
    /// How the switch is made, for the report.
    pub fn how(&self) -> &'static str {
        match self {
            Action::AdminSwitch { .. } => "POST /switch",
            Action::Rollback => "POST /rollback",
            Action::Rename { .. } => "rename",
            Action::DataSwap { .. } => "..data swap",
        }
    }

    /// The `source` the proxy should give the switch.
    pub fn source(&self) -> &'static str {
        match self {
            Action::AdminSwitch { .. } => "admin",
            Action::Rollback => "rollback",
            Action::Rename { .. } | Action::DataSwap { .. } => "file",
        }
    }
}

/// One cut-over.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub action: Action,
    /// The version that should answer afterwards, when known.
    pub expected: Option<String>,
}

/// One load generator against one proxy, and the steps made meanwhile.
#[derive(Debug, Clone)]
pub struct Run {
    /// A name for people, e.g. "proxy A".
    pub label: String,
    pub target: Target,
    /// HTTPS: the load's TLS client configuration (`None`: plain HTTP).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub admin: Option<AdminClient>,
    pub steps: Vec<Step>,
}

/// Load and timing settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub threads: usize,
    /// Length of each phase (half before the switch, half after).
    pub duration: Duration,
    /// Load before the first phase of each run, measured by no cut-over.
    pub warmup: Duration,
}

impl Options {
    /// Planned wall time of `runs`, for the progress bar.
    pub fn planned(&self, runs: &[Run]) -> Duration {
        runs.iter()
            .map(|r| self.warmup + self.duration * r.steps.len() as u32)
            .sum()
    }
}

/// Everything recorded.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every request of every run, on one clock.
    pub samples: Vec<Sample>,
    pub switches: Vec<Switch>,
    /// When each run's load started, and the run's label.
    pub run_starts: Vec<(u64, String)>,
}

/// Progress display: the bar counts planned milliseconds.
struct Progress<'a> {
    bar: Option<&'a ProgressBar>,
    clock: Clock,
    start_ns: u64,
    count: Arc<AtomicU64>,
}

impl Progress<'_> {
    /// Sleeps until `until_ns`, updating the bar every 100 ms.
    async fn sleep_until(&self, until_ns: u64, what: &str) {
        loop {
            let now = self.clock.now_ns();
            if let Some(bar) = self.bar {
                bar.set_position((now - self.start_ns) / 1_000_000);
                bar.set_message(format!("{what}: {} requests", self.count.load(Ordering::Relaxed)));
            }
            if now >= until_ns {
                return;
            }
            let step = (until_ns - now).min(100_000_000);
            tokio::time::sleep(Duration::from_nanos(step)).await;
        }
    }
}

/// Runs every run in order; all samples and switches on `clock`.
pub async fn execute(
    runs: &[Run],
    opts: &Options,
    clock: Clock,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let start_ns = clock.now_ns();
    let half = u64::try_from((opts.duration / 2).as_nanos()).unwrap_or(u64::MAX);
    // Requests finished, over all runs, for the progress bar.
    let count = Arc::new(AtomicU64::new(0));
    for run in runs {
        let progress = Progress {
            bar,
            clock,
            start_ns,
            count: count.clone(),
        };
        let mut cfg = LoadConfig::new(run.target.clone(), opts.concurrency);
        cfg.rate = opts.rate;
        cfg.threads = opts.threads;
        cfg.tls = run.tls.clone();
        out.run_starts.push((clock.now_ns(), run.label.clone()));
        // The workers' sink: every sample, and a live count for the progress bar.
        let load = LoadGen::start(cfg, clock, |_| Recorder::new(count.clone()))?;
        progress
            .sleep_until(clock.now_ns() + opts.warmup.as_nanos() as u64, "warm-up")
            .await;
        for step in &run.steps {
            let phase_start = clock.now_ns();
            progress.sleep_until(phase_start + half, &step.name).await;
            let mut switch = Switch {
                name: step.name.clone(),
                source: step.action.source().to_string(),
                how: step.action.how().to_string(),
                issued_ns: clock.now_ns(),
                ack_ns: None,
                phase: 0..0,
                generation: None,
                expected: step.expected.clone(),
                error: None,
            };
            match perform(&step.action, run.admin.as_ref(), clock).await {
                Ok(done) => {
                    switch.issued_ns = done.issued_ns;
                    switch.ack_ns = done.ack_ns;
                    if let Some(a) = &done.answer {
                        apply_answer(&mut switch, a);
                    }
                }
                Err(e) => switch.error = Some(format!("{e:#}")),
            }
            progress.sleep_until(switch.issued_ns + half, &step.name).await;
            switch.phase = phase_start..clock.now_ns();
            // A file switch is not answered: ask the proxy what it made of it.
            if switch.error.is_none() && switch.ack_ns.is_none() {
                if let Some(admin) = &run.admin {
                    if let Ok(status) = admin.status().await {
                        apply_answer(&mut switch, &status);
                    }
                }
            }
            out.switches.push(switch);
        }
        let sinks = load.stop();
        out.samples.extend(sinks.into_iter().flat_map(|r| r.samples));
    }
    Ok(out)
}

/// Takes `source` and `generation` from an admin answer or `/status`.
fn apply_answer(switch: &mut Switch, v: &Value) {
    if let Some(s) = v.get("source").and_then(Value::as_str) {
        switch.source = s.to_string();
    }
    switch.generation = v.get("generation").and_then(Value::as_u64);
}

struct Done {
    issued_ns: u64,
    ack_ns: Option<u64>,
    answer: Option<Value>,
}

async fn perform(action: &Action, admin: Option<&AdminClient>, clock: Clock) -> anyhow::Result<Done> {
    let need_admin = || admin.context("this switch needs the admin API (--admin URL)");
    let now = || clock.now_ns();
    match action {
        Action::AdminSwitch { to } => {
            let admin = need_admin()?;
            let pool = resolve(to, Some(admin), None).await?;
            let a = admin.switch(&pool).await?;
            Ok(Done {
                issued_ns: a.issued_ns,
                ack_ns: Some(a.ack_ns),
                answer: Some(a.body),
            })
        }
        Action::Rollback => {
            let a = need_admin()?.rollback().await?;
            Ok(Done {
                issued_ns: a.issued_ns,
                ack_ns: Some(a.ack_ns),
                answer: Some(a.body),
            })
        }
        Action::Rename { path, to } => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let pool = resolve(to, admin, Some(&text)).await?;
            let issued_ns = set_active_by_rename(path, &pool, now)?;
            Ok(Done {
                issued_ns,
                ack_ns: None,
                answer: None,
            })
        }
        Action::DataSwap { dir, file, to } => {
            let text = dir.read(file)?;
            let pool = resolve(to, admin, Some(&text)).await?;
            let issued_ns = dir.set_active(file, &pool, now)?;
            Ok(Done {
                issued_ns,
                ack_ns: None,
                answer: None,
            })
        }
    }
}

/// The pool to switch to. For [`PoolChoice::Other`], the active pool and the
/// pool names come from `/status` when there is an admin API (the file's
/// `active` may be overridden), else from the upstreams file.
async fn resolve(to: &PoolChoice, admin: Option<&AdminClient>, file: Option<&str>) -> anyhow::Result<String> {
    match to {
        PoolChoice::Named(p) => Ok(p.clone()),
        PoolChoice::Other => {
            let (active, pools) = match admin {
                Some(a) => {
                    let s = a.status().await?;
                    let active = s.get("active").and_then(Value::as_str).map(str::to_string);
                    (active, pools_of_status(&s))
                }
                None => {
                    read_pools(file.context("no admin API and no upstreams file to read the pools from")?)?
                }
            };
            let active = active.context("cannot tell which pool is active")?;
            match pools.into_iter().find(|p| *p != active) {
                Some(p) => Ok(p),
                None => bail!("there is no pool other than {active} to switch to"),
            }
        }
    }
}
