//! `cutover` — the one-command demonstration: blue/green cut-overs through
//! switchyard, measured.
//!
//! With no arguments it starts, in this process (no child processes, nothing
//! to install): translation-api blue (0.0.1) and green (0.0.2), and two
//! switchyards on free loopback ports with temp configs. It drives
//! keep-alive load through them and switches four ways:
//! 1. `POST /switch` to green (proxy A, `persist = true`);
//! 2. back to blue by editing `active` in A's upstreams file (temp file + rename);
//! 3. `POST /rollback` (to green);
//! 4. to green on proxy B, whose config directories are laid out as the
//!    kubelet lays out ConfigMaps, by a `..data` swap.
//!
//! Then it prints the report, stops everything (also on Ctrl-C or a panic)
//! and exits 0 only if every cut-over passed.
//!
//! With `--target URL` it measures an already running deployment instead:
//! `--admin URL` adds a switch and a rollback, `--upstreams FILE` a file
//! switch (a `..data` swap when FILE sits in a ConfigMap layout).
//!
//! `--scenario NAME` tells another story (`bench::scenario`): `broken-green`
//! (a switch asked while green is down: refused, pending, applied once green
//! is ready), `fleet` (`--replicas N` proxies switched by one
//! `switchyard switch`), `canary` (a split 10 → 50 → 100 with sticky
//! clients) or `bad-release` (green fails, the proxy rolls back by itself);
//! `full` is the default above.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bench::admin::AdminClient;
use bench::driver::{self, Action, Options, PoolChoice, Run, Step};
use bench::plot::{self, Decor, Mark, MarkKind};
use bench::scenario::{self, pools_toml, proxy_toml, start_api, start_proxy, Scenario, BLUE, GREEN};
use bench::table::format_report;
use bench::upstreams::ConfigMapDir;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use loadgen::clock::Clock;
use loadgen::report::{cutover_report, timeline, totals, CutoverReport, Totals};
use loadgen::target::Target;
use serde::Serialize;

/// Blue/green cut-overs through switchyard, measured: failed requests,
/// stale answers after the switch, the mixed window, throughput and latency.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Open loop: this many requests per second in total, at fixed intended
    /// send times. Default: closed loop, as fast as the machine allows.
    #[arg(long)]
    rate: Option<f64>,
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Length of each cut-over's phase: half before the switch, half after.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Load before the first phase (connections opened), measured by no cut-over.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an SVG timeline to FILE: answers per 10 ms by version, failures in red, switches marked.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Measure a running deployment: the URL to load (e.g. http://127.0.0.1:8080/version).
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// With --target: the proxy's admin API (e.g. http://127.0.0.1:9901); adds a switch and a rollback.
    #[arg(long, value_name = "URL", requires = "target")]
    admin: Option<String>,
    /// With --target: the proxy's upstreams file; adds a file switch.
    #[arg(long, value_name = "FILE", requires = "target")]
    upstreams: Option<PathBuf>,
    /// With --admin: a file holding the admin token (sent as `Authorization: Bearer`).
    #[arg(long, value_name = "FILE", requires = "admin")]
    admin_token_file: Option<PathBuf>,
    /// Embedded mode: data-plane cores of each proxy (default: one per CPU).
    #[arg(long)]
    proxy_cores: Option<usize>,
    /// Embedded mode: worker threads of each translation-api.
    #[arg(long, default_value_t = 1)]
    api_workers: usize,
    /// Embedded mode: the proxies serve HTTPS with a certificate made for
    /// this run (by a CA made for it too), and the load goes over TLS
    /// (HTTP/1.1, one handshake per connection).
    #[arg(long, conflicts_with = "target")]
    tls: bool,
    /// The story to run (default: full). `--help` lists them.
    #[arg(long, value_enum, value_name = "NAME", conflicts_with_all = ["target", "tls"])]
    scenario: Option<Scenario>,
    /// The fleet scenario: this many proxies behind the one load generator
    /// (default 3); implies `--scenario fleet`.
    #[arg(long, value_name = "N", conflicts_with_all = ["target", "tls"])]
    replicas: Option<usize>,
    /// The fleet scenario: the `switchyard` binary whose `switch` command is
    /// run (default: the one beside this executable, built from this workspace first).
    #[arg(long, value_name = "PATH")]
    switchyard_bin: Option<PathBuf>,
    /// The canary scenario: connections that keep the sticky cookie (beside
    /// the `--concurrency` ones that send none).
    #[arg(long, value_name = "N", default_value_t = 32)]
    cookie_clients: usize,
    /// The canary scenario: answers to clients without a cookie each weighted
    /// step is held for (at 10,000, ±2 points is 4 standard deviations).
    #[arg(long, value_name = "N", default_value_t = scenario::canary::DEFAULT_STEP_REQUESTS)]
    step_requests: u64,
    /// The bad-release scenario: the share of green's translate requests that answer 500.
    #[arg(long, value_name = "R", default_value_t = scenario::bad_release::DEFAULT_FAIL_RATIO)]
    fail_ratio: f64,
}

impl Args {
    /// The scenario asked for: `--scenario`, or `fleet` when only `--replicas` is given.
    fn scenario(&self) -> anyhow::Result<Scenario> {
        match (self.scenario, self.replicas) {
            (None, None) => Ok(Scenario::Full),
            (None, Some(_)) | (Some(Scenario::Fleet), _) => Ok(Scenario::Fleet),
            (Some(s), None) => Ok(s),
            (Some(s), Some(_)) => bail!(
                "--replicas goes with the fleet scenario, not with --scenario {}",
                s.name()
            ),
        }
    }
}

/// The `--json` document.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    mode: &'static str,
    scenario: &'static str,
    concurrency: usize,
    /// Requests per second (open loop); `null`: closed loop.
    rate: Option<f64>,
    duration_ms: u128,
    warmup_ms: u128,
    passed: bool,
    cutovers: &'a [CutoverReport],
    total: &'a Totals,
}

fn main() {
    match run(Args::parse()) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("cutover: {e:#}");
            std::process::exit(if e.is::<Interrupted>() { 130 } else { 1 });
        }
    }
}

#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted; everything started was stopped")
    }
}

impl std::error::Error for Interrupted {}

/// Returns whether every cut-over passed.
fn run(args: Args) -> anyhow::Result<bool> {
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be positive");
    match args.scenario()? {
        Scenario::Full => {}
        other => return run_scenario(&args, other),
    }
    let clock = Clock::start();
    // Embedded: everything below lives until the end of this function, and
    // is stopped when dropped (on an error, Ctrl-C or a panic too).
    let mut embedded = None;
    let (mode, runs) = match &args.target {
        Some(url) => ("external", external_runs(&args, url, clock)?),
        None => {
            let e = Embedded::start(&args)?;
            let runs = e.runs(clock)?;
            println!("{}", e.describe());
            embedded = Some(e);
            ("embedded", runs)
        }
    };
    let opts = Options {
        concurrency: args.concurrency,
        rate: args.rate,
        threads: args.threads,
        duration: args.duration,
        warmup: args.warmup,
    };
    println!(
        "load: {}\n",
        describe_load(
            opts.concurrency,
            opts.rate,
            opts.duration,
            "per cut-over",
            opts.warmup
        )
    );

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(opts.planned(&runs).as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>3} [{bar:40}] {msg}")
                .expect("a constant template is valid")
                .progress_chars("=> "),
        );
        bar
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        tokio::select! {
            r = driver::execute(&runs, &opts, clock, bar.as_ref()) => r,
            _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
        }
    });
    drop(rt);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let outcome = outcome?;
    if let Some(e) = embedded.take() {
        e.stop();
    }

    let reports: Vec<CutoverReport> = outcome
        .switches
        .iter()
        .map(|s| cutover_report(&outcome.samples, s))
        .collect();
    let total = totals(&outcome.samples);
    let passed = total.failed == 0 && !reports.is_empty() && reports.iter().all(CutoverReport::passed);
    print!("{}", format_report(&reports, &total));
    for r in &reports {
        if let Some(e) = &r.error {
            println!("{}: {e}", r.name);
        } else if !r.passed() {
            println!(
                "{}: did not pass (versions {} -> {}, expected {})",
                r.name,
                r.from.as_deref().unwrap_or("?"),
                r.to.as_deref().unwrap_or("?"),
                r.expected.as_deref().unwrap_or("a change")
            );
        }
    }
    println!(
        "{}",
        if passed {
            "PASS: no failed request, no stale answer after an acknowledged switch, every switch took effect"
        } else {
            "FAIL"
        }
    );

    if let Some(path) = &args.json {
        let doc = JsonReport {
            mode,
            scenario: Scenario::Full.name(),
            concurrency: opts.concurrency,
            rate: opts.rate,
            duration_ms: opts.duration.as_millis(),
            warmup_ms: opts.warmup.as_millis(),
            passed,
            cutovers: &reports,
            total: &total,
        };
        write_json(path, &doc)?;
    }
    if let Some(path) = &args.plot {
        let mut marks: Vec<Mark> = outcome
            .switches
            .iter()
            .map(|s| Mark {
                at_ns: s.issued_ns,
                label: s.name.clone(),
                kind: MarkKind::Switch,
            })
            .collect();
        if outcome.run_starts.len() > 1 {
            marks.extend(outcome.run_starts.iter().map(|(at, label)| Mark {
                at_ns: *at,
                label: label.clone(),
                kind: MarkKind::RunStart,
            }));
        }
        let title = format!(
            "switchyard cut-overs: answers per 10 ms by version ({} connections, {})",
            opts.concurrency,
            scenario::rate_words(opts.rate),
        );
        write_plot(path, &outcome.samples, &title, &marks, mode == "embedded")?;
    }
    Ok(passed)
}

/// Runs a scenario other than the full story: prints its report, writes
/// `--json` (the common fields and the scenario's own) and `--plot`.
fn run_scenario(args: &Args, which: Scenario) -> anyhow::Result<bool> {
    let settings = scenario::Settings {
        concurrency: args.concurrency,
        rate: args.rate,
        threads: args.threads,
        duration: args.duration,
        warmup: args.warmup,
        proxy_cores: args.proxy_cores,
        api_workers: args.api_workers,
    };
    let replicas = args.replicas.unwrap_or(3);
    let bin = match which {
        Scenario::Fleet => Some(scenario::fleet::switchyard_binary(
            args.switchyard_bin.as_deref(),
        )?),
        _ => None,
    };
    println!(
        "cutover --scenario {}: load {}\n",
        which.name(),
        describe_load(
            settings.concurrency,
            settings.rate,
            settings.duration,
            "phase",
            settings.warmup
        )
    );
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}")
                .expect("a constant template is valid"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let clock = Clock::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        let work = async {
            match (which, &bin) {
                (Scenario::BrokenGreen, _) => {
                    scenario::broken_green::run(&settings, clock, bar.as_ref()).await
                }
                (Scenario::Fleet, Some(bin)) => {
                    scenario::fleet::run(&settings, replicas, bin, clock, bar.as_ref()).await
                }
                (Scenario::Canary, _) => {
                    scenario::canary::run(
                        &settings,
                        args.cookie_clients,
                        args.step_requests,
                        clock,
                        bar.as_ref(),
                    )
                    .await
                }
                (Scenario::BadRelease, _) => {
                    scenario::bad_release::run(&settings, args.fail_ratio, clock, bar.as_ref()).await
                }
                (other, _) => bail!("the scenario {} is not run here", other.name()),
            }
        };
        tokio::select! {
            r = work => r,
            _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
        }
    });
    drop(rt);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let done = outcome?;
    print!("{}", done.text);

    if let Some(path) = &args.json {
        let mut doc = serde_json::json!({
            "mode": "embedded",
            "scenario": which.name(),
            "concurrency": settings.concurrency,
            "rate": settings.rate,
            "duration_ms": settings.duration.as_millis(),
            "warmup_ms": settings.warmup.as_millis(),
            "passed": done.passed,
        });
        if let (Some(doc), serde_json::Value::Object(more)) = (doc.as_object_mut(), done.json) {
            doc.extend(more);
        }
        write_json(path, &doc)?;
    }
    if let Some(path) = &args.plot {
        write_plot(path, &done.samples, &done.title, &done.marks, true)?;
    }
    Ok(done.passed)
}

/// `N connections, closed loop|open loop at R requests/s, D {per}, W warm-up`.
fn describe_load(
    concurrency: usize,
    rate: Option<f64>,
    duration: Duration,
    per: &str,
    warmup: Duration,
) -> String {
    format!(
        "{concurrency} connections, {}, {} {per}, {} warm-up",
        rate.map_or("closed loop".to_string(), |r| format!(
            "open loop at {r} requests/s"
        )),
        humantime::format_duration(duration),
        humantime::format_duration(warmup),
    )
}

/// Writes `doc` as pretty JSON (and a newline) to `path`.
fn write_json(path: &Path, doc: &impl Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes the SVG timeline of `samples` (answers per 10 ms by version) to
/// `path`; `named` names the versions blue and green in the legend.
fn write_plot(
    path: &Path,
    samples: &[loadgen::sample::Sample],
    title: &str,
    marks: &[Mark],
    named: bool,
) -> anyhow::Result<()> {
    let tl = timeline(samples, 10_000_000);
    let names = if named {
        vec![
            (BLUE.to_string(), format!("{BLUE} (blue)")),
            (GREEN.to_string(), format!("{GREEN} (green)")),
        ]
    } else {
        Vec::new()
    };
    let decor = Decor {
        title,
        marks,
        names: &names,
        size: (1400, 520),
    };
    plot::write_svg(path, &tl, &decor).with_context(|| format!("writing {}", path.display()))
}

/// The runs against an already running deployment.
fn external_runs(args: &Args, url: &str, clock: Clock) -> anyhow::Result<Vec<Run>> {
    let target = Target::parse(url)?;
    let token = match &args.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the admin token from {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let admin = args
        .admin
        .as_deref()
        .map(|a| AdminClient::new(a, token, clock))
        .transpose()?;
    let mut steps = Vec::new();
    if admin.is_some() {
        steps.push(Step {
            name: "admin switch".into(),
            action: Action::AdminSwitch {
                to: PoolChoice::Other,
            },
            expected: None,
        });
    }
    if let Some(file) = &args.upstreams {
        steps.push(file_step(file, PoolChoice::Other, None)?);
    }
    if admin.is_some() {
        steps.push(Step {
            name: "rollback".into(),
            action: Action::Rollback,
            expected: None,
        });
    }
    if steps.is_empty() {
        bail!("--target needs --admin URL and/or --upstreams FILE: there is nothing to switch with");
    }
    Ok(vec![Run {
        label: target.authority.clone(),
        target,
        tls: None,
        admin,
        steps,
    }])
}

/// A file switch: a `..data` swap when the file sits in a ConfigMap layout, else a rename.
fn file_step(file: &Path, to: PoolChoice, expected: Option<String>) -> anyhow::Result<Step> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .context("--upstreams names no file")?
        .to_string_lossy()
        .into_owned();
    Ok(match ConfigMapDir::open(dir) {
        Some(cm) => Step {
            name: "ConfigMap swap".into(),
            action: Action::DataSwap {
                dir: cm,
                file: name,
                to,
            },
            expected,
        },
        None => Step {
            name: "file switch".into(),
            action: Action::Rename {
                path: file.to_path_buf(),
                to,
            },
            expected,
        },
    })
}

/// Everything the embedded default starts. Fields drop in order: proxies
/// first, then the upstreams, then the temp directory.
struct Embedded {
    /// Proxy A: a plain config directory, `persist = true`.
    a: switchyard::Proxy,
    /// Proxy B: ConfigMap-layout config directories, `persist = false`.
    b: switchyard::Proxy,
    blue: translation_api::Running,
    green: translation_api::Running,
    dir: tempfile::TempDir,
    /// With `--tls`: the load's client configuration, trusting the run's CA.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// `--tls`: a CA and a certificate for `localhost` signed by it (ECDSA
/// P-256), written as `tls.crt` / `tls.key` into each of `dirs`; returns a
/// client configuration that trusts the CA.
fn make_certificate(dirs: &[PathBuf]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &ca)?;
    for dir in dirs {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("tls.crt"), leaf.pem())?;
        std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Embedded {
    fn start(args: &Args) -> anyhow::Result<Self> {
        let api = |version: &str| start_api(version, ([127, 0, 0, 1], 0).into(), args.api_workers, 0.0);
        let blue = api(BLUE)?;
        let green = api(GREEN)?;
        let dir = tempfile::Builder::new().prefix("switchyard-cutover-").tempdir()?;
        let upstreams = pools_toml(
            "# written by cutover: the cut-over file",
            "blue",
            blue.addr(),
            green.addr(),
        );
        let tls = if args.tls {
            let dirs = [dir.path().join("a").join("tls"), dir.path().join("b").join("tls")];
            Some(make_certificate(&dirs)?)
        } else {
            None
        };
        let tls_dir = |d: &'static str| args.tls.then_some(d);

        // A: plain files.
        let a_dir = dir.path().join("a");
        std::fs::create_dir_all(&a_dir)?;
        std::fs::write(a_dir.join("upstreams.toml"), &upstreams)?;
        std::fs::write(
            a_dir.join("proxy.toml"),
            proxy_toml(true, "upstreams.toml", tls_dir("tls")),
        )?;
        let a = start_proxy(&a_dir.join("proxy.toml"), args.proxy_cores)?;

        // B: as the chart mounts them, two ConfigMaps: config/proxy.toml and upstreams/upstreams.toml.
        let b_dir = dir.path().join("b");
        ConfigMapDir::create(
            &b_dir.join("config"),
            &[(
                "proxy.toml",
                &proxy_toml(false, "../upstreams/upstreams.toml", tls_dir("../tls")),
            )],
        )?;
        ConfigMapDir::create(&b_dir.join("upstreams"), &[("upstreams.toml", &upstreams)])?;
        let b = start_proxy(&b_dir.join("config").join("proxy.toml"), args.proxy_cores)?;
        Ok(Self {
            a,
            b,
            blue,
            green,
            dir,
            tls,
        })
    }

    fn describe(&self) -> String {
        let tls = match (&self.tls, self.a.https_addr(), self.b.https_addr()) {
            (Some(_), Some(a), Some(b)) => format!(
                "\nHTTPS (--tls): the load goes to proxy A on {a} and proxy B on {b}, TLS with a certificate made for this run"
            ),
            _ => String::new(),
        };
        let text = format!(
            "cutover (embedded): translation-api blue {BLUE} on {}, green {GREEN} on {}\n\
             proxy A on {} (admin {}), persist = true, config {}\n\
             proxy B on {} (admin {}), ConfigMap layout, config {}",
            self.blue.addr(),
            self.green.addr(),
            self.a.http_addr(),
            self.a.admin_addr(),
            self.dir.path().join("a").display(),
            self.b.http_addr(),
            self.b.admin_addr(),
            self.dir.path().join("b").display(),
        );
        text + &tls
    }

    /// The URL the load asks for: the HTTPS listener (as `localhost`) with
    /// `--tls`, else the plain one.
    fn load_target(&self, p: &switchyard::Proxy) -> anyhow::Result<Target> {
        match (&self.tls, p.https_addr()) {
            (Some(_), Some(https)) => {
                let mut t = Target::parse(&format!("http://{https}/version"))?;
                t.authority = format!("localhost:{}", https.port());
                Ok(t)
            }
            _ => Target::parse(&format!("http://{}/version", p.http_addr())),
        }
    }

    fn runs(&self, clock: Clock) -> anyhow::Result<Vec<Run>> {
        let url = |addr: std::net::SocketAddr, path: &str| format!("http://{addr}{path}");
        let admin = |p: &switchyard::Proxy| AdminClient::new(&url(p.admin_addr(), ""), None, clock);
        let named = |p: &str| PoolChoice::Named(p.to_string());
        let a = Run {
            label: "proxy A".into(),
            target: self.load_target(&self.a)?,
            tls: self.tls.clone(),
            admin: Some(admin(&self.a)?),
            steps: vec![
                Step {
                    name: "admin switch".into(),
                    action: Action::AdminSwitch { to: named("green") },
                    expected: Some(GREEN.into()),
                },
                Step {
                    name: "file switch".into(),
                    action: Action::Rename {
                        path: self.dir.path().join("a").join("upstreams.toml"),
                        to: named("blue"),
                    },
                    expected: Some(BLUE.into()),
                },
                Step {
                    name: "rollback".into(),
                    action: Action::Rollback,
                    expected: Some(GREEN.into()),
                },
            ],
        };
        let cm = ConfigMapDir::open(&self.dir.path().join("b").join("upstreams"))
            .context("proxy B's upstreams directory lost its ConfigMap layout")?;
        let b = Run {
            label: "proxy B (ConfigMap)".into(),
            target: self.load_target(&self.b)?,
            tls: self.tls.clone(),
            admin: Some(admin(&self.b)?),
            steps: vec![Step {
                name: "ConfigMap swap".into(),
                action: Action::DataSwap {
                    dir: cm,
                    file: "upstreams.toml".into(),
                    to: named("green"),
                },
                expected: Some(GREEN.into()),
            }],
        };
        Ok(vec![a, b])
    }

    /// Graceful stop of everything, proxies first.
    fn stop(self) {
        self.a.shutdown();
        self.b.shutdown();
        drop(self.blue);
        drop(self.green);
        drop(self.dir);
    }
}
