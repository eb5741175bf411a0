//! Clients: a keep-alive hyper client, the admin API, a `GET` of text, raw
//! HTTP/1.1 on a std socket (bodies compared byte for byte), and metrics.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

/// A keep-alive HTTP/1.1 client connection (upgrades allowed).
pub struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

/// A response: status, headers and the whole body.
pub type Answer = (StatusCode, HeaderMap, Bytes);

impl Client {
    /// Connects to `addr` (`TCP_NODELAY`), driving the connection in a task.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Client {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends a request (with `Host: addr` unless it has one) and reads the whole answer.
    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Result<Answer, String> {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.host.parse().unwrap());
        }
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Answer, String> {
        self.send(Request::get(path).body(Full::default()).unwrap()).await
    }
}

/// An admin API call on a new connection: `method path` with `body` and an
/// optional bearer `token`; the status and the body as JSON (`Null` if it is not).
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut c = Client::connect(addr).await.unwrap();
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (status, _, body) = c
        .send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status.as_u16(), json)
}

/// `GET path` on a new connection: the status and the body as text.
pub async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = Client::connect(addr).await.unwrap();
    let (status, _, body) = c.get(path).await.unwrap();
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

/// `GET /status` of the admin API at `addr`, asserted 200.
pub async fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, st) = admin(addr, "GET", "/status", "", None).await;
    assert_eq!(code, 200, "{st}");
    st
}

/// Waits (at most `within`) until the admin API's `/status` at `addr`
/// satisfies `cond`; returns the document that did.
pub async fn wait_status(
    addr: SocketAddr,
    within: Duration,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let poll = crate::wait::Poll::new(within, what);
    loop {
        let st = status(addr).await;
        if cond(&st) {
            return st;
        }
        if poll.expired() {
            poll.fail(&format!("; the last /status: {st}"));
        }
        tokio::time::sleep(poll.next_pause()).await;
    }
}

/// A scrape of the admin API's `/metrics` at `addr`, asserted 200.
pub async fn metrics(addr: SocketAddr) -> String {
    let (code, text) = get_text(addr, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    text
}

/// `switchyard_rejected_total{reason}` in a scrape.
pub fn rejected(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("switchyard_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// A normal `GET /next` through the proxy at `proxy`, on a new connection,
/// is answered 200 (by the upstream: with an `x-request-id`).
pub async fn next_is_served(proxy: SocketAddr) {
    let mut c = Client::connect(proxy).await.unwrap();
    let (status, headers, body) = c.get("/next").await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    assert!(headers.contains_key("x-request-id"));
}

/// Asserts that an [`exchange`] is the proxy's own JSON error: `status`,
/// `Content-Type: application/json`, `{"error","errors","request_id"}` with
/// the id equal to the `x-request-id` header. Returns the body.
pub fn assert_json_error(answer: &(u16, String, String), status: u16) -> serde_json::Value {
    let (got, head, body) = answer;
    assert_eq!(*got, status, "{head}\n{body}");
    assert_eq!(
        head_value(head, "content-type"),
        Some("application/json"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(v["error"].is_string() && v["errors"][0].is_string(), "{v}");
    let id = v["request_id"].as_str();
    assert!(id.is_some(), "{v}");
    assert_eq!(head_value(head, "x-request-id"), id, "{head}");
    v
}

/// The value of a Prometheus series in `text` (the exact series text
/// before the value, labels included); 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// `GET path` with `extra` header lines and `Connection: close`, on a std socket.
pub fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, extra)
}

/// `method path` with `extra` header lines and `Connection: close`; the
/// answer read until the server closes.
pub fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_with(&buf, method != "HEAD")
}

/// Writes `bytes` on a new connection and reads the response until close.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    read_response(&mut s)
}

/// Reads one response until the server closes the connection.
pub fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse(&buf)
}

/// Parses a whole response, checking `Content-Length` against the body.
pub fn parse(buf: &[u8]) -> Resp {
    parse_with(buf, true)
}

/// Parses a response; `check_length`: the body is as long as `Content-Length` says.
pub fn parse_with(buf: &[u8], check_length: bool) -> Resp {
    let text = String::from_utf8(buf.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect::<HashMap<_, _>>();
    if let Some(len) = headers.get("content-length").filter(|_| check_length) {
        assert_eq!(
            body.len(),
            len.parse::<usize>().unwrap(),
            "content-length matches the body"
        );
    }
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Reads from `s` until `what` has arrived and returns all that was read;
/// panics if the stream closes first or nothing more arrives within 10 s.
pub async fn read_until(s: &mut tokio::net::TcpStream, what: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(what.len()).any(|w| w == what) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("more of the answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before {:?} arrived: {:?}",
            String::from_utf8_lossy(what),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// One response read off a raw connection by [`read_answer`].
#[derive(Debug)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// The head without its status line, lower-cased.
    pub head: String,
    /// The body (`Content-Length` bytes; none without that header).
    pub body: Vec<u8>,
    /// Bytes that arrived after the end of this response (nothing, unless
    /// the server sent more than one answer).
    pub rest: Vec<u8>,
}

impl RawAnswer {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

/// Reads one response (its head, then `Content-Length` bytes of body) from
/// `s`; `None` if the connection ends (EOF or reset) before a whole one
/// arrived. Panics if nothing more arrives within 10 s.
pub async fn read_answer(s: &mut tokio::net::TcpStream) -> Option<RawAnswer> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let (status_line, head) = head.split_once("\r\n").unwrap_or((&head, ""));
            let status = status_line.split(' ').nth(1)?.parse().ok()?;
            let mut answer = RawAnswer {
                status,
                head: head.to_string(),
                body: Vec::new(),
                rest: Vec::new(),
            };
            let len: usize = answer
                .header("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                answer.body = got[end + 4..end + 4 + len].to_vec();
                answer.rest = got[end + 4 + len..].to_vec();
                return Some(answer);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no whole answer within 10 s: {:?}", String::from_utf8_lossy(&got)))
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// Everything `s` still receives until the peer closes it (EOF or reset);
/// `None` if it is still open after `within`.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
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

/// Writes `bytes` on a new connection and reads the answer until the server
/// closes the connection (a reset after the answer counts as a close): its
/// status, its head (lower-cased) and its body. Panics after 10 s.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (u16, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10))
        .await
        .expect("the server answers and closes within 10 s");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a complete answer head: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head:?}"));
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The value of header `name` (lower case) in a lower-cased answer head.
pub fn head_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}
