//! The request body sent upstream, and `limits.max_body` on a body whose
//! length is not announced (chunked): counted as it streams, and cut when
//! it grows past the limit.

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
    /// The client's body, streamed as it arrives.
    Incoming(Incoming),
    /// The client's body of unannounced length under `limits.max_body`.
    /// Boxed: rare, and it would make every request's body larger.
    Limited(Box<Limited>),
    /// No body.
    Empty,
}

/// A client body counted against `limits.max_body` as it streams.
pub struct Limited {
    inner: Incoming,
    /// Bytes it may still carry.
    left: u64,
    limit: BodyLimit,
}

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
    /// The client's body, counted against `limit`.
    pub fn limited(inner: Incoming, limit: BodyLimit) -> UpstreamBody {
        UpstreamBody::Limited(Box::new(Limited {
            inner,
            left: limit.max,
            limit,
        }))
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
            UpstreamBody::Limited(l) => {
                let polled = Pin::new(&mut l.inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if n > l.left {
                        // The upstream's request is aborted with this error
                        // (its connection closed mid-body, never reused).
                        l.left = 0;
                        if !l.limit.over.replace(true) {
                            l.limit.counted.inc();
                        }
                        return Poll::Ready(Some(Err(TooLarge(l.limit.max).into())));
                    }
                    l.left -= n;
                }
                polled.map_err(Into::into)
            }
            UpstreamBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Incoming(b) => b.is_end_stream(),
            UpstreamBody::Limited(l) => l.inner.is_end_stream(),
            UpstreamBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Incoming(b) => b.size_hint(),
            UpstreamBody::Limited(l) => l.inner.size_hint(),
            UpstreamBody::Empty => SizeHint::with_exact(0),
        }
    }
}
