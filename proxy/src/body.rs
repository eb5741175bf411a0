//! What goes back to the client: the response body, and the record of the
//! request ([`Completion`]) that counts it while it is in flight and logs it
//! once that body ended. The body sent upstream is [`crate::client::body`]'s.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::client::Recycle;
use crate::conn::{Conn, Waiting};
use crate::local::CorePool;
use crate::metrics::{ErrorKind, Reject};

/// What the access log line needs to know about a request.
pub struct AccessInfo {
    /// `X-Request-Id` as sent upstream.
    pub request_id: HeaderValue,
    /// Client address.
    pub client: std::net::IpAddr,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub uri: Uri,
}

/// The status recorded for a request whose client went away before it was
/// answered (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

/// The status class a response cut by its upstream is counted under in
/// `requests_total` (what the proxy answers when the upstream fails before
/// the head).
const CUT_BY_UPSTREAM: u16 = 502;

/// Why a response body did not reach the client whole. Such a response is
/// counted in `requests_total` under the class of the side that failed it
/// (never as a clean 2xx), and marked in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The upstream ended it before its announced end (it closed or reset
    /// the connection, or broke the chunked framing): `upstream_errors_total
    /// {kind="truncated"}`, and 5xx.
    Truncated,
    /// The upstream sent nothing for `timeouts.upstream_read`:
    /// `upstream_errors_total{kind="read_timeout"}`, and 5xx.
    ReadTimeout,
    /// The client took nothing for `timeouts.send`:
    /// `rejected_total{reason="send_timeout"}`, and 4xx (as a client that
    /// went away, 499).
    SendTimeout,
}

impl Cut {
    /// The access log's `cut` field.
    pub fn label(self) -> &'static str {
        match self {
            Cut::Truncated => "truncated",
            Cut::ReadTimeout => "read_timeout",
            Cut::SendTimeout => "send_timeout",
        }
    }

    /// The status whose class `requests_total` counts the request under.
    fn counted_status(self) -> u16 {
        match self {
            Cut::Truncated | Cut::ReadTimeout => CUT_BY_UPSTREAM,
            Cut::SendTimeout => CLIENT_CLOSED,
        }
    }
}

/// Counts a request while it is in flight and records it (metrics, access
/// log) when dropped: after the response body ended or was abandoned.
pub struct Completion {
    /// The pool that served it, as this core uses it.
    pub pool: Rc<CorePool>,
    /// When its head was read.
    pub start: Instant,
    /// Status sent to the client ([`CLIENT_CLOSED`] until one is known).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// The endpoint that answered (its index in the pool), if any.
    pub endpoint: Option<usize>,
    /// Present when the access log is on. Boxed: without it this value
    /// (moved into the response body, and with it into per-connection
    /// state) would be three times larger for every request, logged or not.
    pub access: Option<Box<AccessInfo>>,
    /// Set when the upstream cut the response body; a cut by the
    /// connection's deadline is read from the connection at the end.
    pub cut: Option<Cut>,
    /// The client connection it came on (its idle time starts at the end;
    /// its deadline times the response body).
    conn: Rc<Conn>,
}

impl Completion {
    /// Starts counting a request on `pool`.
    pub fn start(
        pool: Rc<CorePool>,
        conn: Rc<Conn>,
        start: Instant,
        access: Option<Box<AccessInfo>>,
    ) -> Completion {
        pool.pool.inflight.add(pool.core, 1);
        Completion {
            pool,
            start,
            status: CLIENT_CLOSED,
            bytes: 0,
            endpoint: None,
            access,
            cut: None,
            conn,
        }
    }
}

impl Completion {
    /// The client connection the request came on.
    pub fn conn(&self) -> &Rc<Conn> {
        &self.conn
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let p = &self.pool;
        p.pool.inflight.add(p.core, -1);
        // Read before `request_ended` re-arms the connection's deadline.
        let cut = self.cut.or_else(|| match self.conn.cut_while() {
            Some(Waiting::Upstream) => Some(Cut::ReadTimeout),
            Some(Waiting::Client) => Some(Cut::SendTimeout),
            _ => None,
        });
        if let Some(i) = self.endpoint {
            p.unload(i);
            // Passive ejection: a body the upstream cut or stalled counts
            // like a reset or a timeout before the head; one that ended
            // whole (or that the client went away from, or did not take)
            // ends the endpoint's run of failures.
            match cut {
                Some(Cut::Truncated | Cut::ReadTimeout) => p.failed(i),
                Some(Cut::SendTimeout) | None => p.succeeded(i),
            }
        }
        let counted_status = match cut {
            None => self.status,
            Some(c) => {
                match c {
                    Cut::Truncated => p.pool.metrics.error(ErrorKind::Truncated),
                    Cut::ReadTimeout => p.pool.metrics.error(ErrorKind::ReadTimeout),
                    Cut::SendTimeout => self.conn.worker.shared.metrics.rejected(Reject::SendTimeout),
                }
                c.counted_status()
            }
        };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.start);
        self.conn.request_ended(now);
        if p.metrics.request(counted_status, elapsed.as_secs_f64()) {
            p.metrics.flush();
        }
        if let Some(a) = &self.access {
            tracing::info!(
                target: "switchyard::access",
                request_id = a.request_id.to_str().unwrap_or("-"),
                client = %a.client,
                method = %a.method,
                path = %a.uri,
                status = self.status,
                pool = %p.pool.name,
                endpoint = self
                    .endpoint
                    .and_then(|i| p.pool.endpoints.get(i))
                    .map_or("-", |e| e.addr.as_str()),
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                bytes = self.bytes,
                truncated = cut.is_some(),
                cut = cut.map_or("-", Cut::label),
            );
        }
    }
}

/// A response body sent to the client.
pub enum ProxyBody {
    /// A body the proxy made itself (errors, admin answers).
    Full(Option<Bytes>),
    /// An upstream's body, streamed.
    Stream {
        /// The upstream body.
        inner: Incoming,
        /// Recorded when this body is dropped.
        completion: Completion,
        /// Kept for reuse at the end of the body.
        recycle: Option<Recycle>,
    },
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }
}

impl From<Bytes> for ProxyBody {
    fn from(bytes: Bytes) -> ProxyBody {
        ProxyBody::full(bytes)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream {
                inner,
                completion,
                recycle,
            } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            completion.bytes += d.len() as u64;
                        }
                        if inner.is_end_stream() {
                            if let Some(r) = recycle.take() {
                                r.give_back();
                            }
                        } else {
                            // Handed over: until hyper asks for the next
                            // frame, the client is what we wait for.
                            completion.conn.waits_for_client();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(r) = recycle.take() {
                            r.give_back();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // Cut before its end: the connection is not reused,
                        // and the error makes hyper close the client's
                        // connection, so the client sees the body end
                        // short, never framed as complete.
                        recycle.take();
                        completion.cut = Some(Cut::Truncated);
                    }
                    Poll::Pending => completion.conn.waits_for_upstream(),
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}
