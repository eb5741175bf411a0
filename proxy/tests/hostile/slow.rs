//! Clients that hold a connection without making progress: a request head
//! trickled in (slowloris), a request body trickled in, and a client that
//! never reads a 1 GiB answer. The trickling (a byte every 50 ms) is the
//! behaviour under test; every wait is on the connection's end, a counter
//! or `/status`.

use std::time::Duration;

use testkit::config::{ProxyConfig, Upstreams};
use testkit::http::{metric, read_answer, read_to_close, Client};
use testkit::process::Switchyard;
use testkit::upstream::{self, End};
use testkit::wait::eventually;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{upstream_errors, Edge, BIN};

/// Writes `bytes` to `s`'s write half one at a time, one every 50 ms, in a
/// task, until they are all sent or the proxy closed the connection.
fn trickle(s: TcpStream, bytes: Vec<u8>) -> (tokio::net::tcp::OwnedReadHalf, tokio::task::JoinHandle<usize>) {
    let (read, mut write) = s.into_split();
    let task = tokio::spawn(async move {
        let mut sent = 0;
        for b in bytes {
            if write.write_all(&[b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    });
    (read, task)
}

/// Waits until the read half sees the connection end (EOF or reset), and
/// returns what it received before; panics if it is still open after 10 s.
async fn closed(read: &mut tokio::net::tcp::OwnedReadHalf, what: &str) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the proxy closes the connection within 10 s"));
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_closed_after_client_idle_and_never_forwarded() {
    let edge = Edge::start(ProxyConfig::new().client_idle(Duration::from_millis(500)));
    let before = edge.rejected().await;
    // 200 bytes at a byte every 50 ms: 10 s, far past `client_idle`, and
    // never the end of the head.
    let head: Vec<u8> = [
        &b"GET /slowloris HTTP/1.1\r\nHost: a\r\nX-Pad: "[..],
        &[b'a'; 160],
    ]
    .concat();

    // On a new connection.
    let s = TcpStream::connect(edge.http()).await.unwrap();
    let (mut read, writer) = trickle(s, head.clone());
    let got = closed(&mut read, "a head trickling on a new connection").await;
    assert_eq!(got, b"", "closed with no answer");
    let sent = writer.await.unwrap();
    assert!(
        sent < head.len(),
        "closed before the head was complete ({sent} bytes)"
    );

    // On a keep-alive connection, after a request it served.
    let mut s = TcpStream::connect(edge.http()).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut s).await.unwrap();
    assert_eq!(first.status, 200);
    let (mut read, writer) = trickle(s, head.clone());
    let got = closed(&mut read, "a head trickling after a first request").await;
    assert_eq!(got, b"", "closed with no answer");
    assert!(writer.await.unwrap() < head.len());

    // Nothing of the trickled heads reached the upstream; nothing counted.
    let seen = edge.upstream.requests();
    assert_eq!(
        seen.iter().map(|r| r.line.as_str()).collect::<Vec<_>>(),
        ["GET /first HTTP/1.1"],
        "{seen:?}"
    );
    assert_eq!(edge.rejected().await, before, "a trickled head is not counted");
    edge.next_is_served("after slowloris").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_after_request_as_the_clients_fault_and_the_upstream_copy_is_cut() {
    let edge = Edge::start(ProxyConfig::new().request_timeout(Duration::from_millis(500)));
    let before = edge.rejected().await;
    // `Content-Length: 100`, 10 bytes at once, then the other 90 at a byte
    // every 50 ms (4.5 s, past `request`): the upstream (which answers a
    // request once its body is whole) waits for the client, which is late.
    let mut s = TcpStream::connect(edge.http()).await.unwrap();
    s.write_all(b"POST /slow-body HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let (mut read, writer) = trickle(s, vec![b'x'; 90]);
    let got = closed(&mut read, "a body trickling").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert!(text.contains("the request body did not arrive in time"), "{text}");
    assert!(writer.await.unwrap() < 90, "closed before the body was complete");

    // The upstream's copy: the head and part of the body, then its
    // connection closed by the proxy; never a complete request.
    let seen = edge.upstream_saw(0, 1, "the cut request").await;
    assert_eq!(
        (seen[0].line.as_str(), &seen[0].end),
        ("POST /slow-body HTTP/1.1", &End::Cut),
        "{seen:?}"
    );
    // The client's fault: `rejected_total{reason="body_timeout"}` and a 4xx
    // on the pool, never an upstream error (nor an ejection input).
    edge.wait_rejected(before, Some("body_timeout"), "a trickled body")
        .await;
    eventually(Duration::from_secs(10), "the 408 counted as a 4xx", || async {
        let m = edge.metrics().await;
        metric(&m, "switchyard_requests_total{code=\"4xx\",pool=\"blue\"}") == 1.0
    })
    .await;
    let m = edge.metrics().await;
    assert_eq!(upstream_errors(&m), 0.0, "{m}");
    assert_eq!(
        metric(&m, "switchyard_requests_total{code=\"5xx\",pool=\"blue\"}"),
        0.0,
        "{m}"
    );
    edge.next_is_served("after a slow body").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_behind_a_whole_body_is_still_the_upstreams_504() {
    // The body arrives whole at once; the upstream then takes longer than
    // `request`: the upstream's fault, as before.
    let slow = upstream::slow("/slow", Duration::from_secs(30), "late").await;
    let sy = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .request_timeout(Duration::from_millis(500))
            .upstreams(Upstreams::blue(slow.addr)),
    );
    let (status, _, body) = testkit::http::exchange(
        sy.http,
        b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("the upstream did not answer in time"), "{body}");
    let (_, m) = testkit::http::get_text(sy.admin, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_errors_total{kind=\"timeout\",pool=\"blue\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "switchyard_rejected_total{reason=\"body_timeout\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_1_gib_is_cut_after_send_and_the_upstream_released() {
    // An upstream that announces 1 GiB and writes it as fast as it is taken.
    let up = upstream::faulty();
    let Switchyard {
        proc: _proc,
        files: _files,
        http,
        admin,
        ..
    } = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .send_timeout(Duration::from_millis(300))
            .upstreams(Upstreams::blue(up.addr)),
    );
    let metrics = || async move { testkit::http::get_text(admin, "/metrics").await.1 };
    let status = || async move { testkit::http::admin(admin, "GET", "/status", "", None).await.1 };
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    // It never reads: once nothing could be written to it for `send`, the
    // proxy closes both connections and counts it.
    eventually(Duration::from_secs(20), "send_timeout counted", || async {
        metric(
            &metrics().await,
            "switchyard_rejected_total{reason=\"send_timeout\"}",
        ) == 1.0
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the upstream connection closed",
        || async { up.ended() == 1 },
    )
    .await;
    eventually(Duration::from_secs(10), "nothing in flight on blue", || async {
        status().await["pools"]["blue"]["inflight"] == 0
    })
    .await;
    let m = metrics().await;
    assert_eq!(
        (
            metric(&m, "switchyard_requests_total{code=\"4xx\",pool=\"blue\"}"),
            metric(&m, "switchyard_requests_total{code=\"2xx\",pool=\"blue\"}"),
        ),
        (1.0, 0.0),
        "{m}"
    );
    // What reached the client's socket buffers, then the end: far short of
    // the 1 GiB announced.
    let rest = read_to_close(&mut s, Duration::from_secs(20))
        .await
        .expect("the client connection is closed");
    assert!(rest.starts_with(b"HTTP/1.1 200"), "the head came first");
    assert!(rest.len() < 1 << 30, "{} bytes", rest.len());
    // The next request, on a fresh connection, is served.
    let mut c = Client::connect(http).await.unwrap();
    let (code, _, body) = c.get("/ok").await.unwrap();
    assert_eq!((code.as_u16(), &body[..]), (200, &b"ok"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_is_no_upstream_error_and_the_upstream_copy_is_cut() {
    let edge = Edge::start(ProxyConfig::new());
    let before = edge.rejected().await;
    let mut s = TcpStream::connect(edge.http()).await.unwrap();
    s.write_all(b"POST /gone HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // The head and the first bytes reach the upstream; then the client
    // goes away.
    eventually(
        Duration::from_secs(10),
        "the request under way upstream",
        || async { edge.upstream.connections() == 1 },
    )
    .await;
    drop(s);
    let seen = edge.upstream_saw(0, 1, "the cut request").await;
    assert_eq!(
        (seen[0].line.as_str(), &seen[0].end),
        ("POST /gone HTTP/1.1", &End::Cut),
        "{seen:?}"
    );
    // The client's doing: a 4xx on the pool, no upstream error, no refusal.
    eventually(Duration::from_secs(10), "the request counted", || async {
        metric(
            &edge.metrics().await,
            "switchyard_requests_total{code=\"4xx\",pool=\"blue\"}",
        ) == 1.0
    })
    .await;
    let m = edge.metrics().await;
    assert_eq!(upstream_errors(&m), 0.0, "{m}");
    assert_eq!(edge.rejected().await, before);
    eventually(Duration::from_secs(10), "nothing in flight", || async {
        edge.status().await["pools"]["blue"]["inflight"] == 0
    })
    .await;
    edge.next_is_served("after a client gone mid-body").await;
}
