//! Admin switches under load: atomic, linearizable, and the admin API's rules.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;
use testkit::http::{admin, metric, Client};
use testkit::load::{assert_no_failures, Load};
use testkit::loadgen::report::{cutover_report, Switch};
use testkit::loadgen::sample::Sample;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_switch_under_load_has_no_failure_and_no_stale_answer_after_ack() {
    let (_blue, _green, tp) = blue_green_proxy(ProxyConfig::new());
    // Every client connection is open (answered once) before the switch.
    let load = Load::start(tp.http(), 16, "/version").await;
    load.wait_more(500).await;

    let issued = load.now_ns();
    let (status, body) = admin(tp.admin(), "POST", "/switch", r#"{"to":"green"}"#, None).await;
    let ack = load.now_ns();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["active"], "green");
    assert_eq!(body["previous"], "blue");
    assert_eq!(body["generation"], 2);
    assert_eq!(body["source"], "admin");

    load.wait_more(500).await;
    let per_conn = load.stop();
    let samples: Vec<Sample> = per_conn.concat();
    assert_no_failures(&samples);
    // The cut-over as bench's report measures it: blue before, green after,
    // nothing failed, no old answer to a request sent after the ack.
    let report = cutover_report(
        &samples,
        &Switch {
            name: "admin switch".into(),
            source: "admin".into(),
            how: "POST /switch".into(),
            issued_ns: issued,
            ack_ns: Some(ack),
            phase: 0..u64::MAX,
            generation: Some(2),
            expected: Some("0.0.2".into()),
            error: None,
        },
    );
    assert_eq!(report.stale_after_ack, 0, "{report:?}");
    assert_eq!(
        (report.from.as_deref(), report.to.as_deref()),
        (Some("0.0.1"), Some("0.0.2")),
        "blue answered before the switch, green after"
    );
    assert!(report.passed(), "{report:?}");
    // Stricter, per request: every request sent after the ack was answered
    // by green, and the proxy said so.
    let stale: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent_ns > ack)
        .filter(|s| s.ok_version() != Some("0.0.2") || s.pool.as_deref() != Some("green"))
        .collect();
    assert!(
        stale.is_empty(),
        "{} requests sent after the ack were not answered by green: {:?}",
        stale.len(),
        &stale[..stale.len().min(3)]
    );
    // The switch reached connections opened before it: each one sent after the ack.
    for (conn, samples) in per_conn.iter().enumerate() {
        assert!(
            samples.iter().any(|s| s.sent_ns > ack),
            "connection {conn} sent nothing after the switch"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_rollback_and_admin_errors() {
    let (blue, _green, tp) = blue_green_proxy(ProxyConfig::new());
    let a = tp.admin();

    // Nothing to roll back to at start.
    let (s, b) = admin(a, "POST", "/rollback", "", None).await;
    assert_eq!(s, 409, "{b}");

    // Stale if_generation: 409, nothing changes.
    let (s, b) = admin(a, "POST", "/switch", r#"{"to":"green","if_generation":7}"#, None).await;
    assert_eq!(s, 409, "{b}");
    assert!(b["errors"][0].as_str().unwrap().contains("generation"), "{b}");
    assert_eq!((tp.active().as_str(), tp.generation()), ("blue", 1));

    // Matching if_generation, via the query string.
    let (s, b) = admin(a, "POST", "/switch?to=green", r#"{"if_generation":1}"#, None).await;
    assert_eq!((s, b["generation"].as_u64()), (200, Some(2)), "{b}");
    // Idempotent: already active.
    let (s, b) = admin(a, "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!(
        (s, &b["changed"], b["generation"].as_u64()),
        (200, &serde_json::json!(false), Some(2)),
        "{b}"
    );

    // Rollback once: back to blue; twice: 409.
    let (s, b) = admin(a, "POST", "/rollback", r#"{"if_generation":2}"#, None).await;
    assert_eq!(
        (s, b["active"].as_str(), b["source"].as_str()),
        (200, Some("blue"), Some("rollback")),
        "{b}"
    );
    let (s, _) = admin(a, "POST", "/rollback", "", None).await;
    assert_eq!(s, 409);
    assert_eq!((tp.active().as_str(), tp.generation()), ("blue", 3));

    // Bad input: 4xx with a JSON error naming it, and no change.
    for (method, path, body, want) in [
        ("POST", "/switch", r#"{"to":"purple"}"#, 400),
        ("POST", "/switch", r#"{"to":"#, 400),
        ("POST", "/switch", r#"{"too":"green"}"#, 400),
        ("POST", "/switch", "", 400),
        ("GET", "/switch", "", 405),
        ("PUT", "/rollback", "", 405),
        ("POST", "/status", "", 405),
        ("GET", "/nope", "", 404),
    ] {
        let (s, b) = admin(a, method, path, body, None).await;
        assert_eq!(s, want, "{method} {path} {body}: {b}");
        assert!(b["errors"][0].is_string(), "{b}");
    }
    assert_eq!((tp.active().as_str(), tp.generation()), ("blue", 3));

    // /status
    let (s, st) = admin(a, "GET", "/status", "", None).await;
    assert_eq!(s, 200);
    assert_eq!(st["active"], "blue");
    assert_eq!(st["generation"], 3);
    assert_eq!(st["source"], "rollback");
    assert_eq!(st["pools"]["green"]["drained"], true);
    assert_eq!(st["pools"]["blue"]["drained"], false);
    assert_eq!(
        st["pools"]["blue"]["endpoints"][0]["address"],
        blue.addr().to_string()
    );
    assert_eq!(admin(a, "GET", "/healthz", "", None).await.0, 200);
    assert_eq!(admin(a, "GET", "/readyz", "", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_protects_mutations_only() {
    let (_blue, _green, tp) = blue_green_proxy(ProxyConfig::new().token("s3cret"));
    let a = tp.admin();
    assert_eq!(
        admin(a, "POST", "/switch", r#"{"to":"green"}"#, None).await.0,
        401
    );
    assert_eq!(
        admin(a, "POST", "/switch", r#"{"to":"green"}"#, Some("wrong"))
            .await
            .0,
        401
    );
    assert_eq!(tp.active(), "blue");
    assert_eq!(admin(a, "GET", "/status", "", None).await.0, 200);
    assert_eq!(
        admin(a, "POST", "/switch", r#"{"to":"green"}"#, Some("s3cret"))
            .await
            .0,
        200
    );
    assert_eq!(tp.active(), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_rollout_and_pass_promtool() {
    let (blue, _green, tp) = blue_green_proxy(ProxyConfig::new());
    let mut c = Client::connect(tp.http()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/version").await.unwrap().0, 200);
    }
    admin(tp.admin(), "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!(c.get("/api/v1/translate?phrase=nope").await.unwrap().0, 404);
    let m = tp.metrics().await;
    assert_eq!(
        metric(&m, "switchyard_requests_total{code=\"2xx\",pool=\"blue\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "switchyard_requests_total{code=\"4xx\",pool=\"green\"}"),
        1.0
    );
    assert_eq!(metric(&m, "switchyard_active_pool{pool=\"green\"}"), 1.0);
    assert_eq!(metric(&m, "switchyard_active_pool{pool=\"blue\"}"), 0.0);
    assert_eq!(metric(&m, "switchyard_switches_total{source=\"admin\"}"), 1.0);
    assert_eq!(metric(&m, "switchyard_config_generation"), 2.0);
    assert_eq!(
        metric(&m, "switchyard_request_duration_seconds_count{pool=\"blue\"}"),
        3.0
    );
    assert!(metric(&m, "switchyard_last_switch_timestamp_seconds") > 1.7e9);
    assert_eq!(
        metric(&m, "switchyard_client_connections{listener=\"http\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "switchyard_upstream_healthy{{endpoint=\"{}\",pool=\"blue\"}}",
                blue.addr()
            )
        ),
        1.0
    );

    // promtool (Debian's prometheus package) must find nothing to complain about.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (cargo xtask test installs the prometheus package)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(c);
}

#[test]
fn an_admin_listener_beyond_loopback_needs_a_token_or_allow_unauthenticated() {
    let everywhere: std::net::IpAddr = "0.0.0.0".parse().unwrap();
    let config = || {
        ProxyConfig::new()
            .admin_on(everywhere)
            .upstreams(Upstreams::blue("127.0.0.1:1"))
    };
    let files = config().write();
    let err = switchyard::Proxy::start(&files.proxy_toml)
        .err()
        .expect("refused at start");
    let msg = err.to_string();
    assert!(
        msg.contains("allow_unauthenticated") && msg.contains("token_file"),
        "{msg}"
    );
    assert!(
        matches!(err, switchyard::Error::Config(_)),
        "exit 64, like any invalid configuration"
    );
    // A token, or saying the network is trusted, lets it start.
    for files in [
        config().token("t").write(),
        config().allow_unauthenticated(true).write(),
    ] {
        let proxy = switchyard::Proxy::start(&files.proxy_toml).expect("starts");
        assert!(proxy.admin_addr().ip().is_unspecified());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_admin_body_gets_408_after_admin_body_and_changes_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_blue, _green, tp) =
        blue_green_proxy(ProxyConfig::new().admin_body(std::time::Duration::from_millis(300)));
    let mut s = tokio::net::TcpStream::connect(tp.admin()).await.unwrap();
    // A body that announces 14 bytes and sends 6 of them, then nothing.
    s.write_all(b"POST /switch HTTP/1.1\r\nhost: a\r\ncontent-length: 14\r\n\r\n{\"to\":")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("admin_body"), "{answer}");
    assert_eq!(tp.active(), "blue", "nothing was switched");
    assert_eq!(
        tp.switch("green").await["active"],
        "green",
        "the next admin request is served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_beyond_the_cap_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_blue, _green, tp) = blue_green_proxy(ProxyConfig::new());
    let healthz = b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n";
    // Answered once each, then kept open (idle keep-alive).
    let mut open = Vec::new();
    for _ in 0..switchyard::listener::ADMIN_MAX_CONNECTIONS {
        let mut s = tokio::net::TcpStream::connect(tp.admin()).await.unwrap();
        s.write_all(healthz).await.unwrap();
        testkit::http::read_until(&mut s, b"\"ok\"}").await;
        open.push(s);
    }
    // One more: closed without an answer.
    let mut extra = tokio::net::TcpStream::connect(tp.admin()).await.unwrap();
    let _ = extra.write_all(healthz).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), extra.read_to_end(&mut got))
        .await
        .expect("closed at once");
    assert!(
        read.is_err() || got.is_empty(),
        "answered beyond the cap: {got:?}"
    );
    // One closes: a new connection is served again.
    drop(open.pop());
    testkit::eventually(
        std::time::Duration::from_secs(10),
        "a free admin connection",
        || async {
            let mut s = tokio::net::TcpStream::connect(tp.admin()).await.unwrap();
            let _ = s.write_all(healthz).await;
            let mut buf = [0u8; 256];
            matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        },
    )
    .await;
}
