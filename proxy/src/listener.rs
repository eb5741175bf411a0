//! The data plane's shape: one `current_thread` runtime per core, each with
//! its own `SO_REUSEPORT` listener, its own upstream connections, and its own
//! accept loop; they share only the `ArcSwap` table, the metrics, the
//! connection counts that keep the cores evenly loaded (see balance.rs) and
//! the stop signal. Also the admin listener's accept loop.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::admin::Admin;
use crate::balance::{Balancer, Handoff, Inbox, Slot};
use crate::client::LocalClient;
use crate::conn::Conn;
use crate::error;
use crate::forward;
use crate::metrics::Reject;
use crate::shared::{DataOpts, Shared};
use crate::worker::Worker;

/// Longest time a core keeps request metrics before adding them to the
/// shared series (it adds them sooner under load).
pub const METRICS_FLUSH: Duration = Duration::from_millis(100);

/// Most admin connections open at once; a new one beyond is closed at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Pause after an accept error (EMFILE…) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// HTTP/2: most streams a client may have open at once on one connection
/// (advertised in SETTINGS; a stream beyond is refused with
/// `REFUSED_STREAM`). nginx's default is 128.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2: largest header list (decoded, as RFC 9113 counts it) accepted in
/// one request; beyond, hyper answers 431.
pub const H2_MAX_HEADER_LIST_SIZE: u32 = 32 * 1024;
/// HTTP/2 rapid-reset defence (CVE-2023-44487): streams a client opened and
/// reset before the proxy could take them, at once; beyond, the connection
/// is closed with `GOAWAY` (`ENHANCE_YOUR_CALM`).
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2: streams the proxy itself had to reset for a client's protocol
/// errors, per connection; beyond, `GOAWAY` (the 2025 "MadeYouReset" flood).
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// The executor hyper's HTTP/2 server spawns its stream tasks on: the
/// core's own `LocalRuntime` (`spawn_local`), so a stream's task stays on
/// the core that accepted its connection and may hold the core's `!Send`
/// state (its `Rc<Conn>`, its upstream connections), as HTTP/1 requests do.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// HTTP/2 settings of every client connection (see the `H2_*` limits),
/// applied to either of hyper's HTTP/2 server builders: its own
/// `http2::Builder` (ALPN `h2`, [`serve_h2`]) and the auto builder's
/// `http2()` (h2c, [`serve_auto`]). A macro because the two builders share
/// these setters but no trait: one list of settings for both.
macro_rules! h2_settings {
    ($builder:expr) => {
        $builder
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS)
    };
}

/// A core's listening sockets: the plain one, and the HTTPS one with `[tls]`.
pub struct CoreListeners {
    /// `[listen] http`.
    pub http: std::net::TcpListener,
    /// `[listen] https`.
    pub https: Option<std::net::TcpListener>,
}

/// Binds a listening socket with `SO_REUSEPORT` (so each core can have one).
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// One core's client connections: how many are open (so a drain can wait
/// for zero) and the core-local stop signal they wait on. Core-local on
/// purpose: a connection task checks it at every wake-up, and a signal
/// shared by all cores (a watch channel) would put a contended lock on
/// every request's path.
#[derive(Default)]
struct Tracker {
    open: Cell<usize>,
    zero: Notify,
    stopping: Cell<bool>,
    /// Wakers of the connections waiting for the stop, by connection id.
    waiting: RefCell<HashMap<u64, Waker>>,
    next_id: Cell<u64>,
}

impl Tracker {
    /// Tells every connection of this core to finish (graceful shutdown).
    fn stop(&self) {
        self.stopping.set(true);
        let wakers: Vec<Waker> = self.waiting.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// Resolves once the core is stopping.
struct Stopping {
    tracker: Rc<Tracker>,
    id: Option<u64>,
}

impl Future for Stopping {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.tracker.stopping.get() {
            return Poll::Ready(());
        }
        // A task's waker does not change, so registering once is enough.
        if self.id.is_none() {
            let id = self.tracker.next_id.get();
            self.tracker.next_id.set(id + 1);
            self.tracker.waiting.borrow_mut().insert(id, cx.waker().clone());
            self.id = Some(id);
        }
        Poll::Pending
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.tracker.waiting.borrow_mut().remove(&id);
        }
    }
}

/// One open connection of a core: counted for the drain, in the gauge, and
/// (through its [`Slot`]) for balancing. Owned by the connection's
/// [`Conn`], so a tunnel (which outlives the HTTP connection that made it)
/// keeps it counted: the drain waits for tunnels too.
struct Tracked {
    tracker: Rc<Tracker>,
    gauge: prometheus::IntGauge,
    /// Uncounts the connection from the balancer when dropped.
    _slot: Slot,
}

impl Tracked {
    fn new(t: &Rc<Tracker>, gauge: &prometheus::IntGauge, slot: Slot) -> Tracked {
        t.open.set(t.open.get() + 1);
        gauge.inc();
        Tracked {
            tracker: Rc::clone(t),
            gauge: gauge.clone(),
            _slot: slot,
        }
    }
}

impl Tracker {
    /// Resolves once the core is stopping.
    fn stopping(self: &Rc<Self>) -> Stopping {
        Stopping {
            tracker: Rc::clone(self),
            id: None,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.gauge.dec();
        let n = self.tracker.open.get() - 1;
        self.tracker.open.set(n);
        if n == 0 {
            self.tracker.zero.notify_waiters();
        }
    }
}

/// One core: accept until told to stop, then let every connection finish
/// its in-flight requests, and every tunnel run, (closing idle keep-alive
/// connections) within `grace`; what is still open then is closed with the
/// core's runtime. Runs on the core's own `LocalRuntime`.
pub async fn run_core(
    core: usize,
    listeners: CoreListeners,
    mut inbox: Inbox,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listeners.http) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(core, error = %e, "cannot register the listener");
            return;
        }
    };
    let https = match listeners.https.map(TcpListener::from_std).transpose() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(core, error = %e, "cannot register the HTTPS listener");
            return;
        }
    };
    let acceptor = shared.tls.as_ref().map(|t| t.acceptor.clone());
    let opts = &shared.opts;
    let client = Rc::new(LocalClient::new(
        opts.upstream_idle,
        opts.connect_timeout,
        opts.upstream_max_connections,
        Arc::clone(&shared.upstream_shed),
    ));
    let worker = Rc::new(Worker::new(Arc::clone(&shared), Rc::clone(&client), core));
    let tracker = Rc::new(Tracker::default());
    let gauge = shared.metrics.client_connections("http");
    // The `https` series exists only with an HTTPS listener.
    let tls_gauge = https.as_ref().map(|_| shared.metrics.client_connections("https"));
    let sweep_every = (opts.upstream_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let sweeper = {
        let client = Rc::clone(&client);
        let shared = Arc::clone(&shared);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(sweep_every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        client.sweep();
                        // A core that serves no request still lets go of the
                        // idle connections of endpoints discovery removed.
                        client.retain_endpoints_of(&shared.table.load());
                    }
                    // A request (on any core) waits for room at an endpoint.
                    () = client.shed_signal().notified() => client.shed_waited(),
                }
            }
        })
    };
    // The metrics this core buffers reach the shared series within
    // METRICS_FLUSH even when traffic stops, and at once when a scrape asks.
    let flusher = {
        let worker = Rc::clone(&worker);
        let shared = Arc::clone(&shared);
        let mut asked = shared.flush.subscribe();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(METRICS_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut answered = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = asked.changed() => if changed.is_err() { return },
                }
                // Read before the flush: `done` then means "flushed after
                // this request was made".
                let request = *asked.borrow_and_update();
                worker.view.flush();
                if request != answered {
                    shared.flush.done(core, request);
                    answered = request;
                }
            }
        })
    };
    let ticker = tokio::task::spawn_local(Rc::clone(&worker.deadlines).run(crate::deadline::tick_for(&[
        opts.request_timeout,
        opts.client_idle,
        opts.send_timeout,
        opts.upstream_read,
        opts.tunnel_idle,
        opts.tls_handshake,
    ])));
    let balancer = &shared.balance;
    let h2c = opts.h2c;
    let start = |stream: tokio::net::TcpStream, peer, slot, tls: bool| {
        let _ = stream.set_nodelay(true);
        let counted = Box::new(Tracked::new(
            &tracker,
            tls_gauge.as_ref().filter(|_| tls).unwrap_or(&gauge),
            slot,
        ));
        let conn = Rc::new(Conn::new(Rc::clone(&worker), peer, counted, tls));
        match (tls, &acceptor) {
            (true, Some(acceptor)) => {
                tokio::task::spawn_local(serve_tls(stream, conn, tracker.stopping(), acceptor.clone()));
            }
            (true, None) => {}
            (false, _) if h2c => {
                tokio::task::spawn_local(serve_auto(stream, conn, tracker.stopping()));
            }
            (false, _) => {
                tokio::task::spawn_local(serve(stream, conn, tracker.stopping()));
            }
        }
    };
    let take = |handoff: Handoff| {
        if let Some(stream) = receive(core, handoff.stream) {
            start(stream, handoff.peer, handoff.slot, handoff.tls);
        }
    };
    let place = |accepted: Option<(tokio::net::TcpStream, SocketAddr)>, tls: bool, refused: &mut Refused| {
        if let Some((stream, peer)) = accepted {
            match balancer.place(core) {
                Some(slot) if slot.core() == core => start(stream, peer, slot, tls),
                Some(slot) => {
                    if let Some((stream, slot)) = hand_over(balancer, core, stream, peer, slot, tls) {
                        start(stream, peer, slot, tls);
                    }
                }
                // `limits.max_connections` open: closed at once (never
                // queued, and accepting goes on so the backlog does not
                // fill), counted, and logged at most once a second.
                None => {
                    drop(stream);
                    shared.metrics.rejected(Reject::TooManyConnections);
                    refused.note(core, peer, shared.opts.max_connections);
                }
            }
        }
    };
    let what = format!("core {core}");
    let mut refused = Refused::default();
    // With two listeners, the one polled first alternates, so a flood on
    // one cannot starve the accepts of the other.
    let mut tls_first = false;
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(handoff) = inbox.recv() => take(handoff),
            (accepted, tls) = accept_either(&listener, https.as_ref(), tls_first, &what) => {
                tls_first = https.is_some() && !tls;
                place(accepted, tls, &mut refused);
            }
        }
    }
    drop(listener);
    drop(https);
    // Connections handed over before the stop are served like the ones this
    // core accepted itself: they finish under the graceful shutdown below.
    inbox.close();
    while let Ok(handoff) = inbox.try_recv() {
        take(handoff);
    }
    tracker.stop();
    let grace = shared.opts.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while tracker.open.get() > 0 {
            let zero = tracker.zero.notified();
            if tracker.open.get() == 0 {
                break;
            }
            zero.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            core,
            open = tracker.open.get(),
            ?grace,
            "shutdown grace over; closing the remaining connections"
        );
    }
    sweeper.abort();
    flusher.abort();
    ticker.abort();
    worker.view.flush();
    client.clear();
}

/// The log of the connections a core closed at once for
/// `limits.max_connections`: one `warn` line a second at most, with how
/// many were closed since the last one (a flood must not flood the log).
#[derive(Default)]
struct Refused {
    logged: Option<std::time::Instant>,
    since: u64,
}

impl Refused {
    fn note(&mut self, core: usize, peer: SocketAddr, max: usize) {
        self.since += 1;
        let now = std::time::Instant::now();
        if self
            .logged
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            core,
            client = %peer,
            max_connections = max,
            closed = self.since,
            "connection closed at once: limits.max_connections client connections are open"
        );
        self.logged = Some(now);
        self.since = 0;
    }
}

/// Sends a connection this core accepted to the core `slot` is on. Gives it
/// back, counted on this core, if that core no longer takes connections.
fn hand_over(
    balancer: &Arc<Balancer>,
    core: usize,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
    tls: bool,
) -> Option<(tokio::net::TcpStream, Slot)> {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(core, error = %e, "cannot hand a connection over; closing it");
            return None;
        }
    };
    let back = balancer
        .hand_over(Handoff {
            stream,
            peer,
            slot,
            tls,
        })
        .err()?;
    let slot = balancer.here(core);
    drop(back.slot);
    receive(core, back.stream).map(|s| (s, slot))
}

/// A handed-over socket registered with this core's reactor.
fn receive(core: usize, stream: std::net::TcpStream) -> Option<tokio::net::TcpStream> {
    match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(core, error = %e, "cannot take a handed-over connection; closing it");
            None
        }
    }
}

/// A plain HTTP/1.1 client connection (HTTP/1.1 over TLS too: `io` is then
/// the TLS stream).
async fn serve<I>(io: I, conn: Rc<Conn>, stopping: Stopping)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let conn = Rc::clone(&conn);
        service_fn(move |req| forward::handle(Rc::clone(&conn), req))
    };
    // No hyper timer: `conn.idle` (a coarse deadline of this core, see
    // deadline.rs) bounds the wait for the next request on an idle
    // keep-alive connection, the reading of a request head (slowloris), and
    // a response body that stalls (`send`, `upstream_read`; see conn.rs).
    let connection = client_http1(&conn.worker.shared.opts)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let ended = until_closed(connection, &conn, stopping, |c| c.graceful_shutdown()).await;
    if let Err(e) = ended {
        parse_rejected(&conn, &e);
    }
}

/// Runs a client connection (HTTP/1.1, HTTP/2, or either with h2c) until it
/// ends, its deadline fires, or the core stops. Ends with the connection's
/// own result; `Ok` when the deadline closed it.
///
/// The deadline (`conn.idle`): idle for `timeouts.client_idle` with no
/// request in progress, or a response body stalled for `send` /
/// `upstream_read`: closed (and with it the response and its upstream
/// connection, which the request's record counts as cut: see body.rs).
///
/// On stop, `graceful_shutdown` is called on the connection (hyper's own
/// `graceful_shutdown`: HTTP/1.1 closes after the request in progress,
/// HTTP/2 sends `GOAWAY`), and it is run on: a request in progress
/// finishes, while a connection that is idle (a head still trickling in)
/// is still cut at its deadline.
async fn until_closed<C, E>(
    mut connection: Pin<&mut C>,
    conn: &Conn,
    stopping: Stopping,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::select! {
        biased;
        ended = connection.as_mut() => ended,
        () = conn.idle.fired() => Ok(()),
        _ = stopping => {
            graceful_shutdown(connection.as_mut());
            tokio::select! {
                biased;
                ended = connection.as_mut() => ended,
                () = conn.idle.fired() => Ok(()),
            }
        }
    }
}

/// hyper's HTTP/1 server settings for client connections, with the request
/// head limits of `[limits]`: hyper's parser enforces them (a head it
/// refuses never reaches the proxy: see [`parse_rejected`]).
fn client_http1(opts: &DataOpts) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        // One buffer and write(2) per message instead of a vector of head
        // and body pieces: measured 3-6 % less CPU per request for the
        // small messages that dominate (bench/proxy_bench.py, and fewer
        // instructions in bench/instructions.sh); large bodies pay a copy.
        .writev(false)
        // The request line and header lines, counted as read; also the
        // limit of a chunked body's trailers.
        .max_header_size(opts.max_header_bytes);
    // hyper's read buffer is capped at `max_buf_size` (about 400 KiB by
    // default, 8 KiB at least); a larger head limit needs a larger cap.
    if opts.max_header_bytes > HYPER_DEFAULT_MAX_BUF {
        b.max_buf_size(opts.max_header_bytes + 1);
    }
    // Left unset at hyper's default (100), its parser keeps the header
    // slots on the stack; set, it writes them first, and above 100 it
    // allocates them on the heap for every request.
    if opts.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.max_headers(opts.max_headers);
    }
    b
}

/// hyper's default `max_headers` (its `DEFAULT_MAX_HEADERS`).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's default `max_buf_size` (8 KiB + 100 × 4 KiB, its `DEFAULT_MAX_BUFFER_SIZE`).
const HYPER_DEFAULT_MAX_BUF: usize = 8192 + 4096 * 100;

/// An HTTP/2 client connection (ALPN `h2` over TLS): its streams are
/// requests served like HTTP/1.1 ones, each a task of this core, within the
/// `H2_*` limits. The connection's deadline works as for HTTP/1.1: idle
/// (no stream open) for `client_idle`, or a response body stalled, closes
/// it; a graceful shutdown sends `GOAWAY` and lets open streams finish.
async fn serve_h2<I>(io: I, conn: Rc<Conn>, stopping: Stopping)
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let service = {
        let conn = Rc::clone(&conn);
        service_fn(move |req| forward::handle(Rc::clone(&conn), req))
    };
    let mut builder = http2::Builder::new(LocalExec);
    h2_settings!(builder);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = until_closed(connection, &conn, stopping, |c| c.graceful_shutdown()).await;
    if let Err(e) = ended {
        tracing::debug!(client = %conn.peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

/// A plain connection with `listen.h2c`: HTTP/2 when it opens with the
/// HTTP/2 preface (prior knowledge), else HTTP/1.1 as [`serve`] does.
async fn serve_auto(stream: tokio::net::TcpStream, conn: Rc<Conn>, stopping: Stopping) {
    let service = {
        let conn = Rc::clone(&conn);
        service_fn(move |req| forward::handle(Rc::clone(&conn), req))
    };
    let mut builder = auto::Builder::new(LocalExec);
    let opts = &conn.worker.shared.opts;
    let mut h1 = builder.http1();
    // The auto builder has no `max_header_size`: its read-buffer cap (8 KiB
    // at least) bounds the request head instead (see docs/security.md).
    h1.keep_alive(true)
        .writev(false)
        .max_buf_size(opts.max_header_bytes.max(8192));
    if opts.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        h1.max_headers(opts.max_headers);
    }
    h2_settings!(builder.http2());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let ended = until_closed(connection, &conn, stopping, |c| c.graceful_shutdown()).await;
    if let Err(e) = ended {
        match e.downcast_ref::<hyper::Error>() {
            Some(e) => parse_rejected(&conn, e),
            None => tracing::debug!(client = %conn.peer, error = %e, "connection ended with an error"),
        }
    }
}

/// A connection of the HTTPS listener: the TLS handshake (within
/// `timeouts.tls_handshake`, counted in `tls_handshakes_total`), then
/// HTTP/2 if the client chose `h2` by ALPN, else HTTP/1.1 (WebSocket
/// upgrades included).
async fn serve_tls(
    stream: tokio::net::TcpStream,
    conn: Rc<Conn>,
    mut stopping: Stopping,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let metrics = &conn.worker.shared.metrics;
    conn.handshake_started();
    let handshake = acceptor.accept(stream);
    let tls = tokio::select! {
        biased;
        done = handshake => done,
        () = conn.idle.fired() => {
            metrics.tls_handshake(false);
            tracing::debug!(client = %conn.peer, "TLS handshake not done within timeouts.tls_handshake; closed");
            return;
        }
        () = &mut stopping => return,
    };
    let tls = match tls {
        Ok(tls) => tls,
        Err(e) => {
            metrics.tls_handshake(false);
            tracing::debug!(client = %conn.peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    metrics.tls_handshake(true);
    conn.handshake_done();
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        serve_h2(tls, conn, stopping).await;
    } else {
        serve(tls, conn, stopping).await;
    }
}

/// A connection that hyper's parser ended (it answered 400, 414 or 431
/// itself, never calling the proxy): counted in `rejected_total` and logged
/// with the client's address. Other ends (the client went away) are not.
fn parse_rejected(conn: &Conn, e: &hyper::Error) {
    if let Some(reject) = error::parse_rejection(e) {
        conn.worker.shared.metrics.rejected(reject);
        tracing::warn!(client = %conn.peer, reason = reject.label(), error = %e, "request rejected by the HTTP parser");
    }
}

/// The next connection, or `None` once `stop` is set.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => return None,
            accepted = accept_once(listener, what) => if accepted.is_some() {
                return accepted;
            },
        }
    }
}

/// One accepted connection, or `None` after an accept error (EMFILE…), which
/// is logged and followed by a short pause: an error never ends an accept
/// loop, the caller accepts again.
async fn accept_once(listener: &TcpListener, what: &str) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!(listener = what, error = %e, "accept failed; pausing");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            None
        }
    }
}

/// One connection from the plain listener or the HTTPS one (`true` with
/// it), polling the HTTPS one first when `tls_first`; an accept error is
/// handled as [`accept_once`] does (logged, a pause, then `None`).
async fn accept_either(
    plain: &TcpListener,
    tls: Option<&TcpListener>,
    tls_first: bool,
    what: &str,
) -> (Option<(tokio::net::TcpStream, SocketAddr)>, bool) {
    let (result, is_tls) = std::future::poll_fn(|cx| {
        let order = if tls_first { [true, false] } else { [false, true] };
        for is_tls in order {
            let listener = if is_tls {
                match tls {
                    Some(l) => l,
                    None => continue,
                }
            } else {
                plain
            };
            if let Poll::Ready(r) = listener.poll_accept(cx) {
                return Poll::Ready((r, is_tls));
            }
        }
        Poll::Pending
    })
    .await;
    match result {
        Ok(conn) => (Some(conn), is_tls),
        Err(e) => {
            let which = if is_tls { "https" } else { "http" };
            tracing::warn!(listener = what, which, error = %e, "accept failed; pausing");
            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            (None, is_tls)
        }
    }
}

/// The admin accept loop, on the control runtime, until `stop`.
pub async fn run_admin(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    // A bounded number of admin connections: probes, scrapes and operators
    // need a few; beyond that a new one is closed at once, so a flood of
    // them cannot take the control runtime's memory.
    let open = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    while let Some((stream, peer)) = accept(&listener, &mut stop, "admin").await {
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tracing::warn!(client = %peer, max = ADMIN_MAX_CONNECTIONS, "admin connection refused: too many open");
            continue;
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, std::convert::Infallible>(admin.handle(req, peer).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Resolves once `stop` is (or already was) set.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
