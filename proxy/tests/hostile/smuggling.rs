//! Request smuggling shapes and bad header bytes, one row each: the raw
//! request, what the client gets, what is counted, and what the upstream
//! reads off the wire. Where a shape could be read two ways, a second
//! request (`GET /smuggled`) hides where the other reading would find it:
//! the upstream must never see it.

use std::time::Duration;

use testkit::config::ProxyConfig;
use testkit::http::{metric, read_answer, read_to_close};
use testkit::upstream::{End, Recorded};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{upstream_errors, Edge};

/// What the client's connection does after the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Then {
    /// The proxy closes it.
    Close,
    /// It stays open, and the next request on it is read where it begins.
    KeepAlive,
}

/// How a request the upstream read was framed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    NoBody,
    /// One `Content-Length` line with this value.
    Length(&'static str),
    /// `Transfer-Encoding: chunked` alone.
    Chunked,
}

/// What the upstream reads for one shape.
#[derive(Debug, Clone, Copy)]
enum Sees {
    /// Nothing at all.
    Nothing,
    /// One whole request: its request line, framing and body.
    One(&'static str, Framing, &'static [u8]),
    /// Never a complete message: nothing, or this request line and
    /// framing cut before its end (the proxy closed the connection), as far
    /// as hyper had written it when the body failed.
    Incomplete(&'static str, Framing),
}

/// One row: the shape's name, its bytes, the status the client gets and
/// what happens then, the `rejected_total` reason it counts, and what the
/// upstream reads.
struct Shape {
    name: &'static str,
    bytes: Vec<u8>,
    status: u16,
    then: Then,
    rejected: Option<&'static str>,
    sees: Sees,
}

const BLUE_4XX: &str = "switchyard_requests_total{code=\"4xx\",pool=\"blue\"}";

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

fn shape(
    name: &'static str,
    bytes: impl Into<Vec<u8>>,
    (status, then): (u16, Then),
    rejected: Option<&'static str>,
    sees: Sees,
) -> Shape {
    Shape {
        name,
        bytes: bytes.into(),
        status,
        then,
        rejected,
        sees,
    }
}

/// `POST /x` with `headers` (CRLF-terminated lines) and `rest` after the
/// head.
fn post(headers: &str, rest: &str) -> String {
    format!("POST /x HTTP/1.1\r\nHost: a\r\n{headers}\r\n{rest}")
}

/// hyper's parser refused it: 400 with no body, the connection closed,
/// `bad_request`, nothing upstream.
fn refused(name: &'static str, bytes: impl Into<Vec<u8>>) -> Shape {
    shape(
        name,
        bytes,
        (400, Then::Close),
        Some("bad_request"),
        Sees::Nothing,
    )
}

fn shapes() -> Vec<Shape> {
    use Framing::*;
    use Then::*;
    let chunked_hello = format!("5\r\nhello\r\n0\r\n\r\n{SMUGGLED}");
    vec![
        // Both framings: read as chunked (RFC 9112 §6.3), Content-Length
        // dropped, the connection closed after the answer; the upstream gets
        // the chunked body re-framed, and nothing of the other reading.
        shape(
            "Content-Length then Transfer-Encoding",
            post(
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                &chunked_hello,
            ),
            (200, Close),
            None,
            Sees::One("POST /x HTTP/1.1", Chunked, b"hello"),
        ),
        shape(
            "Transfer-Encoding then Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                &chunked_hello,
            ),
            (200, Close),
            None,
            Sees::One("POST /x HTTP/1.1", Chunked, b"hello"),
        ),
        refused(
            "two different Content-Lengths",
            post("Content-Length: 5\r\nContent-Length: 7\r\n", "hello\r\n"),
        ),
        // The same value twice is one length (RFC 9112 §6.3 lets a recipient
        // take repeated equal values as one): forwarded with one line.
        shape(
            "two equal Content-Lengths",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            (200, KeepAlive),
            None,
            Sees::One("POST /x HTTP/1.1", Length("5"), b"hello"),
        ),
        refused(
            "two Content-Lengths in one line",
            post("Content-Length: 5, 5\r\n", "hello"),
        ),
        refused("a signed Content-Length", post("Content-Length: +5\r\n", "hello")),
        refused(
            "Transfer-Encoding: gzip (not ending in chunked)",
            post("Transfer-Encoding: gzip\r\n", &format!("hello{SMUGGLED}")),
        ),
        refused(
            "Transfer-Encoding: chunked, gzip",
            post("Transfer-Encoding: chunked, gzip\r\n", &chunked_hello),
        ),
        // Ending in chunked, but with another coding first: hyper would
        // un-chunk it once and the upstream get the body without its coding
        // (Transfer-Encoding is hop-by-hop), so the proxy refuses it.
        refused(
            "Transfer-Encoding: gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", &chunked_hello),
        ),
        refused(
            "Transfer-Encoding: chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", &chunked_hello),
        ),
        refused(
            "Transfer-Encoding: a gzip line, then a chunked line",
            post(
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                &chunked_hello,
            ),
        ),
        refused(
            "Transfer-Encoding: chunked, then a gzip line",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
                &chunked_hello,
            ),
        ),
        refused(
            "Transfer-Encoding: chunked on HTTP/1.0",
            format!("POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_hello}"),
        ),
        refused(
            "obs-fold (a line starting with a space)",
            post("X-A: 1\r\n  folded\r\nContent-Length: 0\r\n", ""),
        ),
        refused(
            "obs-fold (a line starting with a tab)",
            post("X-A: 1\r\n\tTransfer-Encoding: chunked\r\n", &chunked_hello),
        ),
        refused(
            "a space before the first header line",
            format!("GET /x HTTP/1.1\r\n Host: a\r\n\r\n{SMUGGLED}"),
        ),
        refused("a NUL in a value", post("X-A: a\0b\r\n", "")),
        refused("a bare CR in a value", post("X-A: a\rb\r\n", "")),
        refused("a non-token name", post("X(A): 1\r\n", "")),
        refused(
            "a space before the colon",
            post("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", "hello"),
        ),
        // The head is valid: the request is forwarded, chunked, before its
        // body is read; the chunk size cannot be read, so the upstream's
        // copy is cut (never a complete message), and the client gets the
        // proxy's 400 (not a 502: the upstream did nothing wrong).
        shape(
            "a chunk size that overflows",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("ffffffffffffffffff\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            ),
            (400, Close),
            Some("bad_request"),
            Sees::Incomplete("POST /x HTTP/1.1", Chunked),
        ),
        shape(
            "a chunk size that is not hex",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("zz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            ),
            (400, Close),
            Some("bad_request"),
            Sees::Incomplete("POST /x HTTP/1.1", Chunked),
        ),
        // Bare LF line ends are read (RFC 9112 §2.2 allows it); the
        // upstream gets CRLF.
        shape(
            "bare LF line ends",
            "GET /x HTTP/1.1\nHost: a\n\n",
            (200, KeepAlive),
            None,
            Sees::One("GET /x HTTP/1.1", NoBody, b""),
        ),
        // A body on a GET is forwarded like any other (hyper's client
        // would send a GET whose body length it does not know without it).
        shape(
            "GET with a chunked body",
            "GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            (200, KeepAlive),
            None,
            Sees::One("GET /x HTTP/1.1", Chunked, b"hello"),
        ),
    ]
}

/// Asserts that `got` is the request `line`, framed as `framing`, and
/// ended as `end`.
fn assert_request(got: &Recorded, line: &str, framing: Framing, end: &End, what: &str) {
    assert_eq!(got.line, line, "{what}: {got:?}");
    assert_eq!(&got.end, end, "{what}: {got:?}");
    let (cl, te) = (got.header("content-length"), got.header("transfer-encoding"));
    match framing {
        Framing::NoBody => assert!(cl.is_empty() && te.is_empty(), "{what}: {got:?}"),
        Framing::Length(n) => assert!(cl == [n] && te.is_empty(), "{what}: {got:?}"),
        Framing::Chunked => assert!(cl.is_empty() && te == ["chunked"], "{what}: {got:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_or_forwarded_unambiguously() {
    let edge = Edge::start(ProxyConfig::new());
    let mut failures = Vec::new();
    for s in shapes() {
        let what = s.name;
        let before = edge.rejected().await;
        let seen_before = edge.upstream.requests().len();
        let m = edge.metrics().await;
        let (errors_before, blue_4xx_before) = (upstream_errors(&m), metric(&m, BLUE_4XX));

        let mut c = TcpStream::connect(edge.http()).await.unwrap();
        c.write_all(&s.bytes).await.unwrap();
        let Some(answer) = read_answer(&mut c).await else {
            failures.push(format!("{what}: closed with no answer"));
            continue;
        };
        if answer.status != s.status {
            failures.push(format!(
                "{what}: status {} (want {}): {answer:?}",
                answer.status, s.status
            ));
        }
        match s.then {
            Then::Close => {
                let rest = read_to_close(&mut c, Duration::from_secs(10)).await;
                let rest = rest.map(|r| [answer.rest.clone(), r].concat());
                if rest.as_deref() != Some(&b""[..]) {
                    failures.push(format!(
                        "{what}: want the connection closed after the answer, got {:?}",
                        rest.map(|r| String::from_utf8_lossy(&r).into_owned())
                    ));
                }
            }
            Then::KeepAlive => {
                assert!(answer.rest.is_empty(), "{what}: {answer:?}");
                c.write_all(b"GET /same HTTP/1.1\r\nHost: a\r\n\r\n")
                    .await
                    .unwrap();
                let again = read_answer(&mut c).await;
                if again.as_ref().map(|a| a.status) != Some(200) {
                    failures.push(format!("{what}: the next request on the connection: {again:?}"));
                }
            }
        }
        edge.wait_rejected(before, s.rejected, what).await;

        // What the upstream read: the shape's request (if any), then the
        // next one on the same connection (keep-alive), then the next normal
        // request on a fresh connection; nothing else.
        let mut want = match s.sees {
            Sees::Nothing | Sees::Incomplete(..) => 0,
            Sees::One(..) => 1,
        };
        if s.then == Then::KeepAlive {
            want += 1;
        }
        let seen = edge.upstream_saw(seen_before, want, what).await;
        if let Sees::One(line, framing, body) = s.sees {
            assert_request(&seen[0], line, framing, &End::Complete, what);
            assert_eq!(seen[0].body, body, "{what}: {:?}", seen[0]);
        }
        if s.then == Then::KeepAlive {
            assert_eq!(seen[1].line, "GET /same HTTP/1.1", "{what}: {seen:?}");
        }
        edge.next_is_served(what).await;
        let mut seen = edge.upstream.requests().split_off(seen_before);
        if let Sees::Incomplete(line, framing) = s.sees {
            seen.retain(|r| {
                let cut = r.line == line;
                if cut {
                    assert_request(r, line, framing, &End::Cut, what);
                }
                !cut
            });
        }
        assert_eq!(
            seen.len(),
            want + 1,
            "{what}: the upstream read only these: {seen:?}"
        );
        assert!(
            seen.iter().all(|r| r.path() != "/smuggled"),
            "{what}: smuggled: {seen:?}"
        );
        let m = edge.metrics().await;
        assert_eq!(
            upstream_errors(&m),
            errors_before,
            "{what}: a client's bytes are no upstream error"
        );
        // A body that failed mid-request was routed: a 4xx of the pool.
        if let Sees::Incomplete(..) = s.sees {
            assert_eq!(metric(&m, BLUE_4XX), blue_4xx_before + 1.0, "{what}: {m}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
