//! Faults that must not wedge or mislead: a response that stalls (the
//! upstream stops sending, the client stops reading), a body cut by the
//! upstream, upgrades (only the listed protocols are tunnelled; tunnels are
//! counted, bounded by `tunnel_idle` and kept through the shutdown grace).
//! Each test asserts the outcome, the counts, that the pool drains, and that
//! the next request is served.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::Value;
use support::*;
use testkit::http::{metric, read_until, Client};
use testkit::net::refused;
use testkit::process::{Proc, Switchyard};
use testkit::upstream;
use testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Waits until pool `pool` in `/status` satisfies `cond`.
async fn wait_pool(tp: &TestProxy, pool: &str, what: &str, cond: impl Fn(&Value) -> bool) {
    eventually(Duration::from_secs(10), what, || async {
        cond(&tp.status().await["pools"][pool])
    })
    .await;
}

/// Waits until the series `series` reads `value` in a scrape.
async fn wait_metric(tp: &TestProxy, series: &str, value: f64) {
    eventually(
        Duration::from_secs(20),
        &format!("{series} = {value}"),
        || async { metric(&tp.metrics().await, series) == value },
    )
    .await;
}

/// Everything `s` still receives until the proxy closes it (EOF or reset);
/// `None` if it is still open after `within`.
async fn rest_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

/// Opens a tunnel (`Upgrade: websocket`) through the proxy to an
/// [`upstream::upgrade_echo`], and checks that it echoes.
async fn open_tunnel(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&read_until(&mut s, b"\r\n\r\n").await).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    echo(&mut s, b"ping").await;
    s
}

/// Sends `msg` through a tunnel to the echo upstream and reads it back.
async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("the echo within 10 s")
        .expect("the tunnel is open");
    assert_eq!(back, msg);
}

/// `GET path` on a new keep-alive connection: 200 with `body`, from `pool`.
async fn served(tp: &TestProxy, path: &str, pool: &str, body: &str) {
    let mut c = Client::connect(tp.http()).await.unwrap();
    let (code, headers, got) = c.get(path).await.unwrap();
    assert_eq!((code.as_u16(), &got[..]), (200, body.as_bytes()), "{headers:?}");
    assert_eq!(headers["x-switchyard-pool"], pool);
}

const READ_TIMEOUT: &str = "switchyard_upstream_errors_total{kind=\"read_timeout\",pool=\"blue\"}";
const TRUNCATED: &str = "switchyard_upstream_errors_total{kind=\"truncated\",pool=\"blue\"}";
const RESET: &str = "switchyard_upstream_errors_total{kind=\"reset\",pool=\"blue\"}";
const SEND_TIMEOUT: &str = "switchyard_rejected_total{reason=\"send_timeout\"}";
const TUNNEL_IDLE: &str = "switchyard_rejected_total{reason=\"tunnel_idle\"}";
const BLUE_2XX: &str = "switchyard_requests_total{code=\"2xx\",pool=\"blue\"}";
const BLUE_4XX: &str = "switchyard_requests_total{code=\"4xx\",pool=\"blue\"}";
const BLUE_5XX: &str = "switchyard_requests_total{code=\"5xx\",pool=\"blue\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stalling_mid_body_is_cut_after_upstream_read_counted_and_drained() {
    let up = upstream::faulty();
    let green = upstream::text("green").await;
    let tp = TestProxy::start(
        ProxyConfig::new()
            .upstream_read(Duration::from_millis(300))
            .upstreams(Upstreams::blue_green("blue", up.addr, green)),
    );
    // `Content-Length: 100`, 5 bytes, then nothing.
    let mut s = TcpStream::connect(tp.http()).await.unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until(&mut s, b"hello").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Switched away while it stalls: blue has it in flight, not drained.
    tp.switch("green").await;
    let st = tp.status().await;
    assert_eq!(
        (&st["pools"]["blue"]["inflight"], &st["pools"]["blue"]["drained"]),
        (&Value::from(1), &Value::from(false)),
        "{st}"
    );
    // Cut: the client's connection ends with no byte more (the client sees
    // 5 of the 100 bytes announced), and the upstream's is closed too.
    let rest = rest_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(rest.as_deref(), Some(&b""[..]), "the client connection is closed");
    eventually(
        Duration::from_secs(10),
        "the upstream connection closed",
        || async { up.ended() == 1 },
    )
    .await;
    wait_metric(&tp, READ_TIMEOUT, 1.0).await;
    let m = tp.metrics().await;
    assert_eq!(
        (metric(&m, BLUE_2XX), metric(&m, BLUE_5XX), metric(&m, RESET)),
        (0.0, 1.0, 0.0),
        "{m}"
    );
    wait_pool(&tp, "blue", "blue drained", |p| {
        p["drained"] == true && p["inflight"] == 0
    })
    .await;
    // The next requests are served, on green and back on blue.
    served(&tp, "/", "green", "green").await;
    tp.switch("blue").await;
    served(&tp, "/ok", "blue", "ok").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_not_reading_a_large_answer_is_cut_after_send_counted_and_drained() {
    let up = upstream::faulty();
    let green = upstream::text("green").await;
    let tp = TestProxy::start(
        ProxyConfig::new()
            .send_timeout(Duration::from_millis(300))
            .upstreams(Upstreams::blue_green("blue", up.addr, green)),
    );
    // 1 GiB announced, and the client never reads a byte of it.
    let mut s = TcpStream::connect(tp.http()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_pool(&tp, "blue", "the download in flight", |p| p["inflight"] == 1).await;
    tp.switch("green").await;
    assert_eq!(tp.status().await["pools"]["blue"]["drained"], false);
    // Once nothing could be written to the client for `send`: cut, counted,
    // the upstream connection closed, blue drained.
    wait_metric(&tp, SEND_TIMEOUT, 1.0).await;
    eventually(
        Duration::from_secs(10),
        "the upstream connection closed",
        || async { up.ended() == 1 },
    )
    .await;
    wait_pool(&tp, "blue", "blue drained", |p| {
        p["drained"] == true && p["inflight"] == 0
    })
    .await;
    let m = tp.metrics().await;
    assert_eq!(
        (
            metric(&m, BLUE_2XX),
            metric(&m, BLUE_4XX),
            metric(&m, READ_TIMEOUT)
        ),
        (0.0, 1.0, 0.0),
        "{m}"
    );
    // The client's connection is closed: reading now gets what was in
    // flight, then its end, far short of the 1 GiB announced.
    let rest = rest_until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("the client connection is closed");
    assert!(rest.len() < 1 << 30, "{} bytes", rest.len());
    served(&tp, "/", "green", "green").await;
    tp.switch("blue").await;
    served(&tp, "/ok", "blue", "ok").await;
}

/// Asserts that `got` (all a client received before the connection ended)
/// is no complete answer: nothing, or a head whose body falls short.
fn assert_incomplete(got: &[u8], what: &str) {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return;
    };
    let head = head.to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{what}: {text:?}");
    if head.contains("content-length: 100") {
        assert!(
            body.len() < 100,
            "{what}: a short body framed as complete: {text:?}"
        );
    } else {
        assert!(head.contains("transfer-encoding: chunked"), "{what}: {text:?}");
        assert!(
            !body.ends_with("0\r\n\r\n"),
            "{what}: a cut chunked body framed as complete: {text:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_cut_by_the_upstream_counts_truncated_and_the_client_sees_the_end() {
    let up = upstream::faulty();
    let tp = TestProxy::start(ProxyConfig::new().upstreams(Upstreams::blue(up.addr)));
    for (n, path) in [(1, "/cut"), (2, "/cut-chunked")] {
        let mut s = TcpStream::connect(tp.http()).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // A keep-alive connection: only its end tells the client the answer
        // was cut, so it must end.
        let got = rest_until_closed(&mut s, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("{path}: the client connection is closed"));
        assert_incomplete(&got, path);
        wait_metric(&tp, TRUNCATED, f64::from(n)).await;
    }
    let m = tp.metrics().await;
    assert_eq!(
        (metric(&m, BLUE_2XX), metric(&m, BLUE_5XX), metric(&m, RESET)),
        (0.0, 2.0, 0.0),
        "a cut answer is not a clean 2xx: {m}"
    );
    wait_pool(&tp, "blue", "nothing in flight", |p| p["inflight"] == 0).await;
    served(&tp, "/ok", "blue", "ok").await;
    wait_metric(&tp, BLUE_2XX, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_upgrade_is_forwarded_plain_and_the_pool_drains() {
    // An upstream that would accept any upgrade.
    let tp = TestProxy::start(ProxyConfig::new().upstreams(Upstreams::blue_green(
        "blue",
        upstream::upgrade_echo(),
        upstream::text("green").await,
    )));
    let mut c = Client::connect(tp.http()).await.unwrap();
    let (code, _, body) = c
        .send(
            Request::get("/x")
                .header("connection", "Upgrade")
                .header("upgrade", "foo")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "a plain answer, no 101: {seen}");
    assert!(seen.starts_with("get /x http/1.1"), "{seen}");
    assert!(!seen.contains("upgrade"), "the upstream sees no Upgrade: {seen}");
    // Nothing stays open: after switching away, blue drains.
    tp.switch("green").await;
    wait_pool(&tp, "blue", "blue drained", |p| {
        p["drained"] == true && p["inflight"] == 0 && p["tunnels"] == 0
    })
    .await;
    let (code, headers, body) = c.get("/").await.unwrap();
    assert_eq!((code.as_u16(), &body[..]), (200, &b"green"[..]));
    assert_eq!(headers["x-switchyard-pool"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_counts_in_status_and_closes_after_tunnel_idle() {
    let idle = Duration::from_millis(500);
    let tp = TestProxy::start(
        ProxyConfig::new()
            .tunnel_idle(idle)
            .request_timeout(Duration::from_millis(200))
            .upstreams(Upstreams::blue_green(
                "blue",
                upstream::upgrade_echo(),
                upstream::text("green").await,
            )),
    );
    let mut s = open_tunnel(tp.http()).await;
    let st = tp.status().await;
    assert_eq!(
        (&st["pools"]["blue"]["tunnels"], &st["pools"]["blue"]["inflight"]),
        (&Value::from(1), &Value::from(1)),
        "{st}"
    );
    // A tunnel that carries bytes is never cut, for longer than
    // `tunnel_idle` and `request` together: the slow traffic (a message every
    // 150 ms) is the behaviour under test.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        echo(&mut s, format!("message {i}").as_bytes()).await;
    }
    assert_eq!(metric(&tp.metrics().await, TUNNEL_IDLE), 0.0);
    // Silent from now on: closed, both sides, and counted.
    let rest = rest_until_closed(&mut s, Duration::from_secs(10)).await;
    assert_eq!(rest.as_deref(), Some(&b""[..]), "the idle tunnel is closed");
    wait_metric(&tp, TUNNEL_IDLE, 1.0).await;
    wait_pool(&tp, "blue", "the tunnel uncounted", |p| {
        p["tunnels"] == 0 && p["inflight"] == 0
    })
    .await;
    tp.switch("green").await;
    assert_eq!(tp.status().await["pools"]["blue"]["drained"], true);
    served(&tp, "/", "green", "green").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_is_kept_through_the_shutdown_grace_then_closed() {
    let tp = TestProxy::start(
        ProxyConfig::new()
            .shutdown_timeout(Duration::from_secs(3))
            .upstreams(Upstreams::blue(upstream::upgrade_echo())),
    );
    let addr = tp.http();
    let mut s = open_tunnel(addr).await;
    wait_pool(&tp, "blue", "one tunnel", |p| p["tunnels"] == 1).await;
    let TestProxy { proxy, files } = tp;
    let stopping = tokio::task::spawn_blocking(move || proxy.shutdown());
    // The listener is closed: the proxy is in its grace. The tunnel still
    // carries bytes both ways.
    eventually(Duration::from_secs(10), "the listener closes", || async {
        refused(addr)
    })
    .await;
    echo(&mut s, b"still open during the grace").await;
    // Then the grace ends, the tunnel is closed, and the shutdown completes.
    let rest = rest_until_closed(&mut s, Duration::from_secs(20)).await;
    assert_eq!(
        rest.as_deref(),
        Some(&b""[..]),
        "the tunnel is closed after the grace"
    );
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the shutdown completes")
        .unwrap();
    drop(files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_marks_a_truncated_answer() {
    let up = upstream::faulty();
    let Switchyard { proc, http, .. } = Switchyard::start(
        env!("CARGO_BIN_EXE_switchyard"),
        ProxyConfig::new()
            .access_log(true)
            .upstreams(Upstreams::blue(up.addr)),
    );
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /cut HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    rest_until_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the client connection is closed");
    let line = |p: &Proc| {
        p.stdout_lines()
            .into_iter()
            .find(|l| l.contains("switchyard::access") && l.contains("path=/cut"))
    };
    eventually(Duration::from_secs(10), "the access line of /cut", || async {
        line(&proc).is_some()
    })
    .await;
    let l = line(&proc).unwrap();
    assert!(
        l.contains("status=200") && l.contains("truncated=true") && l.contains("cut=\"truncated\""),
        "{l}"
    );
    // The next request is served, and its line is not marked.
    let mut c = Client::connect(http).await.unwrap();
    let (code, _, body) = c.get("/ok").await.unwrap();
    assert_eq!((code.as_u16(), &body[..]), (200, &b"ok"[..]));
    eventually(Duration::from_secs(10), "the access line of /ok", || async {
        proc.stdout_lines()
            .iter()
            .any(|l| l.contains("path=/ok") && l.contains("truncated=false"))
    })
    .await;
}
