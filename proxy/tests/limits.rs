//! The limits of `[limits]` and `[runtime]` (docs/security.md), on the real
//! `switchyard` binary: each test hits one limit, asserts exactly what the
//! client sees and what is counted, and that the next normal request is
//! served. Also what the process does at the limits of the machine: 5,000
//! idle keep-alive connections, and no file descriptor left.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;

use testkit::config::{ProxyConfig, Upstreams};
use testkit::http::{
    assert_json_error, exchange, head_value, metric, metrics, next_is_served, read_to_close, rejected, Client,
};
use testkit::process::{field_value, Switchyard};
use testkit::upstream;
use testkit::{eventually, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// An upstream that reads each request's whole body before answering 200
/// with the number of bytes it read, and counts the requests it saw, the
/// bodies it read whole, and the bodies that were cut before their end.
#[derive(Clone)]
struct Reader {
    addr: SocketAddr,
    seen: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

impl Reader {
    async fn start() -> Reader {
        let seen = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(AtomicUsize::new(0));
        let (s, c) = (seen.clone(), cut.clone());
        let addr = upstream::serve(move |req: Request<Incoming>| {
            let (seen, cut) = (s.clone(), c.clone());
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                match req.into_body().collect().await {
                    Ok(b) => hyper::Response::new(upstream::full(b.to_bytes().len().to_string())),
                    Err(_) => {
                        cut.fetch_add(1, Ordering::SeqCst);
                        hyper::Response::new(upstream::full("cut"))
                    }
                }
            }
        })
        .await;
        Reader { addr, seen, cut }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    fn cut(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

/// A [`Reader`] upstream, and a proxy (`config`) whose pool blue is it.
async fn behind_reader(config: ProxyConfig) -> (Reader, Switchyard) {
    let up = Reader::start().await;
    let p = Switchyard::start(BIN, config.upstreams(Upstreams::blue(up.addr)));
    (up, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_over_max_header_bytes_gets_431_counted_and_the_next_is_served() {
    let (up, mut p) = behind_reader(ProxyConfig::new().max_header_bytes("2KiB")).await;
    // Under the limit (1.5 KiB of header): served.
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-pad: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1500)
    );
    let (status, _, body) = exchange(p.http, fits.as_bytes()).await;
    assert_eq!((status, body.as_str()), (200, "0"));
    // Over it (3 KB, far below hyper's own 400 KiB): 431, closed.
    let over = format!("GET / HTTP/1.1\r\nHost: a\r\nx-pad: {}\r\n\r\n", "a".repeat(3000));
    let (status, head, _) = exchange(p.http, over.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_eq!(head_value(&head, "connection"), Some("close"), "{head}");
    assert_eq!(rejected(&metrics(p.admin).await, "head_too_large"), 1.0);
    let line = p
        .proc
        .next_line(Duration::from_secs(5), "rejecting the head", |l| {
            field_value(l, "reason") == Some("head_too_large")
        });
    assert!(line.contains("WARN") && line.contains("127.0.0.1"), "{line}");
    assert_eq!(up.seen(), 1, "the refused head never went upstream");
    next_is_served(p.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_header_lines_than_max_headers_get_431_counted_and_the_next_is_served() {
    let (up, p) = behind_reader(ProxyConfig::new().max_headers(10)).await;
    let request = |lines: usize| {
        let mut r = String::from("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n");
        for i in 0..lines - 2 {
            r.push_str(&format!("x-{i}: y\r\n"));
        }
        r + "\r\n"
    };
    let (status, _, _) = exchange(p.http, request(10).as_bytes()).await;
    assert_eq!(status, 200, "10 header lines: served");
    let (status, head, _) = exchange(p.http, request(11).as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_eq!(head_value(&head, "connection"), Some("close"), "{head}");
    assert_eq!(rejected(&metrics(p.admin).await, "head_too_large"), 1.0);
    assert_eq!(up.seen(), 1);
    next_is_served(p.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_announced_over_max_body_gets_413_before_anything_goes_upstream() {
    let (up, p) = behind_reader(ProxyConfig::new().max_body("1KiB")).await;
    // The head alone: the proxy answers without reading a byte of the body.
    let answer = exchange(
        p.http,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n",
    )
    .await;
    let v = assert_json_error(&answer, 413);
    assert_eq!(v["errors"][0], "the request body is larger than the limit");
    assert_eq!(head_value(&answer.1, "connection"), Some("close"), "{}", answer.1);
    assert_eq!(rejected(&metrics(p.admin).await, "body_too_large"), 1.0);
    assert_eq!(up.seen(), 0, "nothing was sent upstream");
    // A body at the limit is forwarded whole.
    let mut c = Client::connect(p.http).await.unwrap();
    let req = Request::post("/upload")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    let (status, _, body) = c.send(req).await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"1024"[..]));
    next_is_served(p.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_growing_past_max_body_is_cut_upstream_and_answered_413() {
    let (up, p) = behind_reader(ProxyConfig::new().max_body("1KiB")).await;
    let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    // 512 bytes: under the limit, so the request is under way upstream.
    let chunk = format!("200\r\n{}\r\n", "x".repeat(512));
    s.write_all(chunk.as_bytes()).await.unwrap();
    wait_until(Duration::from_secs(10), "the upstream got the request", || {
        up.seen() == 1
    });
    // 1,024 more: past the limit.
    s.write_all(chunk.as_bytes()).await.unwrap();
    s.write_all(chunk.as_bytes()).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("closed within 10 s");
    let answer = testkit::http::parse(&got);
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(
        answer.headers.get("connection").map(String::as_str),
        Some("close")
    );
    let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(v["errors"][0], "the request body is larger than the limit", "{v}");
    wait_until(Duration::from_secs(10), "the upstream saw its body cut", || {
        up.cut() == 1
    });
    let m = metrics(p.admin).await;
    assert_eq!(rejected(&m, "body_too_large"), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "switchyard_upstream_errors_total{kind=\"reset\",pool=\"blue\"}"
        ),
        0.0,
        "the proxy's own limit is not an upstream failure: {m}"
    );
    next_is_served(p.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_beyond_max_connections_is_closed_at_once_counted_and_room_comes_back() {
    let up = upstream::text("ok").await;
    let p = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .max_connections(5)
            .upstreams(Upstreams::blue(up)),
    );
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(p.http).await.unwrap();
        assert_eq!(c.get("/").await.unwrap().0, 200);
        open.push(c);
    }
    // The sixth: accepted by the kernel, closed by the proxy with no answer.
    let mut sixth = tokio::net::TcpStream::connect(p.http).await.unwrap();
    sixth.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.ok();
    let got = read_to_close(&mut sixth, Duration::from_secs(10))
        .await
        .expect("closed within 10 s");
    assert!(got.is_empty(), "no answer: {:?}", String::from_utf8_lossy(&got));
    let m = metrics(p.admin).await;
    assert_eq!(rejected(&m, "too_many_connections"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "switchyard_client_connections{listener=\"http\"}"),
        5.0
    );
    // One closes: a new connection is served again.
    drop(open.pop());
    eventually(
        Duration::from_secs(10),
        "the closed connection uncounted",
        || async {
            metric(
                &metrics(p.admin).await,
                "switchyard_client_connections{listener=\"http\"}",
            ) == 4.0
        },
    )
    .await;
    next_is_served(p.http).await;
    // And the five still open were never disturbed.
    for c in &mut open {
        assert_eq!(c.get("/").await.unwrap().0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_beyond_upstream_max_connections_gets_503_after_connect_and_is_served_once_one_frees() {
    let slow = upstream::slow("/slow", Duration::from_secs(2), "ok").await;
    let p = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .upstream_max_connections(1)
            .connect_timeout(Duration::from_millis(300))
            .upstreams(Upstreams::blue(slow.addr)),
    );
    let http = p.http;
    let first = tokio::spawn(async move {
        let mut c = Client::connect(http).await.unwrap();
        c.get("/slow").await.unwrap().0
    });
    wait_until(Duration::from_secs(10), "the slow request in flight", || {
        slow.received() == 1
    });
    // The one connection is busy: the second request waits `connect`, then 503.
    let answer = exchange(
        p.http,
        b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let v = assert_json_error(&answer, 503);
    assert_eq!(v["errors"][0], "no upstream connection came free in time", "{v}");
    assert_eq!(
        slow.received(),
        1,
        "the second request never reached the upstream"
    );
    let m = metrics(p.admin).await;
    assert_eq!(rejected(&m, "upstream_connection_limit"), 1.0, "{m}");
    for kind in ["connect", "timeout", "reset"] {
        let series = format!("switchyard_upstream_errors_total{{kind=\"{kind}\",pool=\"blue\"}}");
        assert_eq!(metric(&m, &series), 0.0, "not an upstream failure: {m}");
    }
    assert_eq!(first.await.unwrap(), 200);
    // The connection is free again: new requests on new connections (so on
    // either core, wherever the idle one is kept) are served.
    for _ in 0..4 {
        next_is_served(p.http).await;
    }
}

/// The `utime + stime` of a process, in clock ticks (from `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_pauses_and_recovers() {
    let up = upstream::text("ok").await;
    // 96 descriptors in all, the hard limit too: a few dozen for the
    // process itself, the rest for client connections.
    let mut p = Switchyard::start_under(
        &["prlimit", "--nofile=96:96"],
        BIN,
        ProxyConfig::new().upstreams(Upstreams::blue(up)),
    );
    let pid = p.proc.id();
    next_is_served(p.http).await;
    // Idle connections until accepting fails (more than the limit allows).
    let mut clients = Vec::new();
    for _ in 0..150 {
        clients.push(tokio::net::TcpStream::connect(p.http).await.unwrap());
    }
    p.proc
        .next_line(Duration::from_secs(10), "an accept failure", |l| {
            l.contains("accept failed") && l.contains("Too many open files")
        });
    let failures = |p: &Switchyard| p.proc.count_lines(|l| l.contains("accept failed"));
    // Over one second with accepts failing, the loop pauses after each
    // failure: little CPU, a bounded number of failures (a loop that spun
    // would burn a core and log thousands).
    let (ticks, failed) = (cpu_ticks(pid), failures(&p));
    tokio::time::sleep(Duration::from_secs(1)).await; // the period observed
    let (ticks, failed) = (cpu_ticks(pid) - ticks, failures(&p) - failed);
    assert!(
        ticks <= 30,
        "{ticks} ticks of CPU in 1 s while out of descriptors"
    );
    assert!(failed <= 100, "{failed} accept failures logged in 1 s");
    // Descriptors come back: the proxy serves again.
    drop(clients);
    eventually(
        Duration::from_secs(20),
        "a request served after recovery",
        || async {
            let Ok(mut c) = Client::connect(p.http).await else {
                return false;
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(2), c.get("/")).await,
                Ok(Ok((s, _, _))) if s == 200
            )
        },
    )
    .await;
    next_is_served(p.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: runs under cargo xtask test --long"]
async fn five_thousand_idle_keep_alive_connections_are_held_and_the_next_is_served() {
    use std::io::{Read, Write};
    const N: usize = 5000;
    // The test holds N sockets itself.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let up = upstream::text("ok").await;
    let p = Switchyard::start(BIN, ProxyConfig::new().upstreams(Upstreams::blue(up)));
    let http = p.http;
    let conns = tokio::task::spawn_blocking(move || {
        let mut conns = Vec::with_capacity(N);
        let mut buf = [0u8; 1024];
        for _ in 0..N {
            let mut s = std::net::TcpStream::connect(http).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\nok") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            conns.push(s);
        }
        conns
    })
    .await
    .unwrap();
    let m = metrics(p.admin).await;
    assert_eq!(
        metric(&m, "switchyard_client_connections{listener=\"http\"}"),
        N as f64,
        "{m}"
    );
    next_is_served(p.http).await;
    assert_eq!(rejected(&metrics(p.admin).await, "too_many_connections"), 0.0);
    drop(conns);
}

#[test]
fn cores_are_the_cpus_the_process_may_use_unless_set_and_the_open_file_limit_is_raised() {
    let cores = |p: &Switchyard| {
        let lines = p.proc.stdout_lines();
        let line = lines.iter().find(|l| l.contains("switchyard listening")).unwrap();
        field_value(line, "cores").unwrap().parse::<usize>().unwrap()
    };
    let config = || ProxyConfig::new().upstreams(Upstreams::blue("127.0.0.1:1"));
    // Allowed one CPU (the affinity mask): one core, whatever the machine has.
    let mut p = Switchyard::start_under(&["taskset", "-c", "0"], BIN, config());
    assert_eq!(cores(&p), 1);
    // Started with a low soft limit: raised to the hard one, and logged.
    let line = p
        .proc
        .next_line(Duration::from_secs(5), "the open-file limit", |l| {
            l.contains("RLIMIT_NOFILE")
        });
    drop(p);
    assert!(line.contains("INFO"), "{line}");
    let mut p = Switchyard::start_under(&["prlimit", "--nofile=256:4096"], BIN, config());
    let line = p
        .proc
        .next_line(Duration::from_secs(5), "the open-file limit", |l| {
            l.contains("RLIMIT_NOFILE")
        });
    assert_eq!(
        (
            field_value(&line, "soft"),
            field_value(&line, "hard"),
            field_value(&line, "now")
        ),
        (Some("256"), Some("4096"), Some("4096")),
        "{line}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.proc.id())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["4096", "4096"],
        "{open_files}"
    );
    // `[runtime] cores` set: that many, even beyond the CPUs allowed.
    let p = Switchyard::start_under(&["taskset", "-c", "0"], BIN, config().cores(3));
    assert_eq!(cores(&p), 3);
}
