//! Sending one request to an endpoint of its pool, trying again where
//! [`super::retry`] says so, on this core's upstream connections.

use std::rc::Rc;
use std::sync::Arc;

use http::header::HeaderMap;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::retry::{self, Next, Retry};
use crate::client::body::{BodyLimit, ClientWait};
use crate::client::{ConnectError, LocalClient, Sender, UpstreamBody};
use crate::error::ForwardError;
use crate::local::CorePool;
use crate::metrics::ErrorKind;
use crate::pool::Endpoint;

/// A request as [`send`] keeps it between tries.
pub enum Outgoing {
    /// A request that [`retry::may_repeat`], not sent yet.
    Retryable(Request<UpstreamBody>),
    /// The same once it was sent: what a repeat is made of, if its
    /// connection closes before any response byte.
    Sent(Template),
    /// Any other request: it goes out once (and comes back only if it was
    /// not sent at all).
    Once(Option<Request<UpstreamBody>>),
}

impl Outgoing {
    /// The client's request, ready for its first try; its body, when it
    /// has one, watched through `wait` and counted against `limit` when
    /// there is one (see [`UpstreamBody::of`]).
    pub fn of(
        req: Request<Incoming>,
        upgrade: bool,
        limit: Option<BodyLimit>,
        wait: Option<ClientWait>,
    ) -> Outgoing {
        let body_ends = http_body::Body::is_end_stream(req.body());
        let retryable = retry::may_repeat(req.method(), body_ends, upgrade);
        let (mut parts, body) = req.into_parts();
        // A body of unknown length (the client sent it chunked) goes out
        // chunked: for a `GET` or `HEAD` hyper's client would otherwise
        // assume there is none, and send the request without what the
        // client sent.
        if !body_ends && http_body::Body::size_hint(&body).exact().is_none() {
            parts.headers.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
        let body = UpstreamBody::of(body, limit, wait);
        let req = Request::from_parts(parts, body);
        if retryable {
            Outgoing::Retryable(req)
        } else {
            Outgoing::Once(Some(req))
        }
    }

    /// The request for the next try, if there is one to send. The first try
    /// of a retry-able request sends the request itself, the header map
    /// hyper parsed (whose room the upstream connection reuses for the
    /// response's headers), and keeps a copy; later tries send copies.
    fn next(&mut self) -> Option<Request<UpstreamBody>> {
        match std::mem::replace(self, Outgoing::Once(None)) {
            Outgoing::Retryable(req) => {
                *self = Outgoing::Sent(Template::of(&req));
                Some(req)
            }
            Outgoing::Sent(t) => {
                let req = t.build();
                *self = Outgoing::Sent(t);
                Some(req)
            }
            Outgoing::Once(req) => req,
        }
    }
}

/// What a repeat of a retry-able request is made of.
pub struct Template {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
}

impl Template {
    fn of(req: &Request<UpstreamBody>) -> Template {
        Template {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        }
    }

    fn build(&self) -> Request<UpstreamBody> {
        let mut r = Request::new(UpstreamBody::Empty);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// The response, the index of the endpoint that sent it, and its connection.
pub type Sent = (Response<Incoming>, usize, Sender);

/// A ready connection to `ep`: an idle one unless `fresh`, else a new one
/// (after waiting for room when the endpoint is at
/// `limits.upstream_max_connections`). The flag says whether it was reused
/// (was idle).
async fn acquire(
    client: &LocalClient,
    ep: &Arc<Endpoint>,
    fresh: bool,
) -> Result<(Sender, bool), ConnectError> {
    if !fresh {
        while let Some(mut s) = client.take(ep) {
            if s.ready().await.is_ok() {
                return Ok((s, true));
            }
        }
    }
    // Boxed: connecting (and the handshake, and a wait for room at the
    // limit) is the rare path; inline, its state (896 bytes) would be part
    // of every request's `send` future, which is allocated and written for
    // every request.
    let mut s = Box::pin(client.open(ep)).await?;
    s.ready().await.map_err(ConnectError::Handshake)?;
    Ok((s, false))
}

/// The endpoint a try is counted on in this core's per-endpoint in-flight
/// counts (what spreading compares): uncounted when the try fails or the
/// request is dropped (timeout, client gone); an answered request's count
/// is handed to its record (`Completion`), which ends it with the answer.
struct Loaded<'a> {
    pool: &'a CorePool,
    at: Option<usize>,
}

impl Loaded<'_> {
    fn on(&mut self, i: usize) {
        self.off();
        self.pool.load(i);
        self.at = Some(i);
    }

    fn off(&mut self) {
        if let Some(i) = self.at.take() {
            self.pool.unload(i);
        }
    }
}

impl Drop for Loaded<'_> {
    fn drop(&mut self) {
        // Dropped with a try under way: the request's deadline (or its
        // client) ended it; `forward::handle` counts a timeout from this.
        self.pool.abandon(self.at);
        self.off();
    }
}

/// Sends the request to an endpoint of `pool` — the first try to the one
/// [`CorePool::choose`] picks — trying again as [`Retry`] says after each
/// failed try, skipping endpoints that are not usable (unless the pool
/// panics). Never to another pool. Connect failures and resets on a new
/// connection count toward passive ejection (and so does a request timeout
/// the upstream caused, in `forward::handle`, and a response body the
/// upstream cut or stalled, in the answer's record); an answer whose body
/// ends whole ends the run (counted by that record, `body::Completion`).
///
/// Not an `async fn`: its arguments would be stored twice in the future
/// (once as arguments, once as locals), and this future is allocated and
/// written per request.
#[allow(clippy::manual_async_fn)] // see above: an `async fn` would be 248 bytes larger
pub fn send(
    client: Rc<LocalClient>,
    core_pool: Rc<CorePool>,
    mut out: Outgoing,
) -> impl std::future::Future<Output = Result<Sent, ForwardError>> {
    async move {
        let pool = &*core_pool.pool;
        let n = pool.endpoints.len();
        // No endpoint at all (a `dns` pool whose name has no address):
        // answered at once, and never counted toward an ejection.
        let Some(first) = core_pool.choose() else {
            return Err(ForwardError::NoEndpoint {
                pool: pool.name.clone(),
            });
        };
        let mut loaded = Loaded {
            pool: &core_pool,
            at: None,
        };
        let mut retry = Retry::new(first, n);
        let mut next = retry.first();
        let mut last_err = None;
        while let Next::Try(t) = next {
            if t.retry {
                if !core_pool.usable(t.endpoint) {
                    // Unhealthy or ejected: not tried, the walk goes on.
                    next = retry.after_connect_failure();
                    continue;
                }
                pool.metrics.retries.inc();
            }
            let ep = &pool.endpoints[t.endpoint];
            loaded.on(t.endpoint);
            let (mut sender, reused) = match acquire(&client, ep, t.fresh).await {
                Ok(s) => s,
                // The proxy's own limit, not a failure of the endpoint:
                // answered 503 at once, tried nowhere else, counted in
                // `rejected_total`, never in `upstream_errors_total`.
                Err(ConnectError::AtLimit(max)) => {
                    loaded.off();
                    return Err(ForwardError::UpstreamConnectionLimit {
                        endpoint: ep.addr.clone(),
                        max,
                    });
                }
                Err(e) => {
                    loaded.off();
                    pool.metrics.error(ErrorKind::Connect);
                    core_pool.failed(t.endpoint);
                    last_err = Some(ForwardError::Connect {
                        endpoint: ep.addr.clone(),
                        reason: e.to_string(),
                    });
                    next = retry.after_connect_failure();
                    continue;
                }
            };
            // A fresh binding per try, moved into the sending future: kept
            // apart from `out`, it would take room in every state.
            let Some(req) = out.next() else { break };
            match sender.try_send_request(req).await {
                // The endpoint's index from `retry`, not kept from `t`:
                // one local less in every state of this future.
                Ok(resp) => {
                    let i = retry.endpoint();
                    // The answer's record uncounts it when the answer ends,
                    // and counts its outcome toward passive ejection.
                    loaded.at = None;
                    return Ok((resp, i, sender));
                }
                Err(mut e) => {
                    loaded.off();
                    // The client's body failed, not the upstream: no retry,
                    // no upstream error, no ejection (the connection is
                    // dropped: cut).
                    if let Some(client) = ForwardError::from_client_body(e.error()) {
                        return Err(client);
                    }
                    let err = ForwardError::Upstream {
                        endpoint: ep.addr.clone(),
                        reason: e.error().to_string(),
                    };
                    match e.take_message() {
                        // Not sent at all: the same request goes out again.
                        Some(back) => {
                            if let Outgoing::Once(r) = &mut out {
                                *r = Some(back);
                            }
                            if !reused {
                                core_pool.failed(retry.endpoint());
                            }
                            next = retry.after_not_sent(reused);
                            last_err = Some(err);
                        }
                        // Sent, and the connection closed before any
                        // response byte: repeated once if it may be.
                        None => {
                            if !reused {
                                core_pool.failed(retry.endpoint());
                            }
                            let repeatable = matches!(out, Outgoing::Sent(_));
                            // Matched, not compared: a comparison borrows
                            // `next`, and a borrowed local is kept in every
                            // state of this future.
                            next = match retry.after_closed_before_response(reused, repeatable) {
                                Next::GiveUp => return Err(err),
                                again => again,
                            };
                            pool.metrics.error(ErrorKind::Reset);
                            last_err = Some(err);
                        }
                    }
                }
            }
        }
        Err(last_err.unwrap_or(ForwardError::NoEndpoint {
            pool: pool.name.clone(),
        }))
    }
}
