//! TLS and HTTP/2 at the edge, through the real binary: HTTPS with HTTP/1.1
//! and HTTP/2 (ALPN) on TLS 1.2 and 1.3, certificate rotation (rename and
//! the kubelet's `..data` swap) without cutting an open connection, bad
//! pairs rejected while the old one serves, h2c, the 308 redirect, and the
//! HTTP/2 limits (rapid reset, concurrent streams). Certificates are made
//! on the spot by a test CA (`testkit::tls`).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use testkit::config::{ProxyConfig, Upstreams};
use testkit::http::{get_text, metric, raw, rejected, Client};
use testkit::process::Switchyard;
use testkit::tls::{Ca, Leaf, TlsClient};
use testkit::{eventually, upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WITHIN: Duration = Duration::from_secs(10);
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];
const H1: &[&[u8]] = &[b"http/1.1"];

/// A Secret-style mount in `dir/tls`, as the kubelet lays it out:
/// `tls.crt -> ..data/tls.crt`, `..data -> ..<n>`.
struct SecretMount {
    dir: std::path::PathBuf,
    n: usize,
}

impl SecretMount {
    fn new(dir: &Path, leaf: &Leaf) -> SecretMount {
        let dir = dir.join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = SecretMount { dir, n: 0 };
        m.swap_raw(&leaf.cert_pem, &leaf.key_pem);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), m.dir.join(f)).unwrap();
        }
        m
    }

    fn swap(&mut self, leaf: &Leaf) {
        self.swap_raw(&leaf.cert_pem, &leaf.key_pem);
    }

    /// What the kubelet does on an update: a new timestamped directory,
    /// `..data_tmp` pointing at it renamed over `..data`, the old one removed.
    fn swap_raw(&mut self, cert: &str, key: &str) {
        self.n += 1;
        let new = format!("..2026_{}", self.n);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        std::fs::write(self.dir.join(&new).join("tls.crt"), cert).unwrap();
        std::fs::write(self.dir.join(&new).join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if self.n > 1 {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("..2026_{}", self.n - 1)));
        }
    }
}

/// A proxy serving HTTPS with `leaf` from a Secret-style mount, in front of
/// a header-echo upstream; `more` adds to its configuration.
async fn https_proxy(
    leaf: &Leaf,
    more: impl FnOnce(ProxyConfig) -> ProxyConfig,
) -> (Switchyard, SecretMount) {
    https_proxy_to(leaf, upstream::header_echo().await, more)
}

/// A proxy serving HTTPS with `leaf` from a Secret-style mount, in front of
/// the upstream `up` (pool blue); `more` adds to its configuration.
fn https_proxy_to(
    leaf: &Leaf,
    up: impl std::fmt::Display,
    more: impl FnOnce(ProxyConfig) -> ProxyConfig,
) -> (Switchyard, SecretMount) {
    let dir = tempfile::tempdir().unwrap();
    let mount = SecretMount::new(dir.path(), leaf);
    std::fs::write(dir.path().join("upstreams.toml"), Upstreams::blue(up).to_string()).unwrap();
    let config = more(ProxyConfig::new().tls("tls/tls.crt", "tls/tls.key")).in_dir_with_upstreams(dir);
    let proxy = Switchyard::start(BIN, config);
    (proxy, mount)
}

fn https(p: &Switchyard) -> SocketAddr {
    p.https.expect("the proxy has an HTTPS listener")
}

async fn metrics(p: &Switchyard) -> String {
    get_text(p.admin, "/metrics").await.1
}

async fn tls_status(p: &Switchyard) -> serde_json::Value {
    let (code, body) = get_text(p.admin, "/status").await;
    assert_eq!(code, 200);
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["tls"].clone()
}

/// A new HTTPS connection to `p` for `localhost`, offering `alpn`.
async fn tls_client(p: &Switchyard, ca: &Ca, alpn: &[&[u8]]) -> TlsClient {
    TlsClient::connect(https(p), "localhost", ca.client(alpn, None))
        .await
        .unwrap()
}

/// The certificate a new handshake gets (DER).
async fn served_cert(p: &Switchyard, ca: &Ca) -> Vec<u8> {
    tls_client(p, ca, H1).await.peer_cert
}

/// Waits until a new handshake gets the certificate `der`.
async fn wait_served(p: &Switchyard, ca: &Ca, der: &[u8], what: &str) {
    eventually(WITHIN, what, || async { served_cert(p, ca).await == der }).await;
}

/// Swaps `leaf` into `mount` (the kubelet's `..data` swap) and waits until
/// new handshakes get it.
async fn rotate(p: &Switchyard, ca: &Ca, mount: &mut SecretMount, leaf: &Leaf) {
    mount.swap(leaf);
    wait_served(p, ca, &leaf.der, "new handshakes get the new certificate").await;
}

/// A TLS connection to `addr` for `localhost`, offering `alpn`: the
/// stream itself, for a test that speaks over it by hand.
async fn tls_to(
    addr: SocketAddr,
    ca: &Ca,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(ca.client(alpn, None))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_h2_on_tls12_and_tls13_with_forwarded_proto() {
    let ca = Ca::new();
    let leaf = ca.leaf("first", &["localhost"]);
    let (p, _mount) = https_proxy(&leaf, |c| c).await;
    for (alpn, versions, want_alpn, want_version) in [
        (
            H2,
            &[&rustls::version::TLS13][..],
            &b"h2"[..],
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            H2,
            &[&rustls::version::TLS12][..],
            b"h2",
            rustls::ProtocolVersion::TLSv1_2,
        ),
        (
            H1,
            &[&rustls::version::TLS13][..],
            b"http/1.1",
            rustls::ProtocolVersion::TLSv1_3,
        ),
        (
            H1,
            &[&rustls::version::TLS12][..],
            b"http/1.1",
            rustls::ProtocolVersion::TLSv1_2,
        ),
    ] {
        let mut c = TlsClient::connect(https(&p), "localhost", ca.client(alpn, Some(versions)))
            .await
            .unwrap();
        assert_eq!(c.alpn.as_deref(), Some(want_alpn));
        assert_eq!(c.version, Some(want_version));
        assert_eq!(c.peer_cert, leaf.der);
        for _ in 0..2 {
            let (status, headers, body) = c.get("/echo?x=1").await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(headers["x-switchyard-pool"], "blue");
            let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(seen["host"], "localhost", "{seen}");
            assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
            assert_eq!(seen["x-forwarded-host"], "localhost", "{seen}");
            assert!(
                seen.get("te").is_none() && seen.get("connection").is_none(),
                "{seen}"
            );
        }
    }
    // The plain listener still says http.
    let mut plain = Client::connect(p.http).await.unwrap();
    let (_, _, body) = plain.get("/echo").await.unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["x-forwarded-proto"], "http");
    let m = metrics(&p).await;
    assert_eq!(
        metric(&m, "switchyard_tls_handshakes_total{result=\"ok\"}"),
        4.0,
        "{m}"
    );
    let status = tls_status(&p).await;
    assert_eq!(status[0]["name"], "default");
    assert_eq!(status[0]["names"], serde_json::json!(["localhost"]));
    assert_eq!(status[0]["not_after"], "2999-01-01T00:00:00Z");
    assert!(status[0]["last_error"].is_null());
    assert_eq!(
        metric(
            &m,
            "switchyard_tls_cert_expiry_timestamp_seconds{name=\"default\"}"
        ),
        32_472_144_000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_entries_choose_their_certificate() {
    let ca = Ca::new();
    let default = ca.leaf("default", &["localhost"]);
    let api = ca.leaf("api", &["api.example.test"]);
    let dir = tempfile::tempdir().unwrap();
    default.write_to(&dir.path().join("tls"));
    api.write_to(&dir.path().join("api"));
    let up = upstream::header_echo().await;
    std::fs::write(dir.path().join("upstreams.toml"), Upstreams::blue(up).to_string()).unwrap();
    let p = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .tls("tls/tls.crt", "tls/tls.key")
            .tls_sni(&["api.example.test"], "api/tls.crt", "api/tls.key")
            .in_dir_with_upstreams(dir),
    );
    let c = TlsClient::connect(https(&p), "api.example.test", ca.client(H2, None))
        .await
        .unwrap();
    assert_eq!(c.peer_cert, api.der);
    assert_eq!(served_cert(&p, &ca).await, default.der);
    let status = tls_status(&p).await;
    assert_eq!(status[1]["name"], "api.example.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_data_swap_and_by_rename_serves_the_new_pair_and_keeps_open_connections() {
    let ca = Ca::new();
    let first = ca.leaf("first", &["localhost"]);
    let (p, mut mount) = https_proxy(&first, |c| c).await;
    let mut open_h1 = tls_client(&p, &ca, H1).await;
    let mut open_h2 = tls_client(&p, &ca, H2).await;
    assert_eq!(open_h1.get("/").await.unwrap().0, 200);
    assert_eq!(open_h2.get("/").await.unwrap().0, 200);

    // The kubelet's `..data` swap.
    let second = ca.leaf("second", &["localhost"]);
    mount.swap(&second);
    wait_served(&p, &ca, &second.der, "new handshakes get the second certificate").await;
    assert_eq!(
        open_h1.get("/").await.unwrap().0,
        200,
        "an open connection is not cut"
    );
    assert_eq!(
        open_h2.get("/").await.unwrap().0,
        200,
        "an open h2 connection is not cut"
    );
    assert_eq!(open_h1.peer_cert, first.der);

    // A rename over each file (what `mv` or an editor does), key first.
    let third = ca.leaf("third", &["localhost"]);
    for (name, text) in [("tls.key", &third.key_pem), ("tls.crt", &third.cert_pem)] {
        let tmp = mount.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, mount.dir.join(name)).unwrap();
    }
    wait_served(&p, &ca, &third.der, "new handshakes get the third certificate").await;
    eventually(
        WITHIN,
        "/status shows no error once the pair is whole",
        || async { tls_status(&p).await[0]["last_error"].is_null() },
    )
    .await;
    assert_eq!(open_h1.get("/").await.unwrap().0, 200);
    let m = metrics(&p).await;
    assert!(
        metric(&m, "switchyard_tls_reloads_total{result=\"ok\"}") >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pair_is_rejected_with_its_reason_and_the_old_one_serves() {
    let ca = Ca::new();
    let good = ca.leaf("good", &["localhost"]);
    let (p, mut mount) = https_proxy(&good, |c| c).await;
    let other = ca.leaf("other", &["localhost"]);
    let expired = ca.expired("expired", &["localhost"]);
    let cases = [
        (
            "garbage",
            "not a certificate\n".to_string(),
            good.key_pem.clone(),
            "no PEM certificate",
        ),
        (
            "mismatched key",
            other.cert_pem.clone(),
            good.key_pem.clone(),
            "does not match",
        ),
        (
            "expired",
            expired.cert_pem.clone(),
            expired.key_pem.clone(),
            "expired at 2001-01-01",
        ),
    ];
    for (i, (what, cert, key, reason)) in cases.iter().enumerate() {
        mount.swap_raw(cert, key);
        eventually(WITHIN, &format!("the {what} pair is rejected"), || async {
            let m = metrics(&p).await;
            metric(&m, "switchyard_tls_reloads_total{result=\"error\"}") == (i + 1) as f64
        })
        .await;
        let status = tls_status(&p).await;
        let error = status[0]["last_error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(reason), "{what}: {status}");
        assert_eq!(status[0]["names"], serde_json::json!(["localhost"]));
        assert_eq!(
            served_cert(&p, &ca).await,
            good.der,
            "{what}: the old pair still serves"
        );
        assert!(
            p.proc.stdout().contains("TLS certificate pair rejected"),
            "{what}: the log says so"
        );
    }
    // Back to a good pair: accepted, the error cleared.
    mount.swap(&other);
    wait_served(&p, &ca, &other.der, "the good pair is served").await;
    assert!(tls_status(&p).await[0]["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_tls10_handshakes_are_refused_and_the_next_client_is_served() {
    let ca = Ca::new();
    let leaf = ca.leaf("leaf", &["localhost"]);
    let (p, _mount) = https_proxy(&leaf, |c| c).await;
    // Plain HTTP instead of a ClientHello: refused with an alert, closed.
    let mut s = tokio::net::TcpStream::connect(https(&p)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WITHIN, s.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(!answer.starts_with(b"HTTP"), "no HTTP answer: {answer:?}");
    // A ClientHello offering TLS 1.0 only (no supported_versions): refused
    // with an alert (content type 21) or closed.
    let mut hello = vec![0x01, 0, 0, 0, 0x03, 0x01];
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.extend_from_slice(&[0, 0, 2, 0x00, 0x2f, 1, 0]); // no session id, one suite, null compression
    let len = hello.len() - 4;
    hello[1..4].copy_from_slice(&[0, (len >> 8) as u8, len as u8]);
    let mut record = vec![0x16, 0x03, 0x01, (hello.len() >> 8) as u8, hello.len() as u8];
    record.extend_from_slice(&hello);
    let mut s = tokio::net::TcpStream::connect(https(&p)).await.unwrap();
    s.write_all(&record).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WITHIN, s.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        answer.is_empty() || answer[0] == 21,
        "an alert or nothing: {answer:?}"
    );
    eventually(WITHIN, "both handshakes counted as errors", || async {
        metric(
            &metrics(&p).await,
            "switchyard_tls_handshakes_total{result=\"error\"}",
        ) >= 2.0
    })
    .await;
    assert_eq!(tls_client(&p, &ca, H2).await.get("/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let ca = Ca::new();
    let leaf = ca.leaf("leaf", &["localhost"]);
    let (p, _mount) = https_proxy(&leaf, |c| c.tls_handshake(Duration::from_millis(300))).await;
    let mut s = tokio::net::TcpStream::connect(https(&p)).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WITHIN, s.read(&mut buf)).await.unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "closed: {n:?}");
    eventually(WITHIN, "counted as a failed handshake", || async {
        metric(
            &metrics(&p).await,
            "switchyard_tls_handshakes_total{result=\"error\"}",
        ) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let up = upstream::header_echo().await;
    let p = Switchyard::start(BIN, ProxyConfig::new().h2c(true).upstreams(Upstreams::blue(up)));
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://api.example.test:{}/echo", p.http.port()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen["host"],
        format!("api.example.test:{}", p.http.port()),
        "{seen}"
    );
    assert_eq!(seen["x-forwarded-proto"], "http");
    // HTTP/1.1 still works there.
    let mut c = Client::connect(p.http).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().0, 200);
}

/// What a request body that stops arriving gets over HTTP/2 (`io`: ALPN
/// `h2` over TLS, or h2c), from a proxy with a short `timeouts.request` in
/// front of an upstream that answers once a body is whole (a
/// `testkit::upstream::recorder`): a POST announcing 100 bytes sends 10,
/// then nothing while its stream stays open. Its stream is answered 408
/// with the proxy's JSON error, as over HTTP/1.1 but with no `Connection`
/// header (only the stream ends), and counted once in
/// `rejected_total{reason="body_timeout"}`; the next stream on the same
/// connection is served. `origin`: the scheme and authority of the targets.
async fn a_body_that_stops_gets_408_over_h2<I>(p: &Switchyard, io: I, origin: &str)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, Empty, StreamBody};
    type Body = UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Body>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let before = rejected(&metrics(p).await, "body_timeout");
    // 10 bytes of an announced 100, then the stream stays open, silent.
    let ten = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
        bytes::Bytes::from_static(b"0123456789"),
    ))]);
    let stops = StreamBody::new(futures_util::StreamExt::chain(
        ten,
        futures_util::stream::pending(),
    ));
    let req = hyper::Request::post(format!("{origin}/upload"))
        .header(http::header::CONTENT_LENGTH, "100")
        .body(stops.boxed_unsync())
        .unwrap();
    let resp = answered(send.send_request(req)).await;
    assert_eq!(resp.status(), 408, "{resp:?}");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert!(
        resp.headers().get(http::header::CONNECTION).is_none(),
        "no Connection header over HTTP/2: {resp:?}"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["errors"][0], "the request body did not arrive in time", "{v}");
    assert_eq!(
        rejected(&metrics(p).await, "body_timeout"),
        before + 1.0,
        "counted once"
    );
    // The connection goes on: a new stream on it is served.
    send.ready().await.unwrap();
    let next = hyper::Request::get(format!("{origin}/"))
        .body(Empty::new().boxed_unsync())
        .unwrap();
    let resp = answered(send.send_request(next)).await;
    assert_eq!(resp.status(), 200, "{resp:?}");
}

/// The answer `sent` resolves to, which must come within [`WITHIN`].
async fn answered<T, E: std::fmt::Debug>(sent: impl std::future::Future<Output = Result<T, E>>) -> T {
    tokio::time::timeout(WITHIN, sent)
        .await
        .expect("an answer within 10 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_over_h2_is_the_clients_408() {
    let ca = Ca::new();
    let leaf = ca.leaf("leaf", &["localhost"]);
    let up = upstream::recorder();
    let (p, _mount) = https_proxy_to(&leaf, up.addr, |c| c.request_timeout(Duration::from_millis(500)));
    let tls = tls_to(https(&p), &ca, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    a_body_that_stops_gets_408_over_h2(&p, tls, "https://localhost").await;
    // A new connection is served too.
    assert_eq!(tls_client(&p, &ca, H2).await.get("/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_over_h2c_is_the_clients_408() {
    let up = upstream::recorder();
    let p = Switchyard::start(
        BIN,
        ProxyConfig::new()
            .h2c(true)
            .request_timeout(Duration::from_millis(500))
            .upstreams(Upstreams::blue(up.addr)),
    );
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    a_body_that_stops_gets_408_over_h2(&p, tcp, &format!("http://localhost:{}", p.http.port())).await;
    // A new connection is served too.
    let mut c = Client::connect(p.http).await.unwrap();
    assert_eq!(c.get("/").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_answers_308_to_the_same_url_on_https() {
    let ca = Ca::new();
    let leaf = ca.leaf("leaf", &["localhost"]);
    let (p, _mount) = https_proxy(&leaf, |c| c.redirect_https(true)).await;
    let port = https(&p).port();
    for (host, path) in [
        ("example.test:8080", "/a/b?c=1&d=2"),
        ("example.test", "/"),
        ("[::1]:80", "/x"),
    ] {
        let r = raw(
            p.http,
            format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 308, "{r:?}");
        let bare = host
            .rsplit_once(':')
            .filter(|(_, p)| !p.contains(']'))
            .map_or(host, |(h, _)| h);
        assert_eq!(r.headers["location"], format!("https://{bare}:{port}{path}"));
    }
    // The HTTPS listener serves.
    assert_eq!(tls_client(&p, &ca, H1).await.get("/").await.unwrap().0, 200);
}

/// A raw HTTP/2 client over TLS: frames written by hand, as an attacker
/// would, so nothing in a client library paces them.
struct RawH2 {
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET https://localhost/`: `:method GET`, `:scheme https`, `:path /`
/// from HPACK's static table, `:authority` literal without indexing.
fn get_headers(stream: u32) -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    frame(0x1, 0x5, stream, &block) // END_STREAM | END_HEADERS
}

impl RawH2 {
    async fn connect(addr: SocketAddr, ca: &Ca) -> RawH2 {
        let mut s = tls_to(addr, ca, &[b"h2"]).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        s.write_all(&hello).await.unwrap();
        let mut raw = RawH2 { s, buf: Vec::new() };
        // The server's SETTINGS, acknowledged so that its limits apply.
        loop {
            let (kind, flags, _, _) = raw.next_frame().await.expect("the server's SETTINGS");
            if kind == 0x4 && flags & 1 == 0 {
                break;
            }
        }
        raw.s.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
        raw
    }

    /// The next frame (type, flags, stream, payload), or `None` once closed.
    async fn next_frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(WITHIN, self.s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_rapid_reset_flood_gets_goaway_and_the_next_client_is_served() {
    let ca = Ca::new();
    let leaf = ca.leaf("leaf", &["localhost"]);
    let (p, _mount) = https_proxy(&leaf, |c| c).await;
    let mut raw = RawH2::connect(https(&p), &ca).await;
    // 500 streams, each opened and cancelled at once, in one write.
    let mut flood = Vec::new();
    for i in 0..500u32 {
        let id = 1 + 2 * i;
        flood.extend(get_headers(id));
        flood.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = raw.s.write_all(&flood).await;
    let mut goaway = None;
    while let Some((kind, _, _, payload)) = raw.next_frame().await {
        if kind == 0x7 {
            goaway = Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM, then closed");
    // The proxy serves the next client normally.
    let mut c = tls_client(&p, &ca, H2).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.unwrap().0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_beyond_the_limit_are_refused() {
    let ca = Ca::new();
    let leaf = ca.leaf("leaf", &["localhost"]);
    // Answers take long enough for every stream to be open at once.
    let up = upstream::slow("/", Duration::from_millis(1500), "done").await;
    let (p, _mount) = https_proxy_to(&leaf, up.addr, |c| c);
    let mut raw = RawH2::connect(https(&p), &ca).await;
    let limit = switchyard::listener::H2_MAX_CONCURRENT_STREAMS;
    let mut burst = Vec::new();
    for i in 0..=limit {
        burst.extend(get_headers(1 + 2 * i));
    }
    raw.s.write_all(&burst).await.unwrap();
    let last = 1 + 2 * limit;
    let (mut refused, mut answered) = (Vec::new(), 0);
    while answered + refused.len() < (limit + 1) as usize {
        let Some((kind, flags, stream, payload)) = raw.next_frame().await else {
            break;
        };
        match kind {
            0x3 => refused.push((stream, u32::from_be_bytes(payload[..4].try_into().unwrap()))),
            0x0 | 0x1 if flags & 0x1 != 0 => answered += 1,
            _ => {}
        }
    }
    assert_eq!(
        refused,
        [(last, 0x7)],
        "only the stream beyond the limit, with REFUSED_STREAM"
    );
    assert_eq!(answered, limit as usize, "the others were answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_works_over_tls_with_http1() {
    let ca = Ca::new();
    let leaf = ca.leaf("leaf", &["localhost"]);
    let (p, _mount) = https_proxy_to(&leaf, upstream::upgrade_echo(), |c| c);
    let mut s = tls_to(https(&p), &ca, H1).await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "the answer head: {head:?}");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping over tls").await.unwrap();
    let mut echoed = [0u8; 13];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping over tls");
}

#[test]
fn check_loads_the_certificates_and_offline_skips_them() {
    let ca = Ca::new();
    let good = ca.leaf("good", &["localhost"]);
    let other = ca.leaf("other", &["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    good.write_to(&dir.path().join("tls"));
    std::fs::write(
        dir.path().join("upstreams.toml"),
        Upstreams::blue("127.0.0.1:1").to_string(),
    )
    .unwrap();
    let files = ProxyConfig::new()
        .tls("tls/tls.crt", "tls/tls.key")
        .in_dir_with_upstreams(dir)
        .write();
    let check = |offline: bool| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("check").arg("-c").arg(&files.proxy_toml);
        if offline {
            cmd.arg("--offline");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(check(false).0, Some(0), "{:?}", check(false));
    // A key that is not the certificate's: `check` says so, `--offline`
    // (a rendered chart, no Secret at hand) does not read the files.
    std::fs::write(files.dir.path().join("tls/tls.key"), &other.key_pem).unwrap();
    let (code, err) = check(false);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("tls.key") && err.contains("does not match"), "{err}");
    assert_eq!(check(true).0, Some(0));
    std::fs::remove_file(files.dir.path().join("tls/tls.crt")).unwrap();
    assert_eq!(check(true).0, Some(0), "offline skips missing certificate files");
    let (code, err) = check(false);
    assert_eq!(code, Some(1));
    assert!(err.contains("tls.crt") && err.contains("cannot read"), "{err}");
    // And the proxy refuses to start with it: exit 64, the reason on stderr.
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&files.proxy_toml)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls.crt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_fail_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let ca = Ca::new();
    let first = ca.leaf("first", &["localhost"]);
    let (p, mut mount) = https_proxy(&first, |c| c).await;
    let addr = https(&p);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // Four clients, two over HTTP/2 and two over HTTP/1.1, each making a new
    // connection (a new handshake) every 20 requests; bounded in count.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let config = ca.client(if i % 2 == 0 { H2 } else { H1 }, None);
        tasks.push(tokio::spawn(async move {
            for _ in 0..1000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let mut c = match TlsClient::connect(addr, "localhost", config.clone()).await {
                    Ok(c) => c,
                    Err(e) => {
                        failed.lock().unwrap().push(format!("handshake: {e}"));
                        continue;
                    }
                };
                for _ in 0..20 {
                    match c.get("/").await {
                        Ok((s, _, _)) if s == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failed.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            }
        }));
    }
    let load_moves = |at_least: u64| {
        let ok = ok.clone();
        async move {
            let from = ok.load(Ordering::Relaxed);
            eventually(WITHIN, "requests keep being answered", || {
                let ok = ok.clone();
                async move { ok.load(Ordering::Relaxed) >= from + at_least }
            })
            .await;
        }
    };
    load_moves(100).await;
    let mut last = first.der.clone();
    for n in 0..3 {
        let leaf = ca.leaf(&format!("rotation {n}"), &["localhost"]);
        rotate(&p, &ca, &mut mount, &leaf).await;
        load_moves(100).await;
        // A broken pair in between changes nothing for the clients.
        mount.swap_raw("garbage", &leaf.key_pem);
        load_moves(100).await;
        mount.swap(&leaf);
        last = leaf.der.clone();
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(served_cert(&p, &ca).await, last);
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Seven waits of at least 100 answers each.
    assert!(ok.load(Ordering::Relaxed) >= 700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_the_load_generator_over_tls_fail_no_request() {
    use testkit::load::{assert_no_failures, Load};
    let ca = Ca::new();
    let first = ca.leaf("first", &["localhost"]);
    // The translation API's answer: the load generator records its version.
    let up = upstream::text(r#"{"version":"0.0.1","errors":[]}"#).await;
    let (p, mut mount) = https_proxy_to(&first, up, |c| c);
    let load = Load::start_tls(https(&p), "localhost", 8, "/", ca.client(H1, None)).await;
    load.wait_more(200).await;
    for n in 0..2 {
        let leaf = ca.leaf(&format!("rotation {n}"), &["localhost"]);
        rotate(&p, &ca, &mut mount, &leaf).await;
        load.wait_more(200).await;
        mount.swap_raw(&leaf.cert_pem, &first.key_pem);
        eventually(WITHIN, "the mismatched pair is rejected", || async {
            !tls_status(&p).await[0]["last_error"].is_null()
        })
        .await;
        load.wait_more(200).await;
        assert_eq!(served_cert(&p, &ca).await, leaf.der);
    }
    let samples: Vec<_> = load.stop().into_iter().flatten().collect();
    assert!(samples.len() >= 1000, "{}", samples.len());
    assert_no_failures(&samples);
}
