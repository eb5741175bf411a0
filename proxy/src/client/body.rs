//! The request body sent upstream: whether the upstream connection is
//! waiting for the client's next bytes (so that a request deadline that
//! fires then is the client's fault, not the upstream's), and
//! `limits.max_body` on a body whose length is not announced (chunked):
//! counted as it streams, and cut when it grows past the limit.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The error a body sent upstream ends with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body sent upstream: the client's streamed body, or none (a
/// retried body-less request).
pub enum UpstreamBody {
    /// The client's body when it has none (its end already known).
    Incoming(Incoming),
    /// The client's body when it has one: watched (see [`Watched`]).
    /// Boxed: a body-less request (most of them) would otherwise carry its
    /// room too.
    Watched(Box<Watched>),
    /// No body.
    Empty,
}

/// A client body as it streams upstream: whether the upstream connection
/// now waits for the client's next bytes ([`ClientWait`]), and, for one of
/// unannounced length under `limits.max_body`, its count against the limit.
pub struct Watched {
    inner: Incoming,
    /// Bytes it may still carry (with `limit`).
    left: u64,
    limit: Option<BodyLimit>,
    wait: ClientWait,
}

/// Set while the body sent upstream waits for the client's next bytes (its
/// last poll found none), clear while it does not (nothing asked yet, a
/// frame handed over and not taken, or the body ended). Read by the
/// request when its deadline fires: a body stalled on its client makes the
/// timeout the client's (408), else it is the upstream's (504).
pub type ClientWait = Rc<Cell<bool>>;

/// What a limited body needs: the limit, a flag it sets when the body grew
/// past it (read by the request once sending failed, to answer 413), and
/// the `rejected_total{reason="body_too_large"}` handle it counts on.
pub struct BodyLimit {
    /// `limits.max_body`.
    pub max: u64,
    /// Set when the body grew past `max`.
    pub over: Rc<Cell<bool>>,
    /// Counted once when it does.
    pub counted: prometheus::IntCounter,
}

/// The body grew past `limits.max_body`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than limits.max_body ({0} bytes)")]
pub struct TooLarge(pub u64);

impl UpstreamBody {
    /// The client's body, watched through `wait` (and counted against
    /// `limit` when there is one) when it has one.
    pub fn of(inner: Incoming, limit: Option<BodyLimit>, wait: Option<ClientWait>) -> UpstreamBody {
        match wait {
            None => UpstreamBody::Incoming(inner),
            Some(wait) => UpstreamBody::Watched(Box::new(Watched {
                inner,
                left: limit.as_ref().map_or(u64::MAX, |l| l.max),
                limit,
                wait,
            })),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Watched(w) => {
                let polled = Pin::new(&mut w.inner).poll_frame(cx);
                w.wait.set(polled.is_pending());
                if let (Poll::Ready(Some(Ok(frame))), Some(limit)) = (&polled, &w.limit) {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if n > w.left {
                        // The upstream's request is aborted with this error
                        // (its connection closed mid-body, never reused).
                        w.left = 0;
                        if !limit.over.replace(true) {
                            limit.counted.inc();
                        }
                        return Poll::Ready(Some(Err(TooLarge(limit.max).into())));
                    }
                    w.left -= n;
                }
                polled.map_err(Into::into)
            }
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Incoming(b) => b.is_end_stream(),
            UpstreamBody::Watched(w) => w.inner.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Incoming(b) => b.size_hint(),
            UpstreamBody::Watched(w) => w.inner.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}
