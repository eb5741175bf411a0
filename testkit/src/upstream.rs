//! Small real upstreams on 127.0.0.1:0: a hyper server around any handler,
//! a raw TCP one (a thread per connection) for what hyper would not do, and
//! the ready-made ones the tests use.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The response body type of [`serve`] handlers.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A whole body for [`serve`] handlers.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Runs a real HTTP/1.1 server (upgrades allowed) on 127.0.0.1:0 calling
/// `handler` per request, on the current tokio runtime, for as long as it runs.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Answers every request with 200 and `body`.
pub async fn text(body: &'static str) -> SocketAddr {
    serve(move |_req| async move { Response::new(full(body)) }).await
}

/// Streams each request's body back as the response body, as it arrives.
pub async fn echo() -> SocketAddr {
    serve(|req: Request<Incoming>| async move { Response::new(req.into_body().boxed()) }).await
}

/// Answers with the request's headers as a JSON object, and with
/// hop-by-hop headers of its own (`x-hop` named in `Connection`,
/// `Keep-Alive`) beside an end-to-end `x-end: kept`.
pub async fn header_echo() -> SocketAddr {
    serve(|req: Request<Incoming>| async move {
        let mut map = serde_json::Map::new();
        for (k, v) in req.headers() {
            map.insert(
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("?").to_string()),
            );
        }
        Response::builder()
            .header("x-hop", "must go")
            .header("connection", "x-hop")
            .header("keep-alive", "timeout=5")
            .header("x-end", "kept")
            .body(full(serde_json::Value::Object(map).to_string()))
            .unwrap()
    })
    .await
}

/// An upstream that answers after a delay; it counts the requests it has
/// received, so a test can wait until they are provably in flight.
#[derive(Debug, Clone)]
pub struct Slow {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
}

impl Slow {
    /// Requests received so far (answered or not).
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

/// Answers every request whose path starts with `prefix` after `delay`
/// (others at once) with 200 and `body`.
pub async fn slow(prefix: &'static str, delay: Duration, body: &'static str) -> Slow {
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if req.uri().path().starts_with(prefix) {
                tokio::time::sleep(delay).await;
            }
            Response::new(full(body))
        }
    })
    .await;
    Slow { addr, received }
}

/// A raw TCP upstream on 127.0.0.1:0 (a thread per connection): reads one
/// request head, then hands the stream and the head (lower-cased) to `then`.
pub fn raw_upstream(then: fn(std::net::TcpStream, String)) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                if let Some(head) = read_head(&mut s) {
                    then(s, head);
                }
            });
        }
    });
    addr
}

/// Reads up to the end of a request head; `None` if the peer closed first.
pub fn read_head(s: &mut std::net::TcpStream) -> Option<String> {
    let mut byte = [0u8; 1];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => got.push(byte[0]),
        }
    }
    Some(String::from_utf8_lossy(&got).to_lowercase())
}

/// Accepts, reads the request, then closes without answering: an endpoint
/// going away (accepted, then reset).
pub fn vanishing() -> SocketAddr {
    raw_upstream(|_s, _head| {})
}

/// Answers the first request of each connection (keep-alive, `ok`), then
/// reads the second one and closes without answering: a reused connection
/// that dies exactly when it is reused, every time.
pub fn dies_on_reuse() -> SocketAddr {
    raw_upstream(|mut s, _head| {
        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
        let _ = read_head(&mut s);
        // Dropped: closed after the request arrived, before any response byte.
    })
}

/// Answers each connection's first request with keep-alive (`ok`), then
/// closes it 30 ms later, without `Connection: close` (so the proxy holds it
/// idle in its pool when it closes); [`Closing::closed`] counts the
/// connections closed so far.
#[derive(Debug, Clone)]
pub struct Closing {
    /// Where it listens.
    pub addr: SocketAddr,
    closed: Arc<AtomicUsize>,
}

impl Closing {
    /// Connections this upstream has closed.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

/// See [`Closing`].
pub fn closing() -> Closing {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let count = closed.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                if read_head(&mut s).is_some() {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    std::thread::sleep(Duration::from_millis(30));
                }
                drop(s);
                count.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Closing { addr, closed }
}

/// Accepts any upgrade handshake (`Upgrade: <p>` with `Connection:
/// upgrade`: 101 with `Upgrade: <p>`), then echoes bytes; a request that
/// asks for no upgrade gets 200 whose body is the request head as this
/// upstream read it (lower-cased), and `Connection: close`.
pub fn upgrade_echo() -> SocketAddr {
    raw_upstream(|mut s, head| {
        let protocol = head
            .lines()
            .find_map(|l| l.strip_prefix("upgrade:"))
            .map(str::trim)
            .filter(|_| head.contains("connection: upgrade"));
        let Some(protocol) = protocol else {
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
                    head.len()
                )
                .as_bytes(),
            );
            return;
        };
        let _ = s.write_all(
            format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: {protocol}\r\nconnection: upgrade\r\n\r\n")
                .as_bytes(),
        );
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// An upstream that fails mid-response, by path; see [`faulty`].
#[derive(Debug, Clone)]
pub struct Faulty {
    /// Where it listens.
    pub addr: SocketAddr,
    ended: Arc<AtomicUsize>,
}

impl Faulty {
    /// Connections that ended after a faulty answer: this upstream cut them
    /// (`/cut…`), or the proxy closed them (`/stall`, `/big`).
    pub fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

/// The head and first 5 bytes of a 100-byte answer.
const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello";

/// A raw upstream (keep-alive) whose answers fail mid-body, by path:
/// `/stall` sends `Content-Length: 100` and 5 bytes, then nothing until the
/// proxy closes the connection; `/cut` sends the same, then closes;
/// `/cut-chunked` sends a chunked head and one chunk, then closes; `/big`
/// announces 1 GiB and writes it as fast as the proxy takes it, until the
/// proxy closes. Any other path gets 200 `ok`, and the connection is kept.
pub fn faulty() -> Faulty {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let ended = Arc::new(AtomicUsize::new(0));
    let count = ended.clone();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let count = count.clone();
            std::thread::spawn(move || {
                while let Some(head) = read_head(&mut s) {
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    match path.as_str() {
                        "/stall" => {
                            if s.write_all(PARTIAL).is_ok() {
                                let mut buf = [0u8; 1024];
                                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                            }
                        }
                        "/cut" => {
                            let _ = s.write_all(PARTIAL);
                        }
                        "/cut-chunked" => {
                            let _ = s.write_all(
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                            );
                        }
                        "/big" => {
                            let block = vec![b'x'; 64 * 1024];
                            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 1u64 << 30);
                            if s.write_all(head.as_bytes()).is_ok() {
                                for _ in 0..(1u64 << 30) / block.len() as u64 {
                                    if s.write_all(&block).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        _ => {
                            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .is_ok()
                            {
                                continue;
                            }
                            return;
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    count.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            });
        }
    });
    Faulty { addr, ended }
}

/// One request as a [`recorder`] upstream read it off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The request line, e.g. `POST /x HTTP/1.1`.
    pub line: String,
    /// The header lines as sent (names lower-cased, values trimmed), in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded by its framing (`Content-Length` or chunked).
    pub body: Vec<u8>,
    /// How it ended: the whole message arrived, or what was wrong.
    pub end: End,
}

/// How a request a [`recorder`] read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The whole message arrived, framed as its head says.
    Complete,
    /// The connection closed before the end of the message.
    Cut,
    /// Its framing is ambiguous or invalid (both `Content-Length` and
    /// `Transfer-Encoding`, two `Content-Length`s, a coding other than
    /// `chunked`, a malformed chunk): what a proxy must never send. The
    /// recorder closes the connection.
    Ambiguous(String),
}

impl Recorded {
    /// The path of the request line.
    pub fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or_default()
    }

    /// Every value of header `name` (lower case), in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A raw upstream that records every request exactly as it reads it off
/// the wire (see [`Recorded`]), with a strict reading of the framing (RFC
/// 9112 §6), and answers each complete one `200 ok` (keep-alive); see
/// [`recorder`].
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    /// Every request read so far (a cut or ambiguous one once its
    /// connection ended), in the order they ended.
    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// See [`Recorder`]. A connection that closes between two requests records
/// nothing; one that closes inside a request records it as [`End::Cut`].
pub fn recorder() -> Recorder {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (record, count) = (seen.clone(), connections.clone());
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(s) = stream else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let record = record.clone();
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s);
                while let Some(req) = read_recorded(&mut r) {
                    let whole = req.end == End::Complete;
                    record.lock().unwrap().push(req);
                    if !whole
                        || r.get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Recorder {
        addr,
        seen,
        connections,
    }
}

/// One line up to CRLF (without it); `None` at the end of the stream.
fn crlf_line(r: &mut impl std::io::BufRead) -> Option<String> {
    let mut line = Vec::new();
    match r.read_until(b'\n', &mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) if !line.ends_with(b"\r\n") => None,
        Ok(_) => {
            line.truncate(line.len() - 2);
            Some(String::from_utf8_lossy(&line).into_owned())
        }
    }
}

/// Reads one request strictly; `None` if the stream ended before one began.
fn read_recorded(r: &mut impl std::io::BufRead) -> Option<Recorded> {
    let line = crlf_line(r)?;
    let mut rec = Recorded {
        line,
        headers: Vec::new(),
        body: Vec::new(),
        end: End::Cut,
    };
    loop {
        let Some(h) = crlf_line(r) else { return Some(rec) };
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            rec.end = End::Ambiguous(format!("a header line without a colon: {h:?}"));
            return Some(rec);
        };
        rec.headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let te = rec.header("transfer-encoding").join(", ");
    let cl = rec.header("content-length");
    rec.end = match (te.as_str(), cl.as_slice()) {
        ("", []) => End::Complete,
        ("", [len]) => match len.parse::<usize>() {
            Ok(n) => {
                rec.body = vec![0; n];
                match r.read_exact(&mut rec.body) {
                    Ok(()) => End::Complete,
                    Err(_) => End::Cut,
                }
            }
            Err(_) => End::Ambiguous(format!("Content-Length {len:?}")),
        },
        ("chunked", []) => read_chunked(r, &mut rec.body),
        ("", _) => End::Ambiguous(format!("Content-Length {cl:?}")),
        (te, []) => End::Ambiguous(format!("Transfer-Encoding {te:?}")),
        (te, cl) => End::Ambiguous(format!("Transfer-Encoding {te:?} with Content-Length {cl:?}")),
    };
    Some(rec)
}

/// Reads a chunked body into `body` (RFC 9112 §7.1), trailers skipped.
fn read_chunked(r: &mut impl std::io::BufRead, body: &mut Vec<u8>) -> End {
    loop {
        let Some(size_line) = crlf_line(r) else {
            return End::Cut;
        };
        let digits = size_line.split(';').next().unwrap_or_default();
        let Ok(size) = usize::from_str_radix(digits, 16) else {
            return End::Ambiguous(format!("chunk size {size_line:?}"));
        };
        if size == 0 {
            loop {
                match crlf_line(r) {
                    None => return End::Cut,
                    Some(t) if t.is_empty() => return End::Complete,
                    Some(_) => {}
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        if r.read_exact(&mut body[start..]).is_err() {
            return End::Cut;
        }
        match crlf_line(r) {
            None => return End::Cut,
            Some(t) if t.is_empty() => {}
            Some(t) => return End::Ambiguous(format!("{t:?} after a chunk's data")),
        }
    }
}

/// A pod of a pool: a real HTTP/1.1 server on a given address (`127.0.0.2`,
/// `127.0.0.3` … are loopback addresses too, so pods can share a port as
/// the addresses behind one DNS name do). `GET /readyz` answers 200 while
/// it is ready, else 503 (never counted); `GET /hold` waits until
/// [`Pod::release`] ([`Pod::holding`] counts those waiting); `/version` answers `{"version":"<its address>"}` (what
/// [`crate::load::Load`] reads); anything else answers 200 with the pod's
/// address as the body. Requests other than `/readyz` are counted. Dropping it (or
/// [`Pod::stop`]) closes its listener and every connection.
pub struct Pod {
    /// Where it listens.
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    holding: Arc<AtomicUsize>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    release: Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Pod {
    /// Starts a pod on `addr` (port 0: a free one).
    pub async fn start(addr: SocketAddr) -> Pod {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let holding = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let release = Arc::new(tokio::sync::Notify::new());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (s, h, r, n) = (served.clone(), holding.clone(), ready.clone(), release.clone());
        tokio::spawn(async move {
            let mut stop_accepting = stopped.clone();
            loop {
                let stream = tokio::select! {
                    _ = stop_accepting.changed() => return,
                    a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                };
                let (s, h, r, n, mut stopped) = (s.clone(), h.clone(), r.clone(), n.clone(), stopped.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, h, r, n) = (s.clone(), h.clone(), r.clone(), n.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            if path == "/readyz" {
                                let code = if r.load(Ordering::SeqCst) { 200 } else { 503 };
                                let mut resp = Response::new(full("ready"));
                                *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                                return Ok::<_, Infallible>(resp);
                            }
                            s.fetch_add(1, Ordering::SeqCst);
                            if path == "/hold" {
                                // Registered before it is counted, so a
                                // release after `holding()` saw it wakes it.
                                let mut released = std::pin::pin!(n.notified());
                                released.as_mut().enable();
                                h.fetch_add(1, Ordering::SeqCst);
                                released.await;
                                h.fetch_sub(1, Ordering::SeqCst);
                            }
                            if path == "/version" {
                                let json = format!("{{\"version\":\"{addr}\",\"errors\":[]}}");
                                return Ok(Response::new(full(json)));
                            }
                            Ok(Response::new(full(addr.to_string())))
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Pod {
            addr,
            served,
            holding,
            ready,
            release,
            stop,
        }
    }

    /// Requests it answered (or holds), `/readyz` not counted.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// `/hold` requests it has received and not answered yet.
    pub fn holding(&self) -> usize {
        self.holding.load(Ordering::SeqCst)
    }

    /// Makes `/readyz` answer 200 (`true`) or 503.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Lets every held `/hold` request answer.
    pub fn release(&self) {
        self.release.notify_waiters();
    }

    /// Closes the listener and every connection.
    pub fn stop(self) {}
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
