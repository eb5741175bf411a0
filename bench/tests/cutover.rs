//! `cutover` end to end (a short run of the debug build): every cut-over
//! with no failed request and no old answer after the acknowledgement.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

#[path = "../../proxy/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{blue_green_proxy, ProxyConfig};
use testkit::net::ClosedPort;
use testkit::process::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_cutover");

/// Runs `cutover` to its end (at most `within`): exit status and stdout lines.
fn finish(cmd: Command, within: Duration) -> (std::process::ExitStatus, Vec<String>) {
    let mut p = Proc::spawn(cmd);
    let status = p.wait_exit(within);
    (status, p.stdout_lines())
}

fn run(args: &[&str], json: &std::path::Path) -> (Value, Vec<String>) {
    let mut c = Command::new(BIN);
    c.args(args).arg("--json").arg(json);
    let (status, out) = finish(c, Duration::from_secs(120));
    let text = out.join("\n");
    let v: Value = serde_json::from_slice(&std::fs::read(json).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON report ({e}); {status:?}; output:\n{text}"));
    assert!(status.success(), "{status:?}; output:\n{text}");
    (v, out)
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
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cutover.json");
    let svg = dir.path().join("cutover.svg");
    let (v, out) = run(
        &[
            "--duration",
            "600ms",
            "--warmup",
            "200ms",
            "--concurrency",
            "8",
            "--plot",
            svg.to_str().unwrap(),
        ],
        &json,
    );
    let text = out.join("\n");
    assert_clean(&v, &text);
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
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("ConfigMap swap") && svg.contains("0.0.2 (green)"));
}

#[test]
fn embedded_cutover_over_tls_passes_all_four_switches() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cutover.json");
    let (v, out) = run(
        &[
            "--tls",
            "--duration",
            "600ms",
            "--warmup",
            "200ms",
            "--concurrency",
            "8",
        ],
        &json,
    );
    let text = out.join("\n");
    assert_clean(&v, &text);
    assert_eq!(v["cutovers"].as_array().unwrap().len(), 4, "{text}");
    assert!(text.contains("HTTPS (--tls)"), "the load went over TLS: {text}");
}

#[test]
fn external_mode_measures_a_running_deployment() {
    let (_blue, _green, proxy) = blue_green_proxy(ProxyConfig::new().persist(true));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cutover.json");
    let upstreams = &proxy.files.upstreams_toml;
    let (v, out) = run(
        &[
            "--target",
            &proxy.url("/version"),
            "--admin",
            &proxy.admin_url(),
            "--upstreams",
            upstreams.to_str().unwrap(),
            "--duration",
            "600ms",
            "--warmup",
            "200ms",
            "--concurrency",
            "4",
        ],
        &json,
    );
    let text = out.join("\n");
    assert_clean(&v, &text);
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
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cutover.json");
    // An admin URL where nothing listens.
    let nobody = ClosedPort::new();
    let (status, out) = finish(
        {
            let mut c = Command::new(BIN);
            c.args(["--target", &proxy.url("/version"), "--admin"])
                .arg(format!("http://{}", nobody.addr()))
                .args([
                    "--duration",
                    "200ms",
                    "--warmup",
                    "100ms",
                    "--concurrency",
                    "2",
                    "--json",
                ])
                .arg(&json);
            c
        },
        Duration::from_secs(60),
    );
    let text = out.join("\n");
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL"), "{text}");
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["passed"], false);
    assert!(
        v["cutovers"][0]["error"].as_str().unwrap().contains("admin"),
        "{v}"
    );
}
