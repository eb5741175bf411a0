//! One request: load the table once, choose the pool and an endpoint,
//! rewrite the headers, forward, retry where that is safe, and answer.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{AccessInfo, Completion, ProxyBody, Recycle, UpstreamBody};
use crate::client::{ConnectError, LocalClient, Sender};
use crate::deadline::{self, Deadline, Deadlines};
use crate::error::ForwardError;
use crate::local::{CorePool, View};
use crate::metrics::ErrorKind;
use crate::Shared;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_SWITCHYARD_POOL: HeaderName = HeaderName::from_static("x-switchyard-pool");
static X_SWITCHYARD_GENERATION: HeaderName = HeaderName::from_static("x-switchyard-generation");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the usual extras), never forwarded.
static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
];

/// The index of `name` in [`HOP_BY_HOP`].
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    HOP_BY_HOP.iter().position(|h| *h == name)
}

/// One core's share of the data plane.
pub struct Worker {
    /// State shared by every core.
    pub shared: Arc<Shared>,
    /// This core's upstream connections.
    pub client: Rc<LocalClient>,
    /// This core's view of the routing table.
    pub view: View,
    /// This core's request and client-idle deadlines.
    pub deadlines: Rc<Deadlines>,
    /// Request id prefix of this core (random per process and core).
    id_prefix: u64,
    /// Request id counter of this core.
    id_next: std::cell::Cell<u64>,
    /// The next request ids of this core, made [`IDS_PER_BLOCK`] at a time
    /// in one buffer that each id is a slice of: one allocation per block
    /// instead of one per id and one more for its first clone.
    ids: std::cell::RefCell<bytes::Bytes>,
}

/// Length of a request id made by the proxy: 32 hex digits.
const ID_LEN: usize = 32;
/// Request ids made at once.
const IDS_PER_BLOCK: usize = 64;

impl Worker {
    /// A core's worker.
    pub fn new(shared: Arc<Shared>, client: Rc<LocalClient>, core: usize) -> Worker {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(core);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        Worker {
            shared,
            client,
            view: View::new(core),
            deadlines: Rc::new(Deadlines::default()),
            id_prefix: h.finish(),
            id_next: std::cell::Cell::new(0),
            ids: std::cell::RefCell::new(bytes::Bytes::new()),
        }
    }

    /// A new request id: this core's random prefix and its counter, in hex.
    fn new_request_id(&self) -> HeaderValue {
        let mut ids = self.ids.borrow_mut();
        if ids.is_empty() {
            let mut block = vec![0u8; ID_LEN * IDS_PER_BLOCK];
            for id in block.chunks_exact_mut(ID_LEN) {
                let n = self.id_next.get().wrapping_add(1);
                self.id_next.set(n);
                hex16(self.id_prefix, &mut id[..16]);
                hex16(n, &mut id[16..]);
            }
            *ids = bytes::Bytes::from(block);
        }
        let take = ID_LEN.min(ids.len());
        let id = ids.split_to(take);
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

fn hex16(v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// A client connection: who is on the other end.
pub struct Conn {
    /// The core's worker.
    pub worker: Rc<Worker>,
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the peer's `X-Forwarded-For` is extended rather than replaced.
    pub trusted: bool,
    /// The peer's address as a header value, made once per connection.
    pub peer_header: HeaderValue,
    /// Fires when the connection has been idle (no request in progress) for
    /// `timeouts.client_idle`, counted from its accept or from the end of
    /// its last response; the connection is then closed. This bounds both a
    /// keep-alive connection's wait for its next request and the reading of
    /// a request head (slowloris).
    pub idle: Deadline,
    /// Requests of this connection in progress (0 or 1 with HTTP/1.1).
    open: std::cell::Cell<u32>,
}

impl Conn {
    /// A new client connection from `peer`.
    pub fn new(worker: Rc<Worker>, peer: SocketAddr) -> Conn {
        let ip = canonical_ip(peer.ip());
        let trusted = worker.shared.opts.trusted_proxies.iter().any(|n| n.contains(&ip));
        let peer_header =
            HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let idle = worker
            .deadlines
            .add(deadline::after(Instant::now(), worker.shared.opts.client_idle));
        Conn {
            worker,
            peer: SocketAddr::new(ip, peer.port()),
            trusted,
            peer_header,
            idle,
            open: std::cell::Cell::new(0),
        }
    }

    /// A request of this connection starts: the connection is not idle.
    fn request_started(&self) {
        self.open.set(self.open.get() + 1);
        self.idle.disarm();
    }

    /// A request of this connection ended at `now` (its response body was
    /// sent or abandoned): the idle time starts when none is left.
    pub fn request_ended(&self, now: Instant) {
        let n = self.open.get().saturating_sub(1);
        self.open.set(n);
        if n == 0 {
            self.idle
                .arm(deadline::after(now, self.worker.shared.opts.client_idle));
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// Whether the request asks for a protocol upgrade (WebSocket…).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        })
}

/// Removes the hop-by-hop headers and those that `Connection` names; with
/// `keep_upgrade` (an upgrade handshake) `Upgrade` and `Connection: upgrade`
/// stay. One pass over the names finds which are present; only those are
/// removed (each removal is a hash lookup).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    if present & 1 != 0 {
        // Names that `Connection` lists, beyond the options that name no
        // header of their own (`close`) or one removed anyway.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for token in v.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(token))
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

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
) -> impl std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> {
    let start = Instant::now();
    conn.request_started();
    let worker = &conn.worker;
    let shared = &worker.shared;
    let opts = &shared.opts;

    // The one load of the routing table for this request.
    let (pool, generation_header) = worker.view.route(&shared.table.load());

    // Upstream connections always speak HTTP/1.1 (keep-alive), whatever the client spoke.
    *req.version_mut() = http::Version::HTTP_11;
    let upgrade = wants_upgrade(req.headers());
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);

    // X-Forwarded-*: extended (or kept) for a trusted proxy, replaced for
    // anyone else. Room for them (and the request id) in one step.
    headers.reserve(4);
    if conn.trusted {
        let xff = match headers.get(&X_FORWARDED_FOR) {
            Some(prev) => {
                let mut v = Vec::with_capacity(prev.len() + 2 + conn.peer_header.len());
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(conn.peer_header.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or_else(|_| conn.peer_header.clone())
            }
            None => conn.peer_header.clone(),
        };
        headers.insert(&X_FORWARDED_FOR, xff);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = headers.get(header::HOST).cloned() {
                headers.insert(&X_FORWARDED_HOST, host);
            }
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, conn.peer_header.clone());
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    let request_id = match headers.entry(&X_REQUEST_ID) {
        header::Entry::Occupied(e) if valid_request_id(e.get()) => e.get().clone(),
        header::Entry::Occupied(mut e) => {
            let id = worker.new_request_id();
            e.insert(id.clone());
            id
        }
        header::Entry::Vacant(e) => e.insert(worker.new_request_id()).clone(),
    };

    let access = opts.access_log.then(|| {
        Box::new(AccessInfo {
            request_id: request_id.clone(),
            client: conn.peer.ip(),
            method: req.method().clone(),
            uri: req.uri().clone(),
        })
    });
    let mut completion = Completion::start(Rc::clone(&pool), Rc::clone(&conn), start, access);

    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let request_deadline = worker.deadlines.add(deadline::after(start, opts.request_timeout));
    let client = Rc::clone(&worker.client);
    // Boxed: the sending state machine is large, and moving it inside this
    // future costs more (measured with bench/instructions.sh) than one
    // allocation; it also keeps an idle connection's task small.
    let sending = Box::pin(send(client, Rc::clone(&pool), Outgoing::of(req, upgrade)));

    async move {
        let outcome = deadline::timeout(&request_deadline, sending).await;
        drop(request_deadline);
        let worker = &conn.worker;
        let opts = &worker.shared.opts;
        let result = match outcome {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout {
                pool: pool.pool.name.clone(),
                after: opts.request_timeout,
            }),
        };

        let mut response = match result {
            Ok((mut resp, endpoint, sender)) => {
                completion.endpoint = Some(endpoint);
                completion.status = resp.status().as_u16();
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade {
                    strip_hop_by_hop(resp.headers_mut(), true);
                    let upstream_upgrade = hyper::upgrade::on(&mut resp);
                    if let Some(client_upgrade) = client_upgrade {
                        // The tunnel keeps the request counted in flight until it closes.
                        tokio::task::spawn_local(async move {
                            let _completion = completion;
                            if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u))
                                        .await;
                            }
                        });
                    }
                    drop(sender);
                    let (parts, _) = resp.into_parts();
                    Response::from_parts(parts, ProxyBody::Full(None))
                } else {
                    strip_hop_by_hop(resp.headers_mut(), false);
                    *resp.version_mut() = http::Version::HTTP_11;
                    let (parts, inner) = resp.into_parts();
                    let mut recycle = Some(Recycle {
                        sender,
                        client: Rc::clone(&worker.client),
                        endpoint_id: pool.pool.endpoints[endpoint].id,
                    });
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
            }
            Err(e) => {
                // Connect failures were counted per attempt in `send`.
                if let Some(kind) = e.kind().filter(|k| *k != crate::metrics::ErrorKind::Connect) {
                    pool.pool.metrics.error(kind);
                }
                tracing::warn!(request_id = request_id.to_str().unwrap_or("-"), pool = %pool.pool.name, error = %e, "request failed");
                let status = e.status();
                completion.status = status.as_u16();
                drop(completion);
                e.response()
            }
        };
        let h = response.headers_mut();
        h.reserve(3);
        if opts.expose_headers {
            h.insert(&X_SWITCHYARD_POOL, pool.header.clone());
            h.insert(&X_SWITCHYARD_GENERATION, generation_header);
        }
        h.insert(&X_REQUEST_ID, request_id);
        Ok(response)
    }
}

/// A request as [`send`] keeps it between tries.
enum Outgoing {
    /// A body-less idempotent request, not sent yet.
    Retryable(Request<UpstreamBody>),
    /// The same once it was sent: what a repeat is made of, if its
    /// connection closes before any response byte.
    Sent(Template),
    /// Any other request: it goes out once (and comes back only if it was
    /// not sent at all).
    Once(Option<Request<UpstreamBody>>),
}

impl Outgoing {
    fn of(req: Request<Incoming>, upgrade: bool) -> Outgoing {
        let retryable = is_idempotent(req.method()) && http_body::Body::is_end_stream(req.body()) && !upgrade;
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, UpstreamBody::Incoming(body));
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
struct Template {
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
type Sent = (Response<Incoming>, usize, Sender);

/// A ready connection to `ep`: a pooled one unless `fresh`, else a new one.
/// The flag says whether it came from the pool.
async fn acquire(
    client: &LocalClient,
    ep: &crate::pool::Endpoint,
    fresh: bool,
) -> Result<(Sender, bool), ConnectError> {
    if !fresh {
        while let Some(mut s) = client.take(ep) {
            if s.ready().await.is_ok() {
                return Ok((s, true));
            }
        }
    }
    // Boxed: connecting (and the handshake) is the rare path; inline, its
    // state (896 bytes) would be part of every request's `send` future,
    // which is allocated and written for every request.
    let mut s = Box::pin(client.connect(ep)).await?;
    s.ready().await.map_err(ConnectError::Handshake)?;
    Ok((s, false))
}

/// Sends the request to an endpoint of `pool`, following DESIGN.md's retry
/// rules: a request that could not be sent goes to the next endpoint (or, if
/// a pooled connection turned out dead, to a new connection); an idempotent
/// body-less request whose connection closed before any response byte is
/// retried once: on a new connection if it was pooled, else (an endpoint
/// that accepted and then went away) on the next endpoint. Never to another
/// pool.
///
/// Not an `async fn`: its arguments would be stored twice in the future
/// (once as arguments, once as locals), and this future is allocated and
/// written per request.
#[allow(clippy::manual_async_fn)] // see above: an `async fn` would be 248 bytes larger
fn send(
    client: Rc<LocalClient>,
    core_pool: Rc<CorePool>,
    mut out: Outgoing,
) -> impl std::future::Future<Output = Result<Sent, ForwardError>> {
    async move {
        let pool = &*core_pool.pool;
        let n = pool.endpoints.len();
        if n == 0 {
            return Err(ForwardError::NoEndpoint {
                pool: pool.name.clone(),
            });
        }
        let mut resent = false;
        let mut fresh = false;
        let first = core_pool.next_start();
        let mut last_err = None;
        let mut i = 0;
        let mut first_try = true;
        while i < n {
            if !std::mem::take(&mut first_try) {
                pool.metrics.retries.inc();
            }
            let index = (first + i) % n;
            let ep = &pool.endpoints[index];
            let (mut sender, pooled) = match acquire(&client, ep, fresh).await {
                Ok(s) => s,
                Err(e) => {
                    pool.metrics.error(ErrorKind::Connect);
                    last_err = Some(ForwardError::Connect {
                        endpoint: ep.addr.clone(),
                        reason: e.to_string(),
                    });
                    next_try(&mut i, &mut fresh, false);
                    continue;
                }
            };
            // A fresh binding per try, moved into the sending future: kept
            // apart from `out`, it would take room in every state.
            let Some(req) = out.next() else { break };
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, index, sender)),
                Err(mut e) => {
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
                            next_try(&mut i, &mut fresh, pooled);
                            last_err = Some(err);
                        }
                        // Sent, and the connection closed before any response
                        // byte: once, a pooled connection's request goes out
                        // again on a new connection; a new connection's (an
                        // endpoint going away: accepted, then reset) to the next
                        // endpoint, if there is one.
                        None => match out {
                            Outgoing::Sent(_) if !resent => {
                                resent = true;
                                let last = i + 1 >= n;
                                next_try(&mut i, &mut fresh, pooled || last);
                                pool.metrics.error(ErrorKind::Reset);
                                last_err = Some(err);
                            }
                            _ => return Err(err),
                        },
                    }
                }
            }
        }
        Err(last_err.unwrap_or(ForwardError::NoEndpoint {
            pool: pool.name.clone(),
        }))
    }
}

/// Where the next try of [`send`] goes: a new connection to the same
/// endpoint (`same_endpoint`), or the next endpoint, pooled connection first.
fn next_try(i: &mut usize, fresh: &mut bool, same_endpoint: bool) {
    if !same_endpoint {
        *i += 1;
    }
    *fresh = same_endpoint;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn strips_hop_by_hop_and_what_connection_names() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-One"),
            ("connection", "close,  x-two ,upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic eA=="),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("host", "h"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["host", "x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade, x-one"),
            ("upgrade", "websocket"),
            ("x-one", "1"),
            ("keep-alive", "timeout=5"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "upgrade"]);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn headers_without_hop_by_hop_names_are_untouched() {
        let mut h = map(&[("host", "h"), ("x-a", "1"), ("x-a", "2")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }
}
