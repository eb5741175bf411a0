//! What the proxy refuses, rewrites and says itself: the request header
//! rules (Host, `Connection`, `CONNECT`, client-sent forwarding headers,
//! `X-Forwarded-For` of a trusted peer, `Proxy-Authenticate`), its own error
//! answers (a generic message and the request id, the details in the log),
//! and the requests hyper's parser rejects (answered, counted, logged).
//! Each test also checks that the next normal request is served.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use support::*;
use testkit::http::{admin, assert_json_error, exchange, head_value, next_is_served, rejected, Client};
use testkit::net::ClosedPort;
use testkit::process::{field_value, Proc, Switchyard};
use testkit::upstream;

/// An upstream that answers each request with what it received, as JSON:
/// `method`, `uri` (the request target as sent), `headers` (every line, in
/// order, duplicates kept) and `body_len`; it counts the requests.
#[derive(Clone)]
struct Seen {
    addr: SocketAddr,
    received: Arc<AtomicUsize>,
}

impl Seen {
    async fn start() -> Seen {
        let received = Arc::new(AtomicUsize::new(0));
        let counter = received.clone();
        let addr = upstream::serve(move |req: Request<Incoming>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let headers: Vec<(String, String)> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                let v = serde_json::json!({
                    "method": parts.method.as_str(),
                    "uri": parts.uri.to_string(),
                    "headers": headers,
                    "body_len": body.len(),
                });
                Response::builder()
                    .header("proxy-authenticate", "Basic realm=\"upstream\"")
                    .header("content-type", "application/json")
                    .body(upstream::full(v.to_string()))
                    .unwrap()
            }
        })
        .await;
        Seen { addr, received }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

/// Every value of header `name` the upstream saw, in order.
fn seen_values(seen: &serde_json::Value, name: &str) -> Vec<String> {
    seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == name)
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

/// Asserts the proxy's JSON error ([`assert_json_error`]) with the
/// connection closed after it. Returns the body.
fn assert_refusal(answer: &(u16, String, String), status: u16) -> serde_json::Value {
    assert_eq!(head_value(&answer.1, "connection"), Some("close"), "{}", answer.1);
    assert_json_error(answer, status)
}

fn proxy_to(endpoint: SocketAddr, config: ProxyConfig) -> TestProxy {
    TestProxy::start(config.upstreams(Upstreams::blue(endpoint)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_replaces_host() {
    let up = Seen::start().await;
    let tp = proxy_to(up.addr, ProxyConfig::new());
    let (status, _, body) = exchange(
        tp.http(),
        b"GET http://evil.example/x?q=1 HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen_values(&seen, "host"), ["evil.example"], "{seen}");
    assert_eq!(seen_values(&seen, "x-forwarded-host"), ["evil.example"], "{seen}");
    assert_eq!(seen["uri"], "/x?q=1", "the upstream gets the origin form: {seen}");
    // A port in the target is part of the new Host.
    let (status, _, body) = exchange(
        tp.http(),
        b"GET http://evil.example:8080 HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen_values(&seen, "host"), ["evil.example:8080"], "{seen}");
    assert_eq!(seen["uri"], "/", "{seen}");
    next_is_served(tp.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_get_400() {
    let up = Seen::start().await;
    let tp = proxy_to(up.addr, ProxyConfig::new());
    let answer = exchange(
        tp.http(),
        b"GET / HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    let v = assert_refusal(&answer, 400);
    assert_eq!(v["error"], "Bad Request", "{v}");
    assert_eq!(up.received(), 0, "never forwarded");
    assert_eq!(rejected(&tp.metrics().await, "bad_request"), 1.0);
    next_is_served(tp.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_gets_400_on_http_1_1_and_is_served_on_http_1_0() {
    let up = Seen::start().await;
    let tp = proxy_to(up.addr, ProxyConfig::new());
    let answer = exchange(tp.http(), b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_refusal(&answer, 400);
    assert_eq!(up.received(), 0, "never forwarded");
    assert_eq!(rejected(&tp.metrics().await, "bad_request"), 1.0);

    let (status, _, body) = exchange(tp.http(), b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200, "HTTP/1.0 may omit Host: {body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["uri"], "/old", "{seen}");
    assert_eq!(up.received(), 1);
    next_is_served(tp.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_host_or_content_length() {
    let up = Seen::start().await;
    let tp = proxy_to(up.addr, ProxyConfig::new());
    let (status, _, body) = exchange(
        tp.http(),
        b"POST /p HTTP/1.1\r\nHost: good.example\r\nContent-Length: 5\r\nX-Hop: 1\r\n\
          Connection: close, host, content-length, transfer-encoding, x-hop\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen_values(&seen, "host"), ["good.example"], "{seen}");
    assert_eq!(seen_values(&seen, "content-length"), ["5"], "{seen}");
    assert_eq!(seen["body_len"], 5, "{seen}");
    assert!(
        seen_values(&seen, "x-hop").is_empty(),
        "other named headers still go: {seen}"
    );
    next_is_served(tp.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_gets_405() {
    let up = Seen::start().await;
    let tp = proxy_to(up.addr, ProxyConfig::new());
    let answer = exchange(
        tp.http(),
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    )
    .await;
    let v = assert_refusal(&answer, 405);
    assert_eq!(v["error"], "Method Not Allowed", "{v}");
    assert_eq!(up.received(), 0, "never forwarded");
    let m = tp.metrics().await;
    assert_eq!(rejected(&m, "method_not_allowed"), 1.0, "{m}");
    next_is_served(tp.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_forwarded_and_x_real_ip_are_removed() {
    let up = Seen::start().await;
    // Even from a trusted peer: the proxy does not write these, so it does
    // not pass on what a client claims in them.
    for trusted in [false, true] {
        let config = if trusted {
            ProxyConfig::new().trusted_proxies(["127.0.0.0/8"])
        } else {
            ProxyConfig::new()
        };
        let tp = proxy_to(up.addr, config);
        let (status, _, body) = exchange(
            tp.http(),
            b"GET / HTTP/1.1\r\nHost: a.example\r\nForwarded: for=6.6.6.6;host=evil.example\r\n\
              X-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            seen_values(&seen, "forwarded").is_empty(),
            "trusted={trusted}: {seen}"
        );
        assert!(
            seen_values(&seen, "x-real-ip").is_empty(),
            "trusted={trusted}: {seen}"
        );
        assert_eq!(seen_values(&seen, "x-forwarded-for"), ["127.0.0.1"], "{seen}");
        next_is_served(tp.http()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_x_forwarded_for_line_of_a_trusted_peer_is_kept() {
    let up = Seen::start().await;
    let tp = proxy_to(up.addr, ProxyConfig::new().trusted_proxies(["127.0.0.0/8"]));
    let (status, _, body) = exchange(
        tp.http(),
        b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 203.0.113.1\r\n\
          X-Forwarded-For: 203.0.113.2, 198.51.100.9\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        seen_values(&seen, "x-forwarded-for"),
        ["203.0.113.1, 203.0.113.2, 198.51.100.9, 127.0.0.1"],
        "one line: every line the trusted peer sent, then the peer: {seen}"
    );
    next_is_served(tp.http()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authenticate_is_hop_by_hop() {
    let up = Seen::start().await;
    let tp = proxy_to(up.addr, ProxyConfig::new());
    let (status, head, _) = exchange(
        tp.http(),
        b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head_value(&head, "proxy-authenticate"), None, "{head}");
    next_is_served(tp.http()).await;
}

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The `switchyard` binary with `config`: its process, files and listeners.
fn spawn_proxy(config: ProxyConfig) -> (Proc, ProxyFiles, SocketAddr, SocketAddr) {
    let p = Switchyard::start(BIN, config);
    (p.proc, p.files, p.http, p.admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pool_502_has_the_logged_request_id_and_no_address_or_os_text() {
    let closed = ClosedPort::new();
    let dead = closed.addr();
    let green = Seen::start().await;
    let (mut p, _files, http, admin_addr) =
        spawn_proxy(ProxyConfig::new().upstreams(Upstreams::blue_green("blue", dead, green.addr)));
    let mut c = Client::connect(http).await.unwrap();
    let (status, headers, body) = c.get("/version").await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    let text = String::from_utf8_lossy(&body).into_owned();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "Bad Gateway", "{v}");
    for secret in [
        dead.to_string(),
        dead.port().to_string(),
        "127.0.0.1".into(),
        "os error".into(),
        "refused".into(),
    ] {
        assert!(!text.contains(&secret), "the body shows {secret:?}: {text}");
    }
    let id = v["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a request_id: {v}"));
    assert_eq!(headers["x-request-id"], id);
    // The log keeps the details under that id.
    let line = p.next_line(Duration::from_secs(5), "with the request id", |l| {
        field_value(l, "request_id") == Some(id)
    });
    assert!(
        line.contains("WARN") && line.contains(&dead.to_string()),
        "{line}"
    );
    assert!(line.to_lowercase().contains("refused"), "{line}");

    // The next normal request is served (once the pool is one that lives).
    let (code, body) = admin(admin_addr, "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!(code, 200, "{body}");
    next_is_served(http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_rejections_are_answered_counted_and_logged() {
    let up = Seen::start().await;
    // A head limit above hyper's 64 KiB target limit, so that a long target
    // is a 414 rather than a head over `limits.max_header_bytes` (431).
    let (mut p, _files, http, admin_addr) = spawn_proxy(
        ProxyConfig::new()
            .max_header_bytes("128KiB")
            .upstreams(Upstreams::blue(up.addr)),
    );
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000));
    let mut many_headers = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..120 {
        many_headers.push_str(&format!("x-{i}: y\r\n"));
    }
    many_headers.push_str("\r\n");
    let cases: [(&[u8], u16, &str); 3] = [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
            400,
            "bad_request",
        ),
        (long_uri.as_bytes(), 414, "uri_too_long"),
        (many_headers.as_bytes(), 431, "head_too_large"),
    ];
    for (bytes, status, reason) in cases {
        let (got, head, _) = exchange(http, bytes).await;
        assert_eq!(got, status, "{reason}: {head}");
        let (code, m) = testkit::http::get_text(admin_addr, "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(rejected(&m, reason), 1.0, "{reason}: {m}");
        let line = p.next_line(Duration::from_secs(5), &format!("rejecting with {reason}"), |l| {
            field_value(l, "reason") == Some(reason)
        });
        assert!(line.contains("WARN") && line.contains("127.0.0.1"), "{line}");
        next_is_served(http).await;
    }
    assert_eq!(up.received(), 3, "only the three normal requests were forwarded");
}
