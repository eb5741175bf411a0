//! `testclient` against real servers, stopped with SIGINT, its output parsed.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

#[path = "../../proxy/tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::{api, blue_green_proxy, ProxyConfig};
use testkit::net::ClosedPort;
use testkit::process::Proc;

const BIN: &str = env!("CARGO_BIN_EXE_testclient");

/// `testclient args...` running.
fn start(args: &[&str]) -> Proc {
    let mut c = Command::new(BIN);
    c.args(args);
    Proc::spawn(c)
}

/// Sends SIGINT, waits for the exit; the status and every stdout line.
fn interrupt(mut tc: Proc, within: Duration) -> (std::process::ExitStatus, Vec<String>) {
    tc.signal("INT");
    let status = tc.wait_exit(within);
    (status, tc.stdout_lines())
}

/// The value after `key: ` on the line that starts with it.
fn field<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

#[test]
fn counts_and_summarises_until_sigint() {
    let server = api("0.0.7");
    let url = format!("http://{}/version", server.addr());
    let mut tc = start(&[&url]);
    tc.next_line(Duration::from_secs(20), "for the first version", |l| {
        l.starts_with("version 0.0.7 (first answer")
    });
    tc.next_line(Duration::from_secs(30), "after 1000 requests", |l| {
        l == "1000 requests, 0 failed"
    });
    let (status, out) = interrupt(tc, Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", out.join("\n"));
    assert!(out.iter().any(|l| l == "--- summary ---"), "{}", out.join("\n"));
    let total: u64 = field(&out, "total requests").unwrap().parse().unwrap();
    assert!(total >= 1000, "{total}");
    assert_eq!(field(&out, "failed"), Some("0"));
    assert_eq!(field(&out, "last version"), Some("0.0.7"));
    let elapsed = field(&out, "elapsed").unwrap();
    assert!(elapsed.ends_with(" s") && elapsed.trim_end_matches(" s").parse::<f64>().unwrap() > 0.0);
    let rps = field(&out, "average").unwrap();
    assert!(rps.ends_with(" requests/s"), "{rps}");
    assert!(field(&out, "latency").unwrap().starts_with("p50 "));
    assert!(!out
        .iter()
        .any(|l| l.contains("failed:") && l.starts_with("request ")));
}

#[test]
fn prints_failures_and_keeps_going() {
    // Nothing listens on this port (and nothing can, while `nobody` lives).
    let nobody = ClosedPort::new();
    let mut tc = start(&[&format!("http://{}/version", nobody.addr())]);
    tc.next_line(Duration::from_secs(20), "for the third failure", |l| {
        l.starts_with("request 3 failed: error: connect")
    });
    let (status, out) = interrupt(tc, Duration::from_secs(20));
    assert!(status.success());
    let failed: u64 = field(&out, "failed").unwrap().parse().unwrap();
    assert!(failed >= 3);
    assert_eq!(
        field(&out, "total requests").unwrap().parse::<u64>().unwrap(),
        failed
    );
    assert_eq!(field(&out, "last version"), Some("none"));
}

#[test]
fn reports_a_switch_as_a_version_change_and_writes_json() {
    let (_blue, _green, proxy) = blue_green_proxy(ProxyConfig::new().persist(true));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tc.json");
    let mut tc = start(&[
        &proxy.url("/version"),
        "--concurrency",
        "4",
        "--json",
        json.to_str().unwrap(),
    ]);
    tc.next_line(Duration::from_secs(30), "after 1000 requests", |l| {
        l.starts_with("1000 requests")
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin =
        bench::admin::AdminClient::new(&proxy.admin_url(), None, testkit::loadgen::clock::Clock::start())
            .unwrap();
    let answer = rt.block_on(admin.switch("green")).unwrap();
    assert_eq!(answer.body["active"], "green");
    tc.next_line(Duration::from_secs(30), "for the version change", |l| {
        l.starts_with("version 0.0.1 -> 0.0.2 at request ")
    });
    let (status, out) = interrupt(tc, Duration::from_secs(20));
    assert!(status.success(), "{}", out.join("\n"));
    assert_eq!(field(&out, "failed"), Some("0"), "{}", out.join("\n"));
    assert_eq!(field(&out, "last version"), Some("0.0.2"));

    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["failed"], 0);
    assert_eq!(v["concurrency"], 4);
    assert_eq!(v["last_version"], "0.0.2");
    assert!(v["total"].as_u64().unwrap() >= 1000);
    assert!(v["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    // null -> 0.0.1 first; then, with 4 connections, requests in flight at the
    // switch may still answer 0.0.1 after a first 0.0.2 (the mixed window),
    // so the changes alternate, each from the previous one's version, and end on 0.0.2.
    let changes = v["version_changes"].as_array().unwrap();
    assert!(changes.len() >= 2, "{changes:?}");
    assert_eq!(changes[0]["from"], serde_json::Value::Null);
    assert_eq!(changes[0]["to"], "0.0.1");
    for w in changes.windows(2) {
        assert_eq!(w[1]["from"], w[0]["to"], "{changes:?}");
        assert!(w[1]["at_s"].as_f64().unwrap() >= w[0]["at_s"].as_f64().unwrap());
    }
    assert_eq!(changes[1]["from"], "0.0.1");
    assert_eq!(changes.last().unwrap()["to"], "0.0.2");
    assert!(changes[1]["unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn duration_and_rate_bound_the_run() {
    let server = api("0.0.1");
    let url = format!("http://{}/version", server.addr());
    let mut tc = start(&[&url, "--duration", "1s", "--rate", "200", "--concurrency", "2"]);
    let status = tc.wait_exit(Duration::from_secs(30));
    let out = tc.stdout_lines();
    assert!(status.success(), "{}", out.join("\n"));
    let total: u64 = field(&out, "total requests").unwrap().parse().unwrap();
    // 200 requests/s for 1 s, open loop: the slots due within the second
    // (0 ms, 5 ms, ..., 995 ms), every one sent however late, none after.
    assert_eq!(total, 200, "{}", out.join("\n"));
    assert_eq!(field(&out, "failed"), Some("0"));
}
