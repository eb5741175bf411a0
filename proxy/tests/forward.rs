//! The request path: header rules, retries, upgrades, streaming bodies.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::*;
use testkit::http::{admin, metric, read_until, Client};
use testkit::load::{assert_no_failures, Load};
use testkit::net::ClosedPort;
use testkit::upstream;
use testkit::wait_until_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy whose one pool, `blue`, is `endpoint`, configured by `config`.
fn proxy_to(endpoint: impl std::fmt::Display, config: ProxyConfig) -> TestProxy {
    TestProxy::start(config.upstreams(Upstreams::blue(endpoint)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules() {
    let tp = proxy_to(upstream::header_echo().await, ProxyConfig::new());
    let mut c = Client::connect(tp.http()).await.unwrap();
    let req = Request::get("/echo")
        .header("host", "api.example.com")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-app", "end-to-end")
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = c.send(req).await.unwrap();
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["host"], "api.example.com", "Host is passed through: {seen}");
    for hop in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            seen.get(hop).is_none(),
            "{hop} must not reach the upstream: {seen}"
        );
    }
    assert_eq!(seen["x-app"], "end-to-end");
    assert_eq!(
        seen["x-forwarded-for"], "127.0.0.1",
        "a forged X-Forwarded-For is replaced: {seen}"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "api.example.com");
    let id = seen["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32, "a request id is generated: {seen}");
    assert_eq!(headers["x-request-id"], id, "and returned");
    assert_eq!(headers["x-switchyard-pool"], "blue");
    assert_eq!(headers["x-switchyard-generation"], "1");
    assert!(
        headers.get("x-hop").is_none() && headers.get("keep-alive").is_none(),
        "{headers:?}"
    );
    assert_eq!(headers["x-end"], "kept");

    // A valid incoming request id is kept; an invalid one is replaced.
    let (_, h, body) = c
        .send(
            Request::get("/")
                .header("x-request-id", "abc-123")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (seen["x-request-id"].as_str(), h["x-request-id"].to_str().unwrap()),
        (Some("abc-123"), "abc-123")
    );
    let (_, _, body) = c
        .send(
            Request::get("/")
                .header("x-request-id", "bad id {}")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_ne!(seen["x-request-id"], "bad id {}");

    // Generated ids are unique, over more than one block of them (a core
    // makes 64 at a time), and each is 32 hex digits.
    let mut ids = std::collections::HashSet::new();
    for _ in 0..200 {
        let (_, h, _) = c.get("/").await.unwrap();
        let id = h["x-request-id"].to_str().unwrap().to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(ids.insert(id.clone()), "request id {id} given twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_extends_forwarded_for_and_expose_off_hides_headers() {
    let tp = proxy_to(
        upstream::header_echo().await,
        ProxyConfig::new()
            .expose_headers(false)
            .trusted_proxies(["127.0.0.0/8"]),
    );
    let mut c = Client::connect(tp.http()).await.unwrap();
    let (_, headers, body) = c
        .send(
            Request::get("/")
                .header("x-forwarded-for", "203.0.113.7")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert!(headers.get("x-switchyard-pool").is_none() && headers.get("x-switchyard-generation").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_endpoint_under_load_loses_no_get() {
    let blue_a = api("0.0.1");
    let blue_b = api("0.0.1");
    let green = api("0.0.2");
    let tp = TestProxy::start(
        ProxyConfig::new().upstreams(
            Upstreams::new("blue")
                .pool("blue", [blue_a.addr(), blue_b.addr()])
                .pool("green", [green.addr()]),
        ),
    );
    let load = Load::start(tp.http(), 16, "/version").await;
    load.wait_more(500).await;
    // Stop one endpoint: its idle connections close, and new connects are refused.
    drop(blue_b);
    load.wait_more(2000).await;
    let samples = load.stop().concat();
    assert_no_failures(&samples);
    assert!(
        samples
            .iter()
            .all(|s| s.pool.as_deref() == Some("blue") && s.ok_version() == Some("0.0.1")),
        "a retry never crosses to another pool"
    );
    let m = tp.metrics().await;
    assert!(
        metric(&m, "switchyard_upstream_retries_total{pool=\"blue\"}") >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_closed_by_upstream_is_not_a_failure() {
    // Each connection is closed by the upstream 30 ms after its answer,
    // while the proxy keeps it idle for reuse (no `Connection: close`).
    let up = upstream::closing();
    let tp = proxy_to(up.addr, ProxyConfig::new());
    for i in 1..=20 {
        let mut c = Client::connect(tp.http()).await.unwrap();
        let (status, _, body) = c.get("/").await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
        wait_until_async(
            Duration::from_secs(5),
            "the upstream closed the connection",
            || up.closed() >= i,
        )
        .await;
    }
    let m = tp.metrics().await;
    assert_eq!(
        metric(&m, "switchyard_requests_total{code=\"5xx\",pool=\"blue\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_connection_closed_before_an_answer_is_retried_on_a_new_one() {
    // Every reused upstream connection dies exactly when it is reused: the upstream
    // reads the second request on a connection and closes it unanswered.
    let tp = proxy_to(upstream::dies_on_reuse(), ProxyConfig::new());
    let retries = "switchyard_upstream_retries_total{pool=\"blue\"}";
    assert_eq!(metric(&tp.metrics().await, retries), 0.0);
    // One client connection: one core, so one idle upstream connection at a time.
    let mut c = Client::connect(tp.http()).await.unwrap();
    for _ in 0..20 {
        let (status, _, body) = c.get("/").await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    // The first request opened the connection; each later one found it
    // dead on reuse and was sent again on a new connection: 19 retries.
    let m = tp.metrics().await;
    assert_eq!(metric(&m, retries), 19.0, "{m}");
    assert_eq!(
        metric(&m, "switchyard_requests_total{code=\"2xx\",pool=\"blue\"}"),
        20.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connection_closed_before_an_answer_retries_a_get_on_the_next_endpoint_only() {
    let good = upstream::text("ok").await;
    let bad = upstream::vanishing();
    // Passive ejection off: the vanishing endpoint must keep getting requests.
    let upstreams = Upstreams::new("blue")
        .pool("blue", [bad, good])
        .table("[health]\neject_after = 0");
    let tp = TestProxy::start(ProxyConfig::new().upstreams(upstreams));
    // The rotation sends every other request to the vanishing endpoint first.
    let mut c = Client::connect(tp.http()).await.unwrap();
    for _ in 0..10 {
        let (status, _, body) = c.get("/").await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    let m = tp.metrics().await;
    assert!(
        metric(&m, "switchyard_upstream_retries_total{pool=\"blue\"}") >= 1.0,
        "{m}"
    );
    // A POST is not idempotent: never sent twice, so some fail.
    let mut failed = 0;
    for _ in 0..10 {
        let mut c = Client::connect(tp.http()).await.unwrap();
        let (status, _, _) = c
            .send(
                Request::post("/")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
            )
            .await
            .unwrap();
        if status == 502 {
            failed += 1;
        } else {
            assert_eq!(status, 200);
        }
    }
    assert!(
        failed >= 1,
        "a POST that reached the vanishing endpoint is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_pool_answers_json_502() {
    // A port with nothing listening (and nobody to take it meanwhile).
    let closed = ClosedPort::new();
    let dead = closed.addr();
    let tp = proxy_to(dead, ProxyConfig::new());
    let mut c = Client::connect(tp.http()).await.unwrap();
    let (status, headers, body) = c.get("/version").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errors"][0], "cannot connect to the upstream", "{v}");
    assert_eq!(v["request_id"], headers["x-request-id"].to_str().unwrap(), "{v}");
    assert!(!String::from_utf8_lossy(&body).contains(&dead.to_string()), "{v}");
    let m = tp.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_errors_total{kind=\"connect\",pool=\"blue\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_answers_json_504() {
    let up = upstream::slow("/", Duration::from_secs(5), "late").await;
    let tp = proxy_to(
        up.addr,
        ProxyConfig::new().request_timeout(Duration::from_millis(200)),
    );
    let mut c = Client::connect(tp.http()).await.unwrap();
    let (status, _, body) = c.get("/").await.unwrap();
    assert_eq!(status, 504, "{body:?}");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errors"][0], "the upstream did not answer in time", "{v}");
    assert!(
        metric(
            &tp.metrics().await,
            "switchyard_upstream_errors_total{kind=\"timeout\",pool=\"blue\"}"
        ) == 1.0
    );
}

/// Whether the proxy closes `s` within `within` (EOF or reset), reading
/// and discarding whatever arrives before.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_closes_idle_and_slow_head_connections_never_busy_ones() {
    let up = upstream::slow("/slow", Duration::from_millis(900), "done").await;
    let tp = proxy_to(
        up.addr,
        ProxyConfig::new().client_idle(Duration::from_millis(300)),
    );
    let addr = tp.http();

    // A connection that never sends anything is closed, but not at once.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    closed_after_idle(&mut silent, "a silent connection").await;

    // A request head that trickles in (slowloris) does not keep it open.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut closed = false;
    for i in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(format!("x-{i}: y\r\n").as_bytes()).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        closed || closed_within(&mut slow, Duration::from_secs(1)).await,
        "a trickled head is cut off"
    );

    // A request that takes longer than client_idle is not cut; the idle
    // time starts again after each response.
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    get_ok(&mut busy, "/slow").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        get_ok(&mut busy, "/fast").await;
    }
    closed_after_idle(&mut busy, "a connection idle after its last answer").await;
}

/// Sends `GET path` on `s` and asserts a 200 whose body is `done`.
async fn get_ok(s: &mut tokio::net::TcpStream, path: &str) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until(s, b"done").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Asserts that the proxy closes `s` (idle from now on) within 5 s, but not
/// before most of its 300 ms `client_idle`.
async fn closed_after_idle(s: &mut tokio::net::TcpStream, what: &str) {
    let t = std::time::Instant::now();
    assert!(closed_within(s, Duration::from_secs(5)).await, "{what} is closed");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{what} is closed after {:?}, before client_idle",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_relays_bytes_both_ways() {
    let tp = proxy_to(upstream::upgrade_echo(), ProxyConfig::new());
    let mut s = tokio::net::TcpStream::connect(tp.http()).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed during the handshake: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // In flight while the tunnel is open.
    wait_until_async(Duration::from_secs(5), "in-flight tunnel", || {
        tp.proxy.shared().table.load().active_pool().inflight() == 1
    })
    .await;
    for msg in [&b"ping"[..], &b"hello through the tunnel"[..]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    drop(s);
    wait_until_async(Duration::from_secs(5), "tunnel closed", || {
        tp.proxy.shared().table.load().active_pool().inflight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    // An upstream that streams the request body back as it arrives.
    let tp = proxy_to(upstream::echo().await, ProxyConfig::new());
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = Client::connect(tp.http()).await.unwrap();
    let (status, _, body) = c
        .send(
            Request::post("/upload")
                .body(Full::new(Bytes::from(data.clone())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), data.len());
    assert!(body[..] == data[..], "the body came back intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_the_answer_counts_as_499_and_leaves_no_inflight() {
    let up = upstream::slow("/", Duration::from_secs(2), "late").await;
    let tp = proxy_to(up.addr, ProxyConfig::new());
    let mut s = tokio::net::TcpStream::connect(tp.http()).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let pool = || tp.proxy.shared().table.load().active_pool().inflight();
    wait_until_async(Duration::from_secs(5), "request in flight", || pool() == 1).await;
    drop(s);
    wait_until_async(Duration::from_secs(5), "in-flight count back to 0", || {
        pool() == 0
    })
    .await;
    let m = tp.metrics().await;
    assert_eq!(
        metric(&m, "switchyard_requests_total{code=\"4xx\",pool=\"blue\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "switchyard_requests_total{code=\"1xx\",pool=\"blue\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_and_ipv6_endpoint() {
    let mut c = translation_api::Config::new("[::1]:0".parse().unwrap(), "0.0.6");
    c.workers = 1;
    let up = translation_api::spawn(c).unwrap();
    let tp = proxy_to(up.addr(), ProxyConfig::new().on("::1".parse().unwrap()));
    let proxy = &tp.proxy;
    assert!(proxy.http_addr().is_ipv6() && up.addr().is_ipv6());
    let mut client = Client::connect(proxy.http_addr()).await.unwrap();
    let (status, headers, body) = client.get("/version").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], br#"{"version":"0.0.6","errors":[]}"#);
    assert_eq!(headers["x-switchyard-pool"], "blue");
    assert_eq!(admin(proxy.admin_addr(), "GET", "/readyz", "", None).await.0, 200);
}

/// Opens `n` keep-alive connections, each answered once, and returns them
/// with the core that served each (the first 16 hex digits of a request id
/// the proxy made are its core's prefix).
async fn connections_by_core(addr: std::net::SocketAddr, n: usize) -> Vec<(String, Client)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Client::connect(addr).await.unwrap();
        let (status, headers, _) = c.get("/version").await.unwrap();
        assert_eq!(status, 200);
        let id = headers["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 32, "a request id made by the proxy: {id}");
        out.push((id[..16].to_string(), c));
    }
    out
}

fn per_core(conns: &[(String, Client)]) -> std::collections::BTreeMap<String, usize> {
    let mut n = std::collections::BTreeMap::new();
    for (core, _) in conns {
        *n.entry(core.clone()).or_insert(0) += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connections_are_spread_evenly_over_the_cores() {
    let up = api("0.0.1");
    let tp = proxy_to(up.addr(), ProxyConfig::new());
    let addr = tp.http();
    // The kernel's SO_REUSEPORT hash alone splits 100 connections 50/50
    // only about one time in twelve.
    let mut conns = connections_by_core(addr, 100).await;
    let split = per_core(&conns);
    assert_eq!(split.values().copied().collect::<Vec<_>>(), [50, 50], "{split:?}");
    // Every connection keeps working on the core that serves it.
    for (core, c) in conns.iter_mut().step_by(7) {
        let (status, headers, _) = c.get("/version").await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(&headers["x-request-id"].to_str().unwrap()[..16], core.as_str());
    }
    // Closing one core's connections uncounts them: every new connection
    // then goes to that core until the two are even again (the kernel alone
    // would send about half of them to the other core).
    let emptied = split.keys().next().unwrap().clone();
    conns.retain(|(core, _)| *core != emptied);
    let balance = &tp.proxy.shared().balance;
    wait_until_async(Duration::from_secs(5), "closed connections uncounted", || {
        (0..balance.cores()).map(|c| balance.open(c)).sum::<usize>() == 50
    })
    .await;
    let again = connections_by_core(addr, 50).await;
    assert_eq!(
        per_core(&again),
        [(emptied, 50)].into(),
        "new connections go to the emptied core"
    );
    conns.extend(again);
    assert_eq!(per_core(&conns).values().copied().collect::<Vec<_>>(), [50, 50]);
}
