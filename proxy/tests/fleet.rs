//! Many replicas, one decision, with the real binary: the metrics an alert
//! compares replicas by (`admin_override`, `file_active`), the drain you can
//! wait for (`POST /switch` with `"wait":"drained"`, `drain_seconds`,
//! `drained_at`), and the `switchyard switch` / `switchyard status`
//! command lines over several processes.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;
use testkit::http::{admin, metric, metrics, status, Client};
use testkit::process::Switchyard;
use testkit::upstream;
use testkit::wait::eventually;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WITHIN: Duration = Duration::from_secs(10);

/// Waits until `/status` satisfies `cond`; returns that document.
async fn wait_status(admin_addr: SocketAddr, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    testkit::http::wait_status(admin_addr, WITHIN, what, cond).await
}

/// A proxy whose blue pool answers `/slow` after `delay` (green at once).
async fn slow_blue(delay: Duration) -> (Switchyard, upstream::Slow) {
    let blue = upstream::slow("/slow", delay, "blue").await;
    let green = upstream::text("green").await;
    let sy = Switchyard::start(
        BIN,
        ProxyConfig::new().upstreams(Upstreams::blue_green("blue", blue.addr, green)),
    );
    (sy, blue)
}

/// Sends `GET /slow` through the proxy in a task that records, when its
/// answer is complete, the next number of `order`.
fn slow_request(http: SocketAddr, order: Arc<AtomicUsize>) -> tokio::task::JoinHandle<(u16, usize)> {
    tokio::spawn(async move {
        let mut c = Client::connect(http).await.unwrap();
        let (code, _, body) = c.get("/slow").await.unwrap();
        assert_eq!(&body[..], b"blue");
        (code.as_u16(), order.fetch_add(1, Ordering::SeqCst))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_and_file_active_metrics_follow_the_switches() {
    let (sy, blue) = slow_blue(Duration::from_secs(1)).await;
    let m = metrics(sy.admin).await;
    assert_eq!(metric(&m, "switchyard_admin_override"), 0.0, "{m}");
    assert_eq!(metric(&m, "switchyard_file_active{pool=\"blue\"}"), 1.0, "{m}");
    assert!(m.contains("switchyard_file_active{pool=\"green\"} 0"), "{m}");
    // At start, the inactive pool is drained since then.
    let st = status(sy.admin).await;
    assert!(st["pools"]["green"]["drained_at"].is_string(), "{st}");
    assert!(st["pools"]["blue"]["drained_at"].is_null(), "{st}");

    let (code, out) = admin(sy.admin, "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!(code, 200, "{out}");
    let m = metrics(sy.admin).await;
    assert_eq!(metric(&m, "switchyard_admin_override"), 1.0, "{m}");
    // The file still says blue: the override is not durable.
    assert_eq!(metric(&m, "switchyard_file_active{pool=\"blue\"}"), 1.0, "{m}");
    assert!(m.contains("switchyard_file_active{pool=\"green\"} 0"), "{m}");
    // Blue had nothing in flight: drained at once, and the drain observed.
    let st = wait_status(sy.admin, "blue drained_at", |s| {
        s["pools"]["blue"]["drained_at"].is_string()
    })
    .await;
    assert!(st["pools"]["green"]["drained_at"].is_null(), "{st}");
    let m = metrics(sy.admin).await;
    assert_eq!(metric(&m, "switchyard_drain_seconds_count"), 1.0, "{m}");

    // The file names green too: the override is cleared, both agree.
    sy.files
        .rename_upstreams(&Upstreams::blue_green("green", blue.addr, "127.0.0.1:1").to_string());
    eventually(WITHIN, "the override cleared by the file", || async {
        let m = metrics(sy.admin).await;
        metric(&m, "switchyard_admin_override") == 0.0
            && metric(&m, "switchyard_file_active{pool=\"green\"}") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_that_waits_for_the_drain_answers_after_the_slow_request() {
    // Blue holds `/hold` until released, so the order is known without a
    // clock: the release happens before blue answers, which happens before
    // the proxy finishes the request, which is what the drain waits for.
    let blue = upstream::Pod::start("127.0.0.1:0".parse().unwrap()).await;
    let green = upstream::text("green").await;
    let sy = Switchyard::start(
        BIN,
        ProxyConfig::new().upstreams(Upstreams::blue_green("blue", blue.addr, green)),
    );
    let http = sy.http;
    let slow = tokio::spawn(async move {
        let mut c = Client::connect(http).await.unwrap();
        c.get("/hold").await.unwrap()
    });
    testkit::wait_until_async(WITHIN, "the slow request held at blue", || blue.holding() == 1).await;
    wait_status(sy.admin, "the slow request in flight on blue", |s| {
        s["pools"]["blue"]["inflight"] == 1
    })
    .await;

    let order = Arc::new(AtomicUsize::new(0));
    let (admin_addr, switch_order) = (sy.admin, order.clone());
    let switch = tokio::spawn(async move {
        let answer = admin(
            admin_addr,
            "POST",
            "/switch",
            r#"{"to":"green","wait":"drained","timeout":"30s"}"#,
            None,
        )
        .await;
        (answer, switch_order.fetch_add(1, Ordering::SeqCst))
    });
    // The switch is applied at once; its answer waits for blue to drain.
    wait_status(sy.admin, "green active", |s| s["active"] == "green").await;
    assert!(
        !switch.is_finished(),
        "the switch answered with a request in flight on blue"
    );
    let released = order.fetch_add(1, Ordering::SeqCst);
    blue.release();
    let ((code, out), answered) = switch.await.unwrap();
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        (out["changed"].as_bool(), out["active"].as_str()),
        (Some(true), Some("green")),
        "{out}"
    );
    assert!(out["drain_ms"].is_u64(), "{out}");
    assert!(
        released < answered,
        "the switch answered before blue was released"
    );
    let (slow_code, _, slow_body) = slow.await.unwrap();
    assert_eq!(
        (slow_code.as_u16(), &slow_body[..]),
        (200, blue.addr.to_string().as_bytes())
    );
    let st = status(sy.admin).await;
    assert_eq!(st["pools"]["blue"]["drained"], true, "{st}");
    // drained_at and drain_seconds are recorded by the writer's next look
    // (within a few ms).
    wait_status(sy.admin, "blue drained_at", |s| {
        s["pools"]["blue"]["drained_at"].is_string()
    })
    .await;
    let m = metrics(sy.admin).await;
    assert_eq!(metric(&m, "switchyard_drain_seconds_count"), 1.0, "{m}");

    // Asked again: nothing left to drain, the answer comes at once.
    let (code, out) = admin(
        sy.admin,
        "POST",
        "/switch",
        r#"{"to":"green","wait":"drained"}"#,
        None,
    )
    .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        (out["changed"].as_bool(), out["drain_ms"].is_u64()),
        (Some(false), true),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_timeout_is_504_and_the_switch_stays() {
    let (sy, _blue) = slow_blue(Duration::from_secs(20)).await;
    let _slow = slow_request(sy.http, Arc::new(AtomicUsize::new(0)));
    wait_status(sy.admin, "the slow request in flight on blue", |s| {
        s["pools"]["blue"]["inflight"] == 1
    })
    .await;
    let (code, out) = admin(
        sy.admin,
        "POST",
        "/switch",
        r#"{"to":"green","wait":"drained","timeout":"200ms"}"#,
        None,
    )
    .await;
    assert_eq!(code, 504, "{out}");
    assert_eq!(
        (out["changed"].as_bool(), out["active"].as_str()),
        (Some(true), Some("green")),
        "{out}"
    );
    assert_eq!(out["inflight"]["blue"], 1, "{out}");
    assert!(
        out["errors"][0]
            .as_str()
            .unwrap()
            .contains("the switch to green stays"),
        "{out}"
    );
    let st = status(sy.admin).await;
    assert_eq!(
        (st["active"].as_str(), &st["pools"]["blue"]["drained"]),
        (Some("green"), &Value::Bool(false)),
        "{st}"
    );
    assert!(st["pools"]["blue"]["drained_at"].is_null(), "{st}");

    // Bad waits are refused and change nothing.
    for (body, says) in [
        (r#"{"to":"blue","wait":"soon"}"#, "`wait` must be \"drained\""),
        (
            r#"{"to":"blue","wait":"drained","timeout":"1h"}"#,
            "from 1ms to 5m",
        ),
    ] {
        let (code, out) = admin(sy.admin, "POST", "/switch", body, None).await;
        assert_eq!(code, 400, "{out}");
        assert!(out["errors"][0].as_str().unwrap().contains(says), "{out}");
    }
    assert_eq!(status(sy.admin).await["active"], "green");
}

/// `switchyard ARGS...`: exit code and stdout (stderr appended on failure).
async fn cli(args: &[String]) -> (i32, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    (out.status.code().unwrap_or(-1), text)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The arguments that find the replicas behind the DNS name `target`
/// (`NAME:PORT`), asking the name server `server`.
fn over_dns(target: &str, server: &str) -> Vec<String> {
    args(&["--admin-dns", target, "--dns-server", server])
}

/// `switchyard <list>` over the replicas behind `target` ([`over_dns`]).
async fn cli_dns(list: &[&str], target: &str, server: &str) -> (i32, String) {
    let mut a = args(list);
    a.extend(over_dns(target, server));
    cli(&a).await
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// A replica on blue of `blue` and `green`, its admin listener on `admin` (or port 0).
async fn replica(blue: SocketAddr, green: SocketAddr, admin_at: Option<SocketAddr>) -> Switchyard {
    let mut c = ProxyConfig::new().upstreams(Upstreams::blue_green("blue", blue, green));
    if let Some(a) = admin_at {
        c = c.admin_addr(a);
    }
    Switchyard::start(BIN, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_switches_three_replicas_through_admin_urls_and_rolls_back_a_partial_switch() {
    let (blue, green) = (upstream::text("blue").await, upstream::text("green").await);
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(replica(blue, green, None).await);
    }
    let urls: Vec<String> = fleet.iter().map(|s| url(s.admin)).collect();
    let mut a = args(&["switch", "green", "--json", "--admin"]);
    a.extend(urls.iter().cloned());
    let (code, out) = cli(&a).await;
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["agree"], true, "{out}");
    for row in report["replicas"].as_array().unwrap() {
        assert_eq!(
            (
                row["before"].as_str(),
                row["after"].as_str(),
                row["state"].as_str()
            ),
            (Some("blue"), Some("green"), Some("switched")),
            "{out}"
        );
    }
    for s in &fleet {
        assert_eq!(status(s.admin).await["active"], "green");
    }
    let mut st = args(&["status", "--admin"]);
    st.extend(urls.iter().cloned());
    let (code, out) = cli(&st).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("agree: every replica serves green"), "{out}");

    // One replica stopped: the switch back names it and exits non-zero;
    // --rollback-on-partial puts the two that switched back on green.
    let mut gone = fleet.pop().unwrap();
    gone.proc.signal("KILL");
    gone.proc.wait_exit(WITHIN);
    let mut a = args(&[
        "switch",
        "blue",
        "--timeout",
        "1s",
        "--rollback-on-partial",
        "--admin",
    ]);
    a.extend(urls.iter().cloned());
    let (code, out) = cli(&a).await;
    assert_ne!(code, 0, "{out}");
    let dead_line = out.lines().find(|l| l.starts_with(&urls[2])).unwrap_or_default();
    assert!(dead_line.contains("unreachable"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("rolled back")).count(),
        2,
        "{out}"
    );
    assert!(out.contains("DISAGREE"), "{out}");
    for s in &fleet {
        assert_eq!(status(s.admin).await["active"], "green", "rolled back");
    }
    let (code, out) = cli(&st).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("UNREACHABLE") && out.contains("DISAGREE"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_replicas_by_dns_and_skips_those_whose_file_names_the_pool() {
    const NAME: &str = "switchyard-admin.default.svc.cluster.local.";
    let (blue, green) = (upstream::text("blue").await, upstream::text("green").await);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ips: Vec<std::net::IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|i| i.parse().unwrap())
        .collect();
    let mut fleet = Vec::new();
    for ip in &ips {
        fleet.push(replica(blue, green, Some(SocketAddr::new(*ip, port))).await);
    }
    let dns = testkit::dns::DnsServer::start("default.svc.cluster.local.").await;
    dns.set(NAME, &ips, 1).await;
    let target = format!("{NAME}:{port}");
    let server = dns.addr().to_string();

    // Replica 1: its file names green, but an emergency switch holds blue.
    fleet[0]
        .files
        .rename_upstreams(&Upstreams::blue_green("green", blue, green).to_string());
    wait_status(fleet[0].admin, "replica 1 on green by its file", |s| {
        s["active"] == "green"
    })
    .await;
    let (code, out) = admin(fleet[0].admin, "POST", "/switch", r#"{"to":"blue"}"#, None).await;
    assert_eq!(code, 200, "{out}");

    let (code, out) = cli_dns(
        &["switch", "green", "--if-file-differs", "--wait", "drained"],
        &target,
        &server,
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let line = |ip: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("http://{ip}:{port}")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line("127.0.0.1").contains("skipped") && line("127.0.0.1").contains("it serves blue"),
        "{out}"
    );
    for ip in ["127.0.0.2", "127.0.0.3"] {
        assert!(
            line(ip).contains("switched") && line(ip).contains("drained in"),
            "{out}"
        );
    }
    assert_eq!(
        status(fleet[0].admin).await["active"],
        "blue",
        "the override stays"
    );

    // status over the name: replica 1 disagrees.
    let (code, out) = cli_dns(&["status", "--json"], &target, &server).await;
    assert_ne!(code, 0, "{out}");
    let f: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (f["agree"].as_bool(), f["replicas"].as_array().unwrap().len()),
        (Some(false), 3),
        "{out}"
    );
    // --expect (what `helm test` runs): they do not all serve green.
    let (code, out) = cli_dns(&["status", "--expect", "green"], &target, &server).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("expected green: NO"), "{out}");

    // Without --if-file-differs all three switch and agree.
    let (code, out) = cli_dns(&["switch", "green"], &target, &server).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("agree: every replica serves green"), "{out}");
    let (code, out) = cli_dns(&["status"], &target, &server).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("agree: every replica serves green"), "{out}");
    // --expect: agreeing is not enough, it must be the pool expected.
    for (pool, want_code, verdict) in [
        ("green", 0, "expected green: yes"),
        ("blue", 1, "expected blue: NO"),
    ] {
        let (code, out) = cli_dns(&["status", "--expect", pool], &target, &server).await;
        assert_eq!(code, want_code, "{out}");
        assert!(out.contains(verdict), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_waits_for_the_name_to_have_an_address() {
    use tokio::io::AsyncBufReadExt;
    const NAME: &str = "switchyard-admin.default.svc.cluster.local.";
    let (blue, green) = (upstream::text("blue").await, upstream::text("green").await);
    let sy = replica(blue, green, None).await;
    let dns = testkit::dns::DnsServer::start("default.svc.cluster.local.").await;
    // The hook before the pods have addresses: the name has none yet.
    let mut child = tokio::process::Command::new(BIN)
        .args(args(&["switch", "green", "--timeout", "30s"]))
        .args(over_dns(
            &format!("{NAME}:{}", sy.admin.port()),
            &dns.addr().to_string(),
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting = tokio::time::timeout(WITHIN, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("waiting for a replica") {
                return line;
            }
        }
        panic!("stderr closed without the waiting line");
    })
    .await
    .expect("the CLI says it waits for the name");
    assert!(waiting.contains(NAME.trim_end_matches('.')), "{waiting}");
    // The pod gets its address: the same command goes on and switches it.
    dns.set(NAME, &[sy.admin.ip()], 1).await;
    let out = tokio::time::timeout(WITHIN, child.wait_with_output())
        .await
        .expect("the CLI ends once the replica switched")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("agree: every replica serves green"), "{text}");
    assert_eq!(status(sy.admin).await["active"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_switched_by_someone_else_between_status_and_post_is_reread() {
    use http_body_util::BodyExt;
    let (blue, green) = (upstream::text("blue").await, upstream::text("green").await);
    let (a, b) = (replica(blue, green, None).await, replica(blue, green, None).await);
    // In front of replica b's admin API: before the first POST reaches it,
    // someone else switches b to green (so the CLI's if_generation is stale).
    let posts = Arc::new(AtomicUsize::new(0));
    let real = b.admin;
    let seen = posts.clone();
    let front = upstream::serve(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let (method, path) = (req.method().to_string(), req.uri().to_string());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if method == "POST" && seen.fetch_add(1, Ordering::SeqCst) == 0 {
                let (code, _) = admin(real, "POST", "/switch", r#"{"to":"green"}"#, None).await;
                assert_eq!(code, 200);
            }
            let (code, json) = admin(real, &method, &path, std::str::from_utf8(&body).unwrap(), None).await;
            let mut r = http::Response::new(upstream::full(json.to_string()));
            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
            r
        }
    })
    .await;
    let (code, out) = cli(&args(&[
        "switch",
        "green",
        "--json",
        "--admin",
        &url(a.admin),
        &url(front),
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        posts.load(Ordering::SeqCst),
        2,
        "the stale post, then one with the new generation"
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let rows = report["replicas"].as_array().unwrap();
    assert_eq!(rows[0]["state"], "switched", "{out}");
    assert_eq!(
        (
            rows[1]["before"].as_str(),
            rows[1]["after"].as_str(),
            rows[1]["state"].as_str()
        ),
        (Some("blue"), Some("green"), Some("already")),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_pool_is_not_ready_or_which_wants_a_token_is_named_with_its_reason() {
    let (blue, green) = (upstream::text("blue").await, upstream::text("green").await);
    // green needs 2 healthy endpoints of 1: never ready.
    let not_ready = Switchyard::start(
        BIN,
        ProxyConfig::new().upstreams(Upstreams::blue_green("blue", blue, green).min_healthy("green", 2)),
    );
    let tokened = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .token("s3cret")
            .upstreams(Upstreams::blue_green("blue", blue, green)),
    );
    let (code, out) = cli(&args(&[
        "switch",
        "green",
        "--timeout",
        "500ms",
        "--admin",
        &url(not_ready.admin),
        &url(tokened.admin),
    ]))
    .await;
    assert_ne!(code, 0, "{out}");
    let line = |a: SocketAddr| {
        out.lines()
            .find(|l| l.starts_with(&url(a)))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line(not_ready.admin).contains("refused: 409 green: 1 of 1 endpoints healthy, needs 2"),
        "{out}"
    );
    assert!(line(tokened.admin).contains("refused: 401"), "{out}");
    // With the token and --force, both switch.
    let token = tokened.files.dir.path().join("token");
    let (code, out) = cli(&args(&[
        "switch",
        "green",
        "--force",
        "--token-file",
        token.to_str().unwrap(),
        "--admin",
        &url(not_ready.admin),
        &url(tokened.admin),
    ]))
    .await;
    assert_eq!(code, 0, "{out}");
}
