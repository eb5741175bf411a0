//! One request, end to end: refuse it if the header rules say so, load the
//! table once and take its active pool, apply the header rules, send it
//! (retrying where that is safe), and answer with the upstream's response,
//! a tunnel, or the proxy's own error.
//!
//! Layout: this file (the request flow and the answers), [`send`](mod@send) (sending
//! to an endpoint, on this core's upstream connections) and [`retry`] (the
//! retry policy).

pub mod retry;
pub mod send;

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{AccessInfo, Completion, ProxyBody};
use crate::client::body::{BodyLimit, ClientWait};
use crate::client::{LocalClient, Recycle, Sender};
use crate::conn::Conn;
use crate::deadline::{self, Deadline};
use crate::error::{self, ForwardError};
use crate::headers::{self, Refusal, Rewritten};
use crate::local::CorePool;
use crate::metrics::{ErrorKind, Reject};
use send::{send, Outgoing, Sent};

/// The proxy's answer to one request, ready at once or after forwarding.
type Answer = Result<Response<ProxyBody>, std::convert::Infallible>;

/// Handles one request of a client connection. Never fails: errors become
/// the proxy's own JSON answers.
///
/// Everything up to the forwarding is done here, before the returned future
/// exists, so that the future (kept in the connection's state while the
/// request is in flight) holds only what the answer needs: with many
/// connections open that state is out of cache, and every byte of it costs.
pub fn handle(
    conn: Rc<Conn>,
    mut req: Request<Incoming>,
) -> Either<std::future::Ready<Answer>, impl std::future::Future<Output = Answer>> {
    let start = Instant::now();
    // The header rules that refuse a request come first: a refused request
    // is never routed, and counts in `rejected_total`, not in a pool.
    if let Err(refusal) = headers::check_request(req.method(), req.version(), req.uri(), req.headers()) {
        return Either::Left(std::future::ready(Ok(refuse(&conn, req, refusal))));
    }
    // `listen.redirect_https`: the plain listener routes nothing.
    if let Some(port) = conn.worker.shared.opts.redirect_https.filter(|_| !conn.https) {
        return Either::Left(std::future::ready(Ok(redirect(&conn, req, port))));
    }
    // `limits.max_body`: a body announced larger is refused before anything
    // is sent; one of unannounced length (chunked) is counted as it streams.
    let max_body = conn.worker.shared.opts.max_body;
    let mut body_over = None;
    if max_body > 0 {
        match http_body::Body::size_hint(req.body()).exact() {
            Some(n) if n > max_body => {
                return Either::Left(std::future::ready(Ok(body_too_large(&conn, req, n))));
            }
            Some(_) => {}
            None => body_over = Some(Rc::new(Cell::new(false))),
        }
    }
    // An absolute-form target (`GET http://a/x`) names the host: it
    // replaces `Host`, and the upstream gets the origin form.
    if req.uri().authority().is_some() {
        let mut uri = std::mem::take(req.uri_mut());
        headers::origin_form(&mut uri, req.headers_mut());
        *req.uri_mut() = uri;
    }
    // The client's HTTP version (the upstream's copy is HTTP/1.1): an
    // answer that closes the connection says so on HTTP/1 only.
    let h2 = req.version() == http::Version::HTTP_2;
    conn.request_started();
    let worker = &conn.worker;
    let opts = &worker.shared.opts;

    // Route: the one load of the routing table for this request. Without a
    // split, a preview or a sticky cookie, the active pool serves.
    let table = worker.shared.table.load();
    let mut set_cookie = None;
    let (pool, generation_header) = if crate::progressive::needed(&table) {
        let peer = headers::canonical_ip(conn.peer.ip());
        match crate::progressive::choose(&table, req.headers_mut(), peer, &worker.view.rng) {
            Ok(choice) => {
                if choice.set_cookie {
                    set_cookie = table
                        .sticky
                        .as_ref()
                        .and_then(|s| s.set_cookie.get(choice.pool).cloned());
                }
                worker.view.route_to(&table, choice.pool)
            }
            Err(refused) => {
                conn.request_ended(Instant::now());
                return Either::Left(std::future::ready(Ok(preview_refused(&conn, req, &refused))));
            }
        }
    } else {
        worker.view.route(&table)
    };
    drop(table);

    // Header rules (and the request id). Upstream connections always speak
    // HTTP/1.1 (keep-alive), whatever the client spoke.
    *req.version_mut() = http::Version::HTTP_11;
    let Rewritten { upgrade, request_id } = headers::rewrite_request(
        req.headers_mut(),
        &conn.peer_header,
        conn.trusted,
        conn.https,
        &opts.upgrade_protocols,
        || worker.new_request_id(),
    );

    // Record: counted in flight from here until the answer's body ends.
    let access = opts.access_log.then(|| access_info(&conn, &req, &request_id));
    let completion = Completion::start(Rc::clone(&pool), Rc::clone(&conn), start, access);

    // Send, retrying where that is safe, within `timeouts.request`.
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let request_deadline = worker.deadlines.add(deadline::after(start, opts.request_timeout));
    let client = Rc::clone(&worker.client);
    // Boxed: the sending state machine is large, and moving it inside this
    // future costs more (measured with bench/instructions.sh) than one
    // allocation; it also keeps an idle connection's task small.
    let limit = body_over.as_ref().map(|over| BodyLimit {
        max: max_body,
        over: Rc::clone(over),
        counted: worker.shared.metrics.rejected_counter(Reject::BodyTooLarge),
    });
    // A request with a body: whether the upstream connection waits for the
    // client's next bytes, read if the deadline fires (see `ClientWait`).
    let client_wait: Option<ClientWait> =
        (!http_body::Body::is_end_stream(req.body())).then(|| Rc::new(Cell::new(false)));
    let sending = Box::pin(send(
        client,
        Rc::clone(&pool),
        Outgoing::of(req, upgrade, limit, client_wait.clone()),
    ));

    Either::Right(async move {
        let outcome = deadline::timeout(&request_deadline, sending).await;
        drop(request_deadline);
        let worker = &conn.worker;
        let opts = &worker.shared.opts;
        let result = match outcome {
            Ok(r) => r,
            // The upstream connection was waiting for the client's body:
            // the client's fault (408), no failure of the endpoint.
            Err(_) if client_wait.as_ref().is_some_and(|w| w.get()) => {
                pool.abandon(None);
                Err(ForwardError::ClientBodyTimeout {
                    after: opts.request_timeout,
                })
            }
            Err(_) => {
                // The endpoint it was waiting on counts a failure (passive ejection).
                pool.timed_out();
                Err(ForwardError::Timeout {
                    pool: pool.pool.name.clone(),
                    after: opts.request_timeout,
                })
            }
        };
        // Answer: the upstream's response (or a tunnel), or the proxy's own
        // error; then the labels every answer carries.
        let mut response = match result {
            // The body grew past `limits.max_body` before the upstream
            // answered: its request was aborted, and the client is told.
            Err(e) if body_over.as_ref().is_some_and(|o| o.get()) => {
                cut_body_too_large(&conn, e, &pool, &request_id, completion)
            }
            Ok(sent) => answer(
                sent,
                client_upgrade,
                completion,
                &pool,
                &worker.client,
                &request_id,
            ),
            Err(e) => failed(e, &pool, &request_id, completion, h2),
        };
        headers::label_response(
            response.headers_mut(),
            opts.expose_headers,
            &pool.header,
            generation_header,
            request_id,
        );
        if let Some(cookie) = set_cookie {
            response.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        Ok(response)
    })
}

/// A request the header rules refuse (see [`headers::check_request`]):
/// counted in `rejected_total` (`method_not_allowed` for `CONNECT`, else
/// `bad_request`), logged with the client and the request id, and answered
/// with the proxy's JSON error (generic message and request id); the
/// connection is closed after the answer, as nothing after such a request
/// can be trusted to be where the client meant it. Cold: kept out of
/// [`handle`]'s code.
#[cold]
fn refuse(conn: &Conn, mut req: Request<Incoming>, refusal: Refusal) -> Response<ProxyBody> {
    let worker = &conn.worker;
    let request_id = headers::request_id(req.headers_mut(), || worker.new_request_id());
    let reject = match refusal {
        Refusal::Connect => Reject::MethodNotAllowed,
        Refusal::NoHost | Refusal::TwoHosts | Refusal::BadHost | Refusal::TransferCoding => {
            Reject::BadRequest
        }
    };
    worker.shared.metrics.rejected(reject);
    tracing::warn!(
        request_id = request_id.to_str().unwrap_or("-"),
        client = %conn.peer,
        method = %req.method(),
        reason = reject.label(),
        error = refusal.message(),
        "request refused"
    );
    let mut response = error::respond_to(refusal.status(), refusal.message(), &request_id);
    headers::label_refusal(response.headers_mut(), request_id);
    if req.version() == http::Version::HTTP_2 {
        // HTTP/2 has no `Connection` header (hyper would drop it with a
        // warning); the stream ends with the answer, the connection stays.
        response.headers_mut().remove(http::header::CONNECTION);
    }
    response
}

/// `listen.redirect_https`: a request of the plain listener is answered
/// `308 Permanent Redirect` to the same URL on https (the method and body
/// are kept by the client), with no body; one without a host gets 400.
/// Never routed, counted in no pool. Cold: kept out of [`handle`]'s code.
#[cold]
fn redirect(conn: &Conn, mut req: Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    let request_id = headers::request_id(req.headers_mut(), || conn.worker.new_request_id());
    let Some(location) = headers::https_location(req.uri(), req.headers(), https_port) else {
        return refuse(conn, req, Refusal::NoHost);
    };
    let mut response = Response::new(ProxyBody::Full(None));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let h = response.headers_mut();
    h.insert(http::header::LOCATION, location);
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    h.insert(http::HeaderName::from_static("x-request-id"), request_id);
    response
}

/// A request whose `Content-Length` is over `limits.max_body`: refused
/// before anything is sent upstream, like [`refuse`] (never routed, counted
/// in `rejected_total{reason="body_too_large"}`, logged, the proxy's JSON
/// error 413, the connection closed: its body is never read). Cold.
#[cold]
fn body_too_large(conn: &Conn, mut req: Request<Incoming>, announced: u64) -> Response<ProxyBody> {
    let worker = &conn.worker;
    let request_id = headers::request_id(req.headers_mut(), || worker.new_request_id());
    worker.shared.metrics.rejected(Reject::BodyTooLarge);
    tracing::warn!(
        request_id = request_id.to_str().unwrap_or("-"),
        client = %conn.peer,
        method = %req.method(),
        reason = Reject::BodyTooLarge.label(),
        content_length = announced,
        max_body = worker.shared.opts.max_body,
        "request refused"
    );
    let mut response = error::respond_to(StatusCode::PAYLOAD_TOO_LARGE, BODY_TOO_LARGE, &request_id);
    headers::label_refusal(response.headers_mut(), request_id);
    response
}

/// A preview request whose pool is unknown or has no usable endpoint: the
/// proxy answers 503 with the reason (a preview never falls back to another
/// pool). Never routed, counted in no pool (nor in the automatic
/// rollback), logged. Cold.
#[cold]
fn preview_refused(
    conn: &Conn,
    mut req: Request<Incoming>,
    refused: &crate::progressive::PreviewRefused,
) -> Response<ProxyBody> {
    let request_id = headers::request_id(req.headers_mut(), || conn.worker.new_request_id());
    let message = refused.to_string();
    tracing::warn!(
        request_id = request_id.to_str().unwrap_or("-"),
        client = %conn.peer,
        method = %req.method(),
        error = %message,
        "preview refused"
    );
    let mut response = error::respond_to(StatusCode::SERVICE_UNAVAILABLE, &message, &request_id);
    response
        .headers_mut()
        .insert(http::HeaderName::from_static("x-request-id"), request_id);
    response
}

/// The client's answer when its body is larger than `limits.max_body`.
const BODY_TOO_LARGE: &str = "the request body is larger than the limit";

/// A body of unannounced length grew past `limits.max_body` before the
/// upstream answered: its request was aborted (counted by the body itself,
/// see [`crate::client::body`]); the client gets 413 and its connection is
/// closed (the rest of its body is never read). Recorded in the pool as a
/// 4xx, never as an upstream error.
#[cold]
fn cut_body_too_large(
    conn: &Conn,
    e: ForwardError,
    pool: &CorePool,
    request_id: &HeaderValue,
    mut completion: Completion,
) -> Response<ProxyBody> {
    tracing::warn!(
        request_id = request_id.to_str().unwrap_or("-"),
        client = %conn.peer,
        pool = %pool.pool.name,
        reason = Reject::BodyTooLarge.label(),
        max_body = conn.worker.shared.opts.max_body,
        error = %e,
        "request cut"
    );
    completion.status = StatusCode::PAYLOAD_TOO_LARGE.as_u16();
    drop(completion);
    let mut response = error::respond_to(StatusCode::PAYLOAD_TOO_LARGE, BODY_TOO_LARGE, request_id);
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What the access log line will need, taken before the request is sent.
fn access_info(conn: &Conn, req: &Request<Incoming>, request_id: &HeaderValue) -> Box<AccessInfo> {
    Box::new(AccessInfo {
        request_id: request_id.clone(),
        client: conn.peer.ip(),
        method: req.method().clone(),
        uri: req.uri().clone(),
    })
}

/// The upstream answered: a tunnel if it accepted the client's upgrade,
/// else its response, streamed.
fn answer(
    (resp, endpoint, sender): Sent,
    client_upgrade: Option<OnUpgrade>,
    mut completion: Completion,
    pool: &CorePool,
    client: &Rc<LocalClient>,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    completion.endpoint = Some(endpoint);
    completion.status = resp.status().as_u16();
    match client_upgrade {
        Some(client_upgrade) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            pool.pool.inflight.outcome(pool.core, false);
            tunnel(resp, client_upgrade, completion, sender)
        }
        // A switch nobody asked for (the request's upgrade, if any, was
        // stripped): not a tunnel, and not an answer to pass on.
        None if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            drop(sender);
            let e = ForwardError::Upstream {
                endpoint: pool.pool.endpoints[endpoint].addr.clone(),
                reason: "101 Switching Protocols to a request that asked for no upgrade".into(),
            };
            failed(e, pool, request_id, completion, false)
        }
        _ => {
            // The automatic rollback's count: an upstream's answer.
            pool.pool
                .inflight
                .outcome(pool.core, resp.status().is_server_error());
            let endpoint_id = pool.pool.endpoints[endpoint].id;
            stream(
                resp,
                completion,
                Recycle {
                    sender,
                    client: Rc::clone(client),
                    endpoint_id,
                },
            )
        }
    }
}

/// The upstream accepted the upgrade (`101`): the answer goes back without
/// a body, and a task relays bytes both ways until either side closes, or
/// until no byte went either way for `timeouts.tunnel_idle` (then both are
/// closed, counted as `rejected_total{reason="tunnel_idle"}`). Until then
/// the tunnel counts in flight and in `tunnels` on its pool, and its client
/// connection as open on its core (so a graceful shutdown waits for it, up
/// to its grace). It is not subject to `timeouts.request`.
fn tunnel(
    mut resp: Response<Incoming>,
    client_upgrade: OnUpgrade,
    completion: Completion,
    sender: Sender,
) -> Response<ProxyBody> {
    headers::strip_hop_by_hop(resp.headers_mut(), true);
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let counted = TunnelCount::open(&completion.pool);
    tokio::task::spawn_local(async move {
        let _counted = counted;
        let Ok((c, u)) = tokio::try_join!(client_upgrade, upstream_upgrade) else {
            return;
        };
        let conn = completion.conn();
        let idle = conn.worker.shared.opts.tunnel_idle;
        let deadline = conn.worker.deadlines.add(None);
        deadline.arm_in(idle);
        let mut client = Active::new(TokioIo::new(c), &deadline, idle);
        let mut upstream = Active::new(TokioIo::new(u), &deadline, idle);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            () = deadline.fired() => {
                conn.worker.shared.metrics.rejected(Reject::TunnelIdle);
                tracing::info!(
                    pool = %completion.pool.pool.name,
                    client = %conn.peer,
                    idle = ?idle,
                    "tunnel closed: no byte either way for timeouts.tunnel_idle"
                );
            }
        }
        // Both sides close here, then the record ends the request.
        drop((client, upstream));
        drop(completion);
    });
    drop(sender);
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, ProxyBody::Full(None))
}

/// One open tunnel in its pool's `tunnels` count, until dropped.
struct TunnelCount(Rc<CorePool>);

impl TunnelCount {
    fn open(pool: &Rc<CorePool>) -> TunnelCount {
        pool.pool.inflight.add_tunnels(pool.core, 1);
        TunnelCount(Rc::clone(pool))
    }
}

impl Drop for TunnelCount {
    fn drop(&mut self) {
        self.0.pool.inflight.add_tunnels(self.0.core, -1);
    }
}

/// One side of a tunnel: every byte read from it (either way) re-arms the
/// tunnel's inactivity deadline (a slab write, no clock read: see
/// deadline.rs).
struct Active<'a, T> {
    io: T,
    deadline: &'a Deadline,
    idle: Duration,
}

impl<'a, T> Active<'a, T> {
    fn new(io: T, deadline: &'a Deadline, idle: Duration) -> Self {
        Active { io, deadline, idle }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.deadline.arm_in(this.idle);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The upstream's response, its body streamed to the client; its connection
/// is kept for reuse once that body was read to the end (at once if it has
/// none).
fn stream(mut resp: Response<Incoming>, completion: Completion, recycle: Recycle) -> Response<ProxyBody> {
    headers::strip_hop_by_hop(resp.headers_mut(), false);
    *resp.version_mut() = http::Version::HTTP_11;
    let (parts, inner) = resp.into_parts();
    let mut recycle = Some(recycle);
    if http_body::Body::is_end_stream(&inner) {
        if let Some(r) = recycle.take() {
            r.give_back();
        }
    }
    Response::from_parts(
        parts,
        ProxyBody::Stream {
            inner,
            completion,
            recycle,
        },
    )
}

/// Forwarding failed: counted (an upstream's failure in
/// `upstream_errors_total`, a malformed or stalled request body in
/// `rejected_total`), logged under the request id (with the details the
/// answer does not carry), recorded, and answered by
/// [`ForwardError::response`], with `Connection: close` when the error
/// [`closes`](ForwardError::closes) the connection (on HTTP/1; on HTTP/2,
/// `h2`, the stream ends with the answer).
fn failed(
    e: ForwardError,
    pool: &CorePool,
    request_id: &HeaderValue,
    mut completion: Completion,
    h2: bool,
) -> Response<ProxyBody> {
    // Connect failures were counted per attempt in `send`.
    if let Some(kind) = e.kind().filter(|k| *k != ErrorKind::Connect) {
        pool.pool.metrics.error(kind);
    }
    // The automatic rollback counts upstream errors (a kind), never the
    // proxy's own answers (no endpoint, limits, a client's body).
    if e.kind().is_some() {
        pool.pool.inflight.outcome(pool.core, true);
    }
    if let Some(reason) = e.rejected() {
        completion.conn().worker.shared.metrics.rejected(reason);
    }
    tracing::warn!(request_id = request_id.to_str().unwrap_or("-"), pool = %pool.pool.name, error = %e, "request failed");
    completion.status = e.status().as_u16();
    drop(completion);
    let mut response: Response<ProxyBody> = e.response(request_id);
    if e.closes() && !h2 {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
