//! `cutover` end to end (a short run of the debug build): every cut-over
//! with no failed request and no old answer after the acknowledgement.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

#[path = "../../proxy/tests/support/mod.rs"]
mod support;

use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;
use support::{blue_green_proxy, ProxyConfig};
use testkit::net::ClosedPort;
use testkit::process::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// `before`, a short run (a phase of 600 ms after 200 ms of warm-up), `after`.
fn short<'a>(before: &[&'a str], after: &[&'a str]) -> Vec<&'a str> {
    let mut args = before.to_vec();
    args.extend(["--duration", "600ms", "--warmup", "200ms"]);
    args.extend(after);
    args
}

/// A finished `cutover` run.
struct Ran {
    status: ExitStatus,
    /// Its stdout.
    text: String,
    /// Its `--json` report.
    v: Value,
    /// Its `--plot` SVG, when asked for and written.
    svg: Option<String>,
}

impl Ran {
    fn svg(&self) -> &str {
        self.svg.as_deref().expect("the --plot SVG was written")
    }
}

/// Runs `cutover ARGS --json FILE` (and `--plot FILE.svg` with `plot`) to
/// its end (at most `within`) and reads the JSON report it must write.
fn run_cutover(args: &[&str], plot: bool, within: Duration) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cutover.json");
    let svg = dir.path().join("cutover.svg");
    let mut c = Command::new(BIN);
    c.args(args).arg("--json").arg(&json);
    if plot {
        c.arg("--plot").arg(&svg);
    }
    let mut p = Proc::spawn(c);
    let status = p.wait_exit(within);
    let text = p.stdout_lines().join("\n");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON report ({e}); {status:?}; output:\n{text}"));
    let svg = if plot {
        std::fs::read_to_string(&svg).ok()
    } else {
        None
    };
    Ran { status, text, v, svg }
}

/// [`run_cutover`] (within 120 s) of a run that must exit 0.
fn run(args: &[&str], plot: bool) -> Ran {
    let r = run_cutover(args, plot, Duration::from_secs(120));
    assert!(r.status.success(), "{:?}; output:\n{}", r.status, r.text);
    r
}

/// [`run`] of a scenario: the report must name it and say it passed.
fn run_scenario(scenario: &str, args: &[&str], plot: bool) -> Ran {
    let r = run(args, plot);
    assert_eq!(r.v["passed"], true, "{}", r.text);
    assert_eq!(r.v["scenario"], scenario);
    r
}

/// Every check of a scenario's part of the report passed, and the text says `PASS:`.
fn assert_checks_pass(part: &Value, text: &str) {
    for ch in part["checks"].as_array().unwrap() {
        assert_eq!(ch["passed"], true, "{ch}");
    }
    assert!(text.lines().any(|l| l.starts_with("PASS:")), "{text}");
}

fn assert_clean(v: &Value, text: &str) {
    assert_eq!(v["passed"], true, "{text}");
    assert_eq!(v["total"]["failed"], 0, "{text}");
    assert!(v["total"]["requests"].as_u64().unwrap() > 0);
    for c in v["cutovers"].as_array().unwrap() {
        assert_eq!(c["failed"], 0, "{c}");
        assert_eq!(c["stale_after_ack"], 0, "{c}");
        assert!(c["switch_to_first_new_ms"].is_number(), "{c}");
        assert!(c["mixed_window_ms"].as_f64().unwrap() >= 0.0, "{c}");
        for seg in ["before", "during", "after"] {
            assert!(c["rps"][seg].as_f64().unwrap() > 0.0, "{c}");
            for p in ["p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"] {
                assert!(c["latency"][seg][p].is_number(), "{c}");
            }
        }
    }
}

#[test]
fn embedded_cutover_passes_all_four_switches() {
    let ran = run(&short(&[], &["--concurrency", "8"]), true);
    let (v, text) = (&ran.v, &ran.text);
    assert_clean(v, text);
    assert_eq!(v["mode"], "embedded");
    let cutovers = v["cutovers"].as_array().unwrap();
    let got: Vec<(&str, &str, &str, &str)> = cutovers
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap(),
                c["source"].as_str().unwrap(),
                c["from"].as_str().unwrap(),
                c["to"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("admin switch", "admin", "0.0.1", "0.0.2"),
            ("file switch", "file", "0.0.2", "0.0.1"),
            ("rollback", "rollback", "0.0.1", "0.0.2"),
            ("ConfigMap swap", "file", "0.0.1", "0.0.2"),
        ],
        "{text}"
    );
    // Admin switches are acknowledged by the answer; file switches by the first new answer.
    assert_eq!(cutovers[0]["ack"], "response");
    assert!(cutovers[0]["ack_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(cutovers[1]["ack"], "first_new_answer");
    assert_eq!(cutovers[3]["ack"], "first_new_answer");
    assert!(text.contains("failed: 0"), "{text}");
    assert!(text.contains("PASS"), "{text}");
    let svg = ran.svg();
    assert!(svg.starts_with("<svg") && svg.contains("ConfigMap swap") && svg.contains("0.0.2 (green)"));
}

#[test]
fn embedded_cutover_over_tls_passes_all_four_switches() {
    let ran = run(&short(&["--tls"], &["--concurrency", "8"]), false);
    let (v, text) = (&ran.v, &ran.text);
    assert_clean(v, text);
    assert_eq!(v["cutovers"].as_array().unwrap().len(), 4, "{text}");
    assert!(text.contains("HTTPS (--tls)"), "the load went over TLS: {text}");
}

#[test]
fn external_mode_measures_a_running_deployment() {
    let (_blue, _green, proxy) = blue_green_proxy(ProxyConfig::new().persist(true));
    let (url, admin) = (proxy.url("/version"), proxy.admin_url());
    let upstreams = proxy.files.upstreams_toml.to_str().unwrap();
    let target = [
        "--target",
        url.as_str(),
        "--admin",
        admin.as_str(),
        "--upstreams",
        upstreams,
    ];
    let ran = run(&short(&target, &["--concurrency", "4"]), false);
    let (v, text) = (&ran.v, &ran.text);
    assert_clean(v, text);
    assert_eq!(v["mode"], "external");
    let names: Vec<(&str, &str)> = v["cutovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("admin switch", "0.0.2"),
            ("file switch", "0.0.1"),
            ("rollback", "0.0.2")
        ],
        "{text}"
    );
}

#[test]
fn a_switch_that_does_nothing_fails_the_run() {
    // The switch cannot be made: it is reported, and the run fails.
    let (_blue, _green, proxy) = blue_green_proxy(ProxyConfig::new().persist(true));
    // An admin URL where nothing listens.
    let nobody = ClosedPort::new();
    let (url, admin) = (proxy.url("/version"), format!("http://{}", nobody.addr()));
    let ran = run_cutover(
        &[
            "--target",
            &url,
            "--admin",
            &admin,
            "--duration",
            "200ms",
            "--warmup",
            "100ms",
            "--concurrency",
            "2",
        ],
        false,
        Duration::from_secs(60),
    );
    let (v, text) = (&ran.v, &ran.text);
    assert_eq!(ran.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL"), "{text}");
    assert_eq!(v["passed"], false);
    assert!(
        v["cutovers"][0]["error"].as_str().unwrap().contains("admin"),
        "{v}"
    );
}

#[test]
fn help_lists_the_scenarios() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in [
        "full",
        "broken-green",
        "fleet",
        "canary",
        "bad-release",
        "--replicas",
        "--cookie-clients",
        "--step-requests",
        "--fail-ratio",
    ] {
        assert!(text.contains(name), "--help names {name}: {text}");
    }
}

#[test]
fn replicas_with_another_scenario_is_refused_naming_it() {
    let out = Command::new(BIN)
        .args(["--scenario", "broken-green", "--replicas", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--replicas") && err.contains("broken-green"),
        "{err}"
    );
}

#[test]
fn broken_green_is_refused_then_pending_then_applied_by_itself() {
    let args = short(&["--scenario", "broken-green"], &["--concurrency", "8"]);
    let ran = run_scenario("broken-green", &args, true);
    let (v, text) = (&ran.v, &ran.text);
    assert_eq!(v["total"]["failed"], 0, "{text}");
    let bg = &v["broken_green"];
    assert_eq!(bg["admin_switch"]["status"], 409, "{bg}");
    let reason = bg["admin_switch"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("green: 0 of 1 endpoints healthy"), "{reason}");
    assert_eq!(bg["admin_switch"]["active_after"], "blue", "{bg}");
    assert_eq!(bg["file_switch"]["active"], "green", "{bg}");
    assert_eq!(bg["file_switch"]["serving"], "blue", "{bg}");
    assert_eq!(bg["before_green"]["failed"], 0, "{bg}");
    assert_eq!(bg["before_green"]["not_blue"], 0, "{bg}");
    assert!(bg["before_green"]["requests"].as_u64().unwrap() > 0, "{bg}");
    assert_eq!(bg["stale_after_first_green"], 0, "{bg}");
    for f in [
        "readyz_ms",
        "status_ready_ms",
        "applied_ms",
        "first_green_ms",
        "readyz_to_first_green_ms",
    ] {
        assert!(bg["green"][f].is_number(), "{f}: {bg}");
    }
    assert_checks_pass(bg, text);
    let c = &v["cutovers"][0];
    assert_eq!(
        (c["from"].as_str(), c["to"].as_str()),
        (Some("0.0.1"), Some("0.0.2")),
        "{c}"
    );
    assert_eq!(c["source"], "file", "{c}");
    assert!(text.contains("409 green: 0 of 1 endpoints healthy"), "{text}");
    let svg = ran.svg();
    assert!(svg.starts_with("<svg") && svg.contains("green started") && svg.contains("0.0.2 (green)"));
}

/// The `switchyard` binary beside `cutover` when the build made it (the
/// workspace's tests need it, so `cargo test --workspace` has): given with
/// `--switchyard-bin`, so the test does not run cargo itself. Without it,
/// `cutover` builds it.
fn switchyard_bin_args() -> Vec<String> {
    let bin = std::path::Path::new(BIN).with_file_name("switchyard");
    if bin.is_file() {
        vec!["--switchyard-bin".into(), bin.to_string_lossy().into_owned()]
    } else {
        Vec::new()
    }
}

#[test]
fn a_fleet_of_three_is_switched_by_one_cli_command() {
    let bin = switchyard_bin_args();
    let bin: Vec<&str> = bin.iter().map(String::as_str).collect();
    let mut args = short(&["--replicas", "3"], &["--concurrency", "6"]);
    args.extend(&bin);
    let ran = run_scenario("fleet", &args, false);
    let (v, text) = (&ran.v, &ran.text);
    assert_eq!(v["total"]["failed"], 0, "{text}");
    let f = &v["fleet"];
    assert_eq!(f["cli"]["exit_code"], 0, "{f}");
    assert_eq!(f["cli"]["agree"], true, "{f}");
    assert!(f["cli"]["command"]
        .as_str()
        .unwrap()
        .starts_with("switchyard switch green --admin http://"));
    assert_eq!(f["stale_after_cli"], 0, "{f}");
    assert!(f["mixed_window_ms"].as_f64().unwrap() >= 0.0, "{f}");
    let replicas = f["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{f}");
    for r in replicas {
        assert_eq!(r["state"], "switched", "{r}");
        assert_eq!(r["connections"], 2, "{r}");
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["failed"], 0, "{r}");
        assert_eq!(r["stale_after_cli"], 0, "{r}");
        assert_eq!(r["active_after"], "green", "{r}");
        assert!(
            r["ack_ms"].is_u64() && r["first_new_ms"].is_number() && r["last_old_ms"].is_number(),
            "{r}"
        );
    }
    assert!(text.contains("fleet: first new answer"), "{text}");
}

#[test]
fn canary_follows_each_step_and_cookie_clients_keep_their_pool() {
    // 2,500 answers per step: the tolerance widens to 4 standard deviations
    // (2.4 points at 10 %, 4 at 50 %); the documented run uses 10,000 (±2).
    let ran = run_scenario(
        "canary",
        &[
            "--scenario",
            "canary",
            "--duration",
            "400ms",
            "--warmup",
            "200ms",
            "--concurrency",
            "8",
            "--cookie-clients",
            "8",
            "--step-requests",
            "2500",
        ],
        true,
    );
    let (v, text) = (&ran.v, &ran.text);
    assert_eq!(v["total"]["failed"], 0, "{text}");
    let c = &v["canary"];
    assert_eq!(c["cookie"], "switchyard-pool", "{c}");
    let steps = c["steps"].as_array().unwrap();
    let weights: Vec<u64> = steps.iter().map(|x| x["weight"].as_u64().unwrap()).collect();
    assert_eq!(weights, [10, 50, 100], "{c}");
    assert_eq!(
        steps[0]["split"],
        serde_json::json!({"blue": 90, "green": 10}),
        "{c}"
    );
    assert_eq!(
        steps[1]["split"],
        serde_json::json!({"blue": 50, "green": 50}),
        "{c}"
    );
    assert!(steps[2]["split"].is_null(), "{c}");
    assert_eq!(steps[2]["active"], "green", "{c}");
    for x in &steps[..2] {
        assert_eq!(x["status"], 200, "{x}");
        assert!(x["requests"].as_u64().unwrap() >= 2500, "{x}");
        let w = x["weight"].as_f64().unwrap();
        let share = x["green_share"].as_f64().unwrap();
        let tol = x["tolerance"].as_f64().unwrap();
        assert!(tol >= 2.0 && (share - w).abs() <= tol, "{x}");
        assert_eq!(x["failed"], 0, "{x}");
        assert_eq!(x["within"], true, "{x}");
    }
    assert_eq!(steps[2]["green_share"].as_f64(), Some(100.0), "{c}");
    assert_eq!(steps[2]["blue"], 0, "{c}");
    assert_eq!(c["stale_after_full"], 0, "{c}");
    let st = &c["sticky"];
    assert_eq!(st["clients"], 8, "{st}");
    assert_eq!(
        st["cookie_blue"].as_u64().unwrap() + st["cookie_green"].as_u64().unwrap(),
        8,
        "every client with a jar got a cookie: {st}"
    );
    assert!(st["requests_with_cookie"].as_u64().unwrap() > 0, "{st}");
    for f in [
        "without_cookie",
        "other_pool",
        "cookie_changes",
        "flipped_clients",
        "not_green_after_full",
    ] {
        assert_eq!(st[f], 0, "{f}: {st}");
    }
    assert_checks_pass(c, text);
    let svg = ran.svg();
    assert!(svg.starts_with("<svg") && svg.contains("green 50 %") && svg.contains("0.0.2 (green)"));
}

#[test]
fn bad_release_is_rolled_back_by_the_proxy_within_the_error_bound() {
    let scenario = ["--scenario", "bad-release", "--fail-ratio", "0.2"];
    let args = short(&scenario, &["--concurrency", "8"]);
    let ran = run_scenario("bad-release", &args, true);
    let (v, text) = (&ran.v, &ran.text);
    let b = &v["bad_release"];
    assert_eq!(b["switch"]["status"], 200, "{b}");
    let r = &b["rollback"];
    assert_eq!(r["active"], "blue", "{r}");
    assert_eq!(r["source"], "auto", "{r}");
    let reason = r["override_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("automatic rollback: green answered") && reason.contains("back to blue"),
        "{reason}"
    );
    assert!(r["ack_to_rollback_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["switches_total_auto"].as_f64(), Some(1.0), "{r}");
    let e = &b["errors"];
    let errors = e["green_500"].as_u64().unwrap();
    assert!(
        errors > 0,
        "green's failures reached the clients before the rollback: {e}"
    );
    assert!(
        e["green_requests"].as_u64().unwrap() >= 100,
        "min_requests were answered: {e}"
    );
    assert!(errors as f64 <= e["bound"].as_f64().unwrap(), "{e}");
    assert_eq!(e["within_bound"], true, "{e}");
    assert_eq!(e["other_failures"], 0, "{e}");
    assert_eq!(b["green_after_rollback"], 0, "{b}");
    // The only failures of the run are green's 500s.
    assert_eq!(v["total"]["failed"].as_u64(), Some(errors), "{text}");
    assert_checks_pass(b, text);
    let svg = ran.svg();
    assert!(svg.starts_with("<svg") && svg.contains("automatic rollback seen"));
}
