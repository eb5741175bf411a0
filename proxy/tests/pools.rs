//! Pools of pods, with the real binary: DNS discovery from the test kit's
//! DNS server on loopback (records added, removed, a name server away, a
//! name gone), even spreading, active health checks, passive ejection
//! within `max_ejected_percent`, and the panic rule. Each waits on
//! `/status` or a metric, never on a fixed sleep.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use testkit::config::ProxyConfig;
use testkit::dns::DnsServer;
use testkit::http::{admin, exchange, get_text, head_value, metric, Client};
use testkit::net::ClosedPort;
use testkit::process::Switchyard;
use testkit::upstream::Pod;
use testkit::wait::eventually;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const ZONE: &str = "pods.test.";
const WITHIN: Duration = Duration::from_secs(15);

async fn status(sy: &Switchyard) -> Value {
    testkit::http::status(sy.admin).await
}

/// `(address, health)` of each endpoint of `pool` in a `/status` document.
fn endpoints(st: &Value, pool: &str) -> Vec<(String, String)> {
    st["pools"][pool]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["health"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `switchyard_upstream_healthy` of the endpoint `addr` of pool blue in a
/// scrape (0 when the series is absent).
fn healthy_in_blue(metrics: &str, addr: SocketAddr) -> f64 {
    metric(
        metrics,
        &format!("switchyard_upstream_healthy{{endpoint=\"{addr}\",pool=\"blue\"}}"),
    )
}

fn addrs(st: &Value, pool: &str) -> Vec<String> {
    endpoints(st, pool).into_iter().map(|(a, _)| a).collect()
}

/// Waits until `/status` satisfies `cond`.
async fn wait_status(sy: &Switchyard, what: &str, cond: impl Fn(&Value) -> bool) {
    testkit::http::wait_status(sy.admin, WITHIN, what, cond).await;
}

/// Waits until a scrape satisfies `cond`.
async fn wait_metrics(sy: &Switchyard, what: &str, cond: impl Fn(&str) -> bool) {
    eventually(WITHIN, what, || async {
        let (code, text) = get_text(sy.admin, "/metrics").await;
        code == 200 && cond(&text)
    })
    .await;
}

/// `n` GETs of `/` over one keep-alive connection: each status and body.
async fn gets(proxy: SocketAddr, n: usize) -> Vec<(u16, String)> {
    let mut c = Client::connect(proxy).await.unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, _, body) = c.get("/").await.unwrap();
        out.push((status.as_u16(), String::from_utf8_lossy(&body).into_owned()));
    }
    out
}

/// A pod on 127.0.0.1, on a free port.
async fn pod() -> Pod {
    Pod::start("127.0.0.1:0".parse().unwrap()).await
}

/// An upstreams file: pool blue, active, of `pods`, then `rest`.
fn blue_of(pods: &[Pod], rest: &str) -> String {
    blue_at(pods.iter().map(|p| p.addr), rest)
}

/// An upstreams file: pool blue, active, of the endpoints `addrs`, then `rest`.
fn blue_at(addrs: impl IntoIterator<Item = SocketAddr>, rest: &str) -> String {
    let list: Vec<String> = addrs.into_iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "active = \"blue\"\n[pools.blue]\nendpoints = [{}]\n{rest}",
        list.join(", ")
    )
}

/// `[health]` with passive ejection: `eject_after` failures in a row eject
/// an endpoint for an hour, with `max_ejected_percent` when given.
fn ejecting(after: u32, max_percent: Option<u32>) -> String {
    let mut health = format!("[health]\neject_after = {after}\neject_for = \"1h\"\n");
    if let Some(max) = max_percent {
        health.push_str(&format!("max_ejected_percent = {max}\n"));
    }
    health
}

/// `GET /hold` through the proxy in a task: a `Pod` holds its answer
/// until released.
fn hold(proxy: SocketAddr) -> tokio::task::JoinHandle<testkit::http::Answer> {
    tokio::spawn(async move { Client::connect(proxy).await.unwrap().get("/hold").await.unwrap() })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn discovery(dns: &DnsServer) -> String {
    format!(
        "[discovery]\nevery = \"100ms\"\nnameservers = [\"{}\"]\n",
        dns.addr()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_adds_and_removes_endpoints_without_a_new_generation() {
    let (dns, a, b, sy) = a_dns_pool().await;

    // Resolved before serving: the first status and request already have it.
    let st = status(&sy).await;
    let generation = st["generation"].as_u64().unwrap();
    assert_eq!(endpoints(&st, "blue"), [(a.addr.to_string(), "unknown".into())]);
    assert_eq!(gets(sy.http, 1).await, [(200, a.addr.to_string())]);

    // A request held on `a` while the records change under it.
    let held = hold(sy.http);
    testkit::wait_until_async(WITHIN, "the held request reaches a", || a.served() == 2).await;

    // Scaled up: b appears, and gets traffic; the generation stays.
    dns.set("blue", &[a.addr.ip(), b.addr.ip()], 1).await;
    let both = vec![a.addr.to_string(), b.addr.to_string()];
    wait_status(&sy, "b discovered", |st| addrs(st, "blue") == both).await;
    let answers = gets(sy.http, 20).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert!(
        answers.iter().any(|(_, body)| *body == b.addr.to_string()),
        "the new endpoint serves: {answers:?}"
    );

    // a goes away: no new request reaches it, its held request completes.
    dns.set("blue", &[b.addr.ip()], 1).await;
    wait_status(&sy, "a removed", |st| addrs(st, "blue") == [b.addr.to_string()]).await;
    let before = a.served();
    let answers = gets(sy.http, 20).await;
    assert!(
        answers.iter().all(|a| *a == (200, b.addr.to_string())),
        "{answers:?}"
    );
    assert_eq!(a.served(), before, "a removed endpoint gets no new request");
    a.release();
    let (code, _, body) = held.await.unwrap();
    assert_eq!((code.as_u16(), &body[..]), (200, a.addr.to_string().as_bytes()));

    let st = status(&sy).await;
    assert_eq!(
        st["generation"].as_u64(),
        Some(generation),
        "addresses are not intent"
    );
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(
        healthy_in_blue(&m, a.addr),
        0.0,
        "the removed endpoint's series is deleted"
    );
    assert!(!m.contains(&format!("endpoint=\"{}\"", a.addr)), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_resolution_keeps_the_addresses_and_an_empty_answer_empties_the_pool() {
    let dns = DnsServer::start(ZONE).await;
    let blue = pod().await;
    let green = Pod::start("127.0.0.2:0".parse().unwrap()).await;
    dns.set("green", &[green.addr.ip()], 1).await;
    let text = format!(
        "active = \"blue\"\n[pools.blue]\nendpoints = [\"{}\"]\n[pools.green]\ndns = \"green.{ZONE}:{}\"\n{}",
        blue.addr,
        green.addr.port(),
        discovery(&dns)
    );
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
    let g = vec![green.addr.to_string()];
    assert_eq!(addrs(&status(&sy).await, "green"), g);

    // The name server goes away: the last good set stays, counted and shown.
    let dns_addr = dns.addr();
    drop(dns);
    wait_metrics(&sy, "discovery errors counted", |m| {
        metric(m, "switchyard_discovery_errors_total{pool=\"green\"}") >= 1.0
    })
    .await;
    let st = status(&sy).await;
    assert_eq!(addrs(&st, "green"), g, "{st}");
    let error = st["pools"]["green"]["discovery_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains(&format!("green.{ZONE}")), "{st}");
    assert!(st["pools"]["blue"]["discovery_error"].is_null(), "{st}");

    // It comes back: the error clears.
    let dns = DnsServer::start_at(ZONE, Some(dns_addr)).await;
    dns.set("green", &[green.addr.ip()], 1).await;
    wait_status(&sy, "the error clears", |st| {
        st["pools"]["green"]["discovery_error"].is_null()
    })
    .await;

    // The Deployment scaled to zero (NXDOMAIN): the inactive pool empties,
    // which is valid; blue serves on.
    dns.set("green", &[], 1).await;
    wait_status(&sy, "green emptied", |st| addrs(st, "green").is_empty()).await;
    assert!(gets(sy.http, 5).await.iter().all(|(s, _)| *s == 200));
    let st = status(&sy).await;
    assert!(st["pools"]["green"]["discovery_error"].is_null(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_pool_without_an_address_answers_503_at_once() {
    let dns = DnsServer::start(ZONE).await;
    let text = format!(
        "active = \"green\"\n[pools.green]\ndns = \"green.{ZONE}:8080\"\n{}",
        discovery(&dns)
    );
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
    let st = status(&sy).await;
    assert!(addrs(&st, "green").is_empty(), "{st}");
    let mut c = Client::connect(sy.http).await.unwrap();
    let (code, _, body) = c.get("/").await.unwrap();
    assert_eq!(code.as_u16(), 503);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0], "no upstream endpoint is available", "{json}");
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_errors_total{kind=\"connect\",pool=\"green\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_equal_endpoints_each_get_a_third_of_10000_requests() {
    let pods = [pod().await, pod().await, pod().await];
    let text = blue_of(&pods, "");
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
    // Four keep-alive clients at once (over the proxy's two cores), 2,500
    // requests each.
    let clients: Vec<_> = (0..4).map(|_| tokio::spawn(gets(sy.http, 2_500))).collect();
    for c in clients {
        let answers = c.await.unwrap();
        let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).take(5).collect();
        assert!(failed.is_empty(), "{failed:?}");
    }
    let served: Vec<usize> = pods.iter().map(Pod::served).collect();
    eprintln!("requests served per endpoint: {served:?}");
    assert_eq!(served.iter().sum::<usize>(), 10_000, "{served:?}");
    // Each 33 ± 5 %: "first address that accepts" (10,000, 0, 0) or a skew
    // to one endpoint fails it.
    for n in &served {
        let share = *n as f64 / 10_000.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.05,
            "each endpoint's share within 33 ± 5 %: {served:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_checks_is_skipped_and_comes_back() {
    let pods = [pod().await, pod().await, pod().await];
    let text = blue_of(
        &pods,
        "[health]\npath = \"/readyz\"\ninterval = \"100ms\"\nhealthy_after = 2\nunhealthy_after = 2\n",
    );
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
    let all_healthy = |st: &Value| endpoints(st, "blue").iter().all(|(_, h)| h == "healthy");
    wait_status(&sy, "every endpoint healthy", all_healthy).await;

    let sick = &pods[1];
    sick.set_ready(false);
    wait_status(&sy, "the failing endpoint unhealthy", |st| {
        endpoints(st, "blue")[1].1 == "unhealthy"
    })
    .await;
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(healthy_in_blue(&m, sick.addr), 0.0);
    assert_eq!(
        metric(&m, "switchyard_pool_endpoints{pool=\"blue\",state=\"unhealthy\"}"),
        1.0
    );
    let before = sick.served();
    assert!(gets(sy.http, 30).await.iter().all(|(s, _)| *s == 200));
    assert_eq!(sick.served(), before, "an unhealthy endpoint gets no request");

    sick.set_ready(true);
    wait_status(&sy, "healthy again after healthy_after passes", all_healthy).await;
    assert!(gets(sy.http, 30).await.iter().all(|(s, _)| *s == 200));
    assert!(sick.served() > before, "it serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_connect_failures_within_max_ejected_percent() {
    let a = pod().await;
    let b = pod().await;
    let (c, d) = (ClosedPort::new(), ClosedPort::new());
    // Four endpoints, at most 25 % ejected: one of the two dead ones.
    let text = blue_at([a.addr, c.addr(), b.addr, d.addr()], &ejecting(2, Some(25)));
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
    let answers = gets(sy.http, 40).await;
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "connect failures are retried on another endpoint: {answers:?}"
    );
    wait_status(&sy, "one dead endpoint ejected", |st| {
        endpoints(st, "blue")
            .iter()
            .filter(|(_, h)| h == "ejected")
            .count()
            == 1
    })
    .await;
    // More failures on the other dead one never eject it: 25 % is the cap.
    assert!(gets(sy.http, 40).await.iter().all(|(s, _)| *s == 200));
    let st = status(&sy).await;
    let eps = endpoints(&st, "blue");
    let health: Vec<&str> = eps.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(health.iter().filter(|h| **h == "ejected").count(), 1, "{st}");
    assert_eq!(health[0], "unknown", "{st}");
    assert_eq!(health[2], "unknown", "{st}");
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(
        metric(&m, "switchyard_pool_endpoints{pool=\"blue\",state=\"ejected\"}"),
        1.0
    );
    assert!(a.served() + b.served() >= 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_fails_its_checks_the_pool_panics_and_still_serves() {
    let pods = [pod().await, pod().await];
    for p in &pods {
        p.set_ready(false);
    }
    let text = format!(
        "active = \"blue\"\n[pools.blue]\nendpoints = [\"{}\", \"{}\"]\n[health]\npath = \"/readyz\"\ninterval = \"100ms\"\nunhealthy_after = 1\n",
        pods[0].addr, pods[1].addr
    );
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
    wait_status(&sy, "every endpoint unhealthy, panic", |st| {
        endpoints(st, "blue").iter().all(|(_, h)| h == "unhealthy") && st["pools"]["blue"]["panic"] == true
    })
    .await;
    let answers = gets(sy.http, 20).await;
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "a wrong check is not an outage: {answers:?}"
    );
    assert!(pods.iter().all(|p| p.served() > 0), "both are used");
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(metric(&m, "switchyard_pool_panic{pool=\"blue\"}"), 1.0);
    // One recovers: the panic ends, and only it is used.
    pods[0].set_ready(true);
    wait_status(&sy, "panic over", |st| st["pools"]["blue"]["panic"] == false).await;
    let before = pods[1].served();
    assert!(gets(sy.http, 10).await.iter().all(|(s, _)| *s == 200));
    assert_eq!(pods[1].served(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_endpoint_is_ejected_after_its_connects_time_out() {
    let good = pod().await;
    let hole = testkit::net::Blackhole::new();
    let text = blue_at([hole.addr(), good.addr], &ejecting(2, None));
    let sy = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .connect_timeout(Duration::from_millis(200))
            .upstreams_text(&text),
    );
    // Requests that try the blackhole first wait out the connect timeout,
    // then are retried on the good endpoint: none fails.
    let answers = gets(sy.http, 6).await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    wait_status(&sy, "the blackholed endpoint ejected", |st| {
        endpoints(st, "blue")[0] == (hole.addr().to_string(), "ejected".to_string())
    })
    .await;
    let (_, m) = get_text(sy.admin, "/metrics").await;
    let connect_errors = metric(
        &m,
        "switchyard_upstream_errors_total{kind=\"connect\",pool=\"blue\"}",
    );
    assert!(connect_errors >= 2.0, "{m}");
    // From now on nothing waits on it: no new connect error.
    assert!(gets(sy.http, 20).await.iter().all(|(s, _)| *s == 200));
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_errors_total{kind=\"connect\",pool=\"blue\"}"
        ),
        connect_errors
    );
}

/// Pool blue by `dns` from the test kit's DNS server, whose name answers
/// pod `a` (127.0.0.2) only; pod `b` listens on the same port at 127.0.0.3,
/// not in the records yet. Discovery every 100 ms.
async fn a_dns_pool() -> (DnsServer, Pod, Pod, Switchyard) {
    let dns = DnsServer::start(ZONE).await;
    let a = Pod::start("127.0.0.2:0".parse().unwrap()).await;
    let port = a.addr.port();
    let b = Pod::start(SocketAddr::new(ip("127.0.0.3"), port)).await;
    dns.set("blue", &[a.addr.ip()], 1).await;
    let text = format!(
        "active = \"blue\"\n[pools.blue]\ndns = \"blue.{ZONE}:{port}\"\n{}",
        discovery(&dns)
    );
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&text));
    (dns, a, b, sy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_added_under_load_appear_in_status_then_serve_and_fail_nothing() {
    let (dns, a, b, sy) = a_dns_pool().await;
    let load = testkit::load::Load::start(sy.http, 4, "/version").await;
    load.wait_more(200).await;
    assert_eq!(b.served(), 0, "not in the records: no request");

    // Scaled up under load: b appears in `/status`, then serves.
    dns.set("blue", &[a.addr.ip(), b.addr.ip()], 1).await;
    let both = vec![a.addr.to_string(), b.addr.to_string()];
    wait_status(&sy, "b in /status", |st| addrs(st, "blue") == both).await;
    testkit::wait_until_async(WITHIN, "b serves", || b.served() > 0).await;
    // And takes its share of what follows (least in flight: about half;
    // a quarter cannot flake, and "never the new one" fails it).
    let (a0, b0) = (a.served(), b.served());
    load.wait_more(400).await;
    let (da, db) = (a.served() - a0, b.served() - b0);
    assert!(
        db * 4 >= da + db,
        "b's share of the later requests: a {da}, b {db}"
    );

    let samples: Vec<_> = load.stop().concat();
    testkit::load::assert_no_failures(&samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_removed_under_load_let_in_flight_requests_finish_and_fail_nothing() {
    let (dns, a, b, sy) = a_dns_pool().await;
    let load = testkit::load::Load::start(sy.http, 4, "/version").await;

    // A slow request in flight on a (the pool's only endpoint yet): the
    // pod holds its answer until released.
    let held = hold(sy.http);
    testkit::wait_until_async(WITHIN, "the slow request in flight on a", || a.holding() == 1).await;
    dns.set("blue", &[a.addr.ip(), b.addr.ip()], 1).await;
    let both = vec![a.addr.to_string(), b.addr.to_string()];
    wait_status(&sy, "b in /status", |st| addrs(st, "blue") == both).await;
    testkit::wait_until_async(WITHIN, "b serves", || b.served() > 0).await;

    // a leaves the records, under load, with its slow request in flight.
    dns.set("blue", &[b.addr.ip()], 1).await;
    wait_status(&sy, "a removed", |st| addrs(st, "blue") == [b.addr.to_string()]).await;
    // Load requests that chose a before it went finish too; then none
    // reaches it.
    load.wait_more(50).await;
    let before = a.served();
    load.wait_more(400).await;
    assert_eq!(a.served(), before, "a removed endpoint gets no new request");

    // The slow request is still in flight on a, and completes.
    assert_eq!(a.holding(), 1, "the slow request still in flight on a");
    assert!(!held.is_finished());
    a.release();
    let (code, _, body) = held.await.unwrap();
    assert_eq!(
        (code.as_u16(), &body[..]),
        (200, a.addr.to_string().as_bytes()),
        "the request in flight on the removed endpoint completes"
    );
    assert_eq!(a.served(), before, "and still nothing new reached a");

    let samples: Vec<_> = load.stop().concat();
    testkit::load::assert_no_failures(&samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_stalls_mid_body_is_ejected_after_eject_after() {
    // The head and 5 bytes of 100, then nothing: cut after `upstream_read`.
    ejected_after_two_bodies_it_breaks("/stall", "read_timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_cuts_its_bodies_is_ejected_after_eject_after() {
    // The head and 5 bytes of 100, then the connection closed.
    ejected_after_two_bodies_it_breaks("/cut", "truncated").await;
}

/// Pool blue of a `faulty` upstream, whose answers to `path` break after
/// the head, and a good pod, with `eject_after = 2`: GETs of `path` until
/// two went to the faulty one (each counted as `upstream_errors_total
/// {kind}`; after the first it is still routed to), which is then ejected
/// and gets no more requests.
async fn ejected_after_two_bodies_it_breaks(path: &str, kind: &str) {
    let faulty = testkit::upstream::faulty();
    let good = pod().await;
    let text = blue_at([faulty.addr, good.addr], &ejecting(2, Some(50)));
    let sy = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .upstream_read(Duration::from_millis(300))
            .upstreams_text(&text),
    );
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let series = format!("switchyard_upstream_errors_total{{kind=\"{kind}\",pool=\"blue\"}}");
    let errors = |m: &str| metric(m, &series);
    let breaking = faulty.addr.to_string();
    let health = |st: &Value| {
        endpoints(st, "blue")
            .into_iter()
            .find(|(a, _)| *a == breaking)
            .unwrap()
            .1
    };

    // Requests until two broke on it (each head was passed on: only the
    // body breaks).
    let mut broken = 0;
    for _ in 0..40 {
        let (code, _, body) = exchange(sy.http, request.as_bytes()).await;
        assert_eq!(code, 200, "{body}");
        if body == good.addr.to_string() {
            continue;
        }
        assert_eq!(body, "hello", "cut after 5 bytes of 100");
        broken += 1;
        wait_metrics(&sy, "the broken body counted", |m| errors(m) == f64::from(broken)).await;
        if broken == 2 {
            break;
        }
        // One is not `eject_after` in a row: still routed to.
        assert_eq!(health(&status(&sy).await), "unknown");
    }
    assert_eq!(broken, 2, "two requests broke on it");
    wait_status(&sy, "the faulty endpoint ejected", |st| health(st) == "ejected").await;

    // From now on every request goes to the good endpoint, whole.
    for _ in 0..10 {
        let (code, _, body) = exchange(sy.http, request.as_bytes()).await;
        assert_eq!((code, body), (200, good.addr.to_string()));
    }
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(errors(&m), 2.0, "{m}");
    assert_eq!(
        metric(&m, "switchyard_pool_endpoints{pool=\"blue\",state=\"ejected\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_503_at_upstream_max_connections_is_no_ejection_input() {
    let pods = [pod().await, pod().await];
    // `eject_after = 1`: one failure counted against either would eject it.
    let text = blue_of(&pods, &ejecting(1, Some(50)));
    // One core: its least-in-flight choice puts the two held requests on
    // the two endpoints.
    let sy = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .cores(1)
            .upstream_max_connections(1)
            .connect_timeout(Duration::from_millis(300))
            .upstreams_text(&text),
    );
    let held = [hold(sy.http), hold(sy.http)];
    testkit::wait_until_async(WITHIN, "a request held on each endpoint", || {
        pods.iter().all(|p| p.holding() == 1)
    })
    .await;

    // Each endpoint at its one connection: the proxy's own 503, twice.
    for _ in 0..2 {
        let (code, _, body) = Client::connect(sy.http).await.unwrap().get("/x").await.unwrap();
        assert_eq!(code.as_u16(), 503, "{body:?}");
        let json: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["errors"][0], "no upstream connection came free in time",
            "{json}"
        );
    }
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "switchyard_rejected_total{reason=\"upstream_connection_limit\"}"
        ),
        2.0,
        "{m}"
    );
    let st = status(&sy).await;
    assert!(endpoints(&st, "blue").iter().all(|(_, h)| h == "unknown"), "{st}");

    // The held requests complete; the pool serves on, nothing ejected.
    for p in &pods {
        p.release();
    }
    for h in held {
        assert_eq!(h.await.unwrap().0.as_u16(), 200);
    }
    assert!(gets(sy.http, 4).await.iter().all(|(s, _)| *s == 200));
    let st = status(&sy).await;
    assert!(endpoints(&st, "blue").iter().all(|(_, h)| h == "unknown"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_body_that_stops_arriving_is_the_clients_408_and_no_ejection_input() {
    // Upstreams that answer once a request's body is whole.
    let (r1, r2) = (testkit::upstream::recorder(), testkit::upstream::recorder());
    // `eject_after = 1`: one failure counted against either would eject it.
    let text = blue_at([r1.addr, r2.addr], &ejecting(1, Some(50)));
    let sy = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .request_timeout(Duration::from_millis(500))
            .upstreams_text(&text),
    );
    // 10 bytes of an announced 100, then nothing more: past `request`.
    const STOPS: &[u8] = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789";
    for _ in 0..4 {
        let (code, head, body) = exchange(sy.http, STOPS).await;
        assert_eq!(code, 408, "{head}{body}");
        assert_eq!(head_value(&head, "connection"), Some("close"), "{head}");
        assert!(body.contains("the request body did not arrive in time"), "{body}");
    }
    let (_, m) = get_text(sy.admin, "/metrics").await;
    assert_eq!(
        metric(&m, "switchyard_rejected_total{reason=\"body_timeout\"}"),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_errors_total{kind=\"timeout\",pool=\"blue\"}"
        ),
        0.0,
        "{m}"
    );
    // Both endpoints got some of them, and neither counts a failure.
    testkit::wait_until_async(WITHIN, "the upstreams saw the cut requests", || {
        r1.requests().len() + r2.requests().len() == 4
    })
    .await;
    assert!(!r1.requests().is_empty() && !r2.requests().is_empty());
    let st = status(&sy).await;
    assert!(endpoints(&st, "blue").iter().all(|(_, h)| h == "unknown"), "{st}");
    assert!(gets(sy.http, 2).await.iter().all(|(s, _)| *s == 200));
    let st = status(&sy).await;
    assert!(endpoints(&st, "blue").iter().all(|(_, h)| h == "unknown"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_counts_healthy_endpoints_and_a_pending_switch_applies_when_checks_pass() {
    let blue = pod().await;
    let green = pod().await;
    green.set_ready(false);
    let file = |active: &str| {
        format!(
            "active = \"{active}\"\n[pools.blue]\nendpoints = [\"{}\"]\n[pools.green]\nendpoints = [\"{}\"]\n[health]\npath = \"/readyz\"\ninterval = \"100ms\"\nhealthy_after = 2\nunhealthy_after = 1\n",
            blue.addr, green.addr
        )
    };
    let sy = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&file("blue")));
    wait_status(&sy, "blue healthy, green unhealthy", |st| {
        endpoints(st, "blue")[0].1 == "healthy" && endpoints(st, "green")[0].1 == "unhealthy"
    })
    .await;
    // An endpoint that fails its checks does not count for the gate.
    let (code, body) = admin(sy.admin, "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["errors"][0], "green: 0 of 1 endpoints healthy, needs 1",
        "{body}"
    );

    // The file asks for green: pending until green passes its checks.
    sy.files.rename_upstreams(&file("green"));
    wait_status(&sy, "the file switch pending", |st| !st["pending"].is_null()).await;
    assert_eq!(status(&sy).await["active"], "blue");
    green.set_ready(true);
    wait_status(&sy, "green active by itself", |st| st["active"] == "green").await;
    let st = status(&sy).await;
    assert!(st["pending"].is_null(), "{st}");
    assert_eq!(endpoints(&st, "green")[0].1, "healthy", "{st}");
    assert_eq!(gets(sy.http, 1).await, [(200, green.addr.to_string())]);
}
