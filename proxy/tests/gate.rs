//! The switch gate with the real binary: a pool is ready when at least
//! `min_healthy` of its endpoints count as healthy (without `[health]`,
//! every endpoint counts), so these tests drive readiness with
//! `min_healthy` above a pool's endpoint count, then a file that adds
//! endpoints. A file switch to a pool that is not ready waits (pending) and
//! applies by itself; an admin switch to it is 409 unless forced; a later
//! intent cancels a pending switch; `force = true` in the file skips the gate.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::*;
use testkit::http::{admin, metric, metrics, status, Client};
use testkit::process::Switchyard;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WITHIN: Duration = Duration::from_secs(10);

/// Waits until `/status` satisfies `cond`; returns that document.
async fn wait_status(admin_addr: SocketAddr, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    testkit::http::wait_status(admin_addr, WITHIN, what, cond).await
}

/// `GET /version` through the proxy: the version that answered and the pool header.
async fn version(http: SocketAddr) -> (String, String) {
    let mut c = Client::connect(http).await.unwrap();
    let (code, headers, body) = c.get("/version").await.unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    let pool = headers["x-switchyard-pool"].to_str().unwrap().to_string();
    (v["version"].as_str().unwrap().to_string(), pool)
}

/// Blue (version 0.0.1) and two green endpoints (0.0.2), with green's
/// `min_healthy = 2`, and a proxy (`p`) started on blue with green of the
/// first green endpoint only: green is not ready until a file adds the
/// second.
struct GreenOfOne {
    p: Switchyard,
    blue: translation_api::Running,
    green: [translation_api::Running; 2],
}

impl GreenOfOne {
    fn start() -> GreenOfOne {
        let blue = api("0.0.1");
        let green = [api("0.0.2"), api("0.0.2")];
        let text = green_needs_two("blue", blue.addr(), &green[..1]);
        let p = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
        GreenOfOne { p, blue, green }
    }

    /// The upstreams file with `active`, green of its first `n` endpoints.
    fn file(&self, active: &str, n: usize) -> String {
        green_needs_two(active, self.blue.addr(), &self.green[..n])
    }
}

/// An upstreams file: `active`, blue of `blue`, green of `green` with
/// `min_healthy = 2` (so green of one endpoint is not ready).
fn green_needs_two(active: &str, blue: SocketAddr, green: &[translation_api::Running]) -> String {
    Upstreams::new(active)
        .pool("blue", [blue])
        .pool("green", green.iter().map(translation_api::Running::addr))
        .min_healthy("green", 2)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_switch_to_a_pool_not_ready_is_pending_then_applies_by_itself() {
    let t = GreenOfOne::start();
    let p = &t.p;
    let st = status(p.admin).await;
    assert_eq!(st["pools"]["green"]["ready"], false, "{st}");
    assert_eq!(
        st["pools"]["green"]["readiness"]["reason"],
        "green: 1 of 1 endpoints healthy, needs 2"
    );
    assert_eq!(st["pools"]["blue"]["ready"], true, "{st}");
    assert_eq!(st["pending"], Value::Null);
    let m = metrics(p.admin).await;
    assert_eq!(metric(&m, "switchyard_pool_ready{pool=\"green\"}"), 0.0, "{m}");
    assert_eq!(metric(&m, "switchyard_pool_ready{pool=\"blue\"}"), 1.0, "{m}");

    // The file says green: green is not ready, so the switch waits.
    p.files.rename_upstreams(&t.file("green", 1));
    let st = wait_status(p.admin, "the switch to green pending", |st| {
        st["pending"]["active"] == "green"
    })
    .await;
    assert_eq!(
        st["pending"]["reason"], "green: 1 of 1 endpoints healthy, needs 2",
        "{st}"
    );
    assert!(
        st["pending"]["since"].as_str().is_some_and(|s| !s.is_empty()),
        "{st}"
    );
    assert_eq!(
        (
            &st["active"],
            &st["file_active"],
            &st["generation"],
            &st["override"]
        ),
        (
            &Value::from("blue"),
            &Value::from("green"),
            &Value::from(1),
            &Value::from(false)
        ),
        "traffic stays on blue; nothing else changed"
    );
    assert_eq!(metric(&metrics(p.admin).await, "switchyard_switch_pending"), 1.0);
    for _ in 0..5 {
        assert_eq!(version(p.http).await, ("0.0.1".into(), "blue".into()));
    }
    assert!(
        p.proc.stdout().contains("its switch is pending"),
        "the log says why: {}",
        p.proc.stdout()
    );
    // `switchyard status` shows it.
    let out = std::process::Command::new(BIN)
        .args(["status", "--admin", &format!("http://{}", p.admin)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pending     green") && text.contains("green: 1 of 1 endpoints healthy, needs 2"),
        "{text}"
    );
    assert!(text.contains("NOT READY (1 of 1 healthy, needs 2)"), "{text}");

    // A second endpoint makes green ready: the pending switch applies by itself.
    p.files.rename_upstreams(&t.file("green", 2));
    let st = wait_status(p.admin, "green active", |st| st["active"] == "green").await;
    assert_eq!(st["pending"], Value::Null, "{st}");
    assert_eq!(
        (&st["source"], &st["override"]),
        (&Value::from("file"), &Value::from(false))
    );
    assert_eq!(st["previous"], "blue");
    assert_eq!(st["pools"]["green"]["ready"], true, "{st}");
    let m = metrics(p.admin).await;
    assert_eq!(metric(&m, "switchyard_switch_pending"), 0.0, "{m}");
    assert_eq!(metric(&m, "switchyard_pool_ready{pool=\"green\"}"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "switchyard_switches_total{source=\"file\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(version(p.http).await, ("0.0.2".into(), "green".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_switch_to_a_pool_not_ready_is_409_with_the_reason_unless_forced() {
    let (blue, green) = (api("0.0.1"), api("0.0.2"));
    let p = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .upstreams(Upstreams::blue_green("blue", blue.addr(), green.addr()).min_healthy("green", 3)),
    );
    let reason = "green: 1 of 1 endpoints healthy, needs 3";
    for (path, body) in [
        ("/switch", r#"{"to":"green"}"#),
        ("/switch?to=green", ""),
        ("/switch?to=green&force=false", ""),
        ("/switch", r#"{"to":"green","force":false,"if_generation":1}"#),
    ] {
        let (code, b) = admin(p.admin, "POST", path, body, None).await;
        assert_eq!(code, 409, "{path} {body}: {b}");
        assert_eq!(b["error"], "Conflict", "{b}");
        assert_eq!(b["errors"], serde_json::json!([reason]), "{b}");
    }
    // Bad `force` values are 400s; nothing changes.
    for (path, body) in [
        ("/switch?to=green&force=yes", ""),
        ("/switch", r#"{"to":"green","force":"yes"}"#),
        ("/switch?to=green&force=true", r#"{"force":false}"#),
    ] {
        let (code, b) = admin(p.admin, "POST", path, body, None).await;
        assert_eq!(code, 400, "{path} {body}: {b}");
        let why = b["errors"][0].as_str().unwrap();
        assert!(why.contains("force") || why.contains("expected a boolean"), "{b}");
    }
    let st = status(p.admin).await;
    assert_eq!(
        (&st["active"], &st["generation"]),
        (&Value::from("blue"), &Value::from(1))
    );
    assert_eq!(version(p.http).await.1, "blue");
    assert!(
        p.proc
            .stdout_lines()
            .iter()
            .any(|l| l.contains("switchyard::audit") && l.contains("refused") && l.contains(reason)),
        "{}",
        p.proc.stdout()
    );

    // Forced: it switches (body or query).
    let (code, b) = admin(p.admin, "POST", "/switch?force=true", r#"{"to":"green"}"#, None).await;
    assert_eq!(
        (code, &b["changed"], &b["active"]),
        (200, &Value::from(true), &Value::from("green")),
        "{b}"
    );
    assert_eq!(version(p.http).await, ("0.0.2".into(), "green".into()));
    assert!(
        p.proc
            .stdout_lines()
            .iter()
            .any(|l| l.contains("switchyard::audit") && l.contains("forced=true") && l.contains("applied")),
        "the audit line says forced: {}",
        p.proc.stdout()
    );
    // Asking for the pool in force is never refused by the gate.
    let (code, b) = admin(p.admin, "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!((code, &b["changed"]), (200, &Value::from(false)), "{b}");
    // Blue is ready: the rollback needs no force.
    let (code, b) = admin(p.admin, "POST", "/rollback", "", None).await;
    assert_eq!((code, &b["active"]), (200, &Value::from("blue")), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_switch_cancels_a_pending_file_switch() {
    let t = GreenOfOne::start();
    let p = &t.p;
    p.files.rename_upstreams(&t.file("green", 1));
    wait_status(p.admin, "the switch to green pending", |st| {
        st["pending"]["active"] == "green"
    })
    .await;

    // The operator says blue (already active): the pending switch is cancelled.
    let (code, b) = admin(p.admin, "POST", "/switch", r#"{"to":"blue"}"#, None).await;
    assert_eq!((code, &b["changed"]), (200, &Value::from(false)), "{b}");
    let st = status(p.admin).await;
    assert_eq!(st["pending"], Value::Null, "{st}");
    assert_eq!(
        (&st["active"], &st["override"], &st["file_active"]),
        (&Value::from("blue"), &Value::from(true), &Value::from("green")),
        "blue is held as an override of the file's green"
    );
    assert_eq!(metric(&metrics(p.admin).await, "switchyard_switch_pending"), 0.0);

    // Green becomes ready later: nothing is pending, so nothing switches.
    p.files.rename_upstreams(&t.file("green", 2));
    let st = wait_status(p.admin, "green ready", |st| st["pools"]["green"]["ready"] == true).await;
    assert_eq!(
        (&st["active"], &st["generation"]),
        (&Value::from("blue"), &Value::from(2)),
        "{st}"
    );
    assert_eq!(version(p.http).await.1, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_in_the_file_skips_the_gate() {
    let (blue, green) = (api("0.0.1"), api("0.0.2"));
    let file = |u: Upstreams| u.min_healthy("green", 5).to_string();
    let p = Switchyard::start(
        BIN,
        ProxyConfig::new().upstreams_text(&file(Upstreams::blue_green("blue", blue.addr(), green.addr()))),
    );
    p.files.rename_upstreams(&file(
        Upstreams::blue_green("green", blue.addr(), green.addr()).force(true),
    ));
    let st = wait_status(p.admin, "green active", |st| st["active"] == "green").await;
    assert_eq!(
        (&st["pending"], &st["source"]),
        (&Value::Null, &Value::from("file")),
        "{st}"
    );
    assert_eq!(st["pools"]["green"]["ready"], false, "forced past the gate: {st}");
    assert_eq!(version(p.http).await, ("0.0.2".into(), "green".into()));
}
