//! One client connection: who is on the other end, what the header rules
//! need to know about it (made once per connection, not per request), and
//! its one inactivity deadline: idle between requests (`client_idle`), and
//! while a response body streams, waiting for the upstream
//! (`upstream_read`) or for the client (`send`).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use http::HeaderValue;

use crate::deadline::{self, Deadline};
use crate::headers;
use crate::worker::Worker;

/// What a connection's deadline ([`Conn::idle`]) is timing: what the
/// connection waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// No request in progress: the next request, or the rest of its head
    /// (`timeouts.client_idle`).
    NextRequest,
    /// A request until its response head: disarmed here (the request's
    /// own deadline, `timeouts.request`, bounds it).
    Head,
    /// A response body, for the upstream's next bytes
    /// (`timeouts.upstream_read`).
    Upstream,
    /// A response body, for the client to take what it was given
    /// (`timeouts.send`).
    Client,
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
    /// Arrived over TLS (the HTTPS listener): `X-Forwarded-Proto: https`.
    pub https: bool,
    /// The connection's inactivity deadline; when it fires the connection
    /// is closed (with the response in progress, if any, and its upstream
    /// connection). What it times is [`Conn::waiting`]: from its accept or
    /// the end of its last response `timeouts.client_idle` (the wait for the
    /// next request, and the reading of a request head: slowloris), then
    /// nothing until the response head, then, while the body streams,
    /// `upstream_read` or `send`, re-armed at every frame.
    pub idle: Deadline,
    /// What `idle` is timing.
    waiting: Cell<Waiting>,
    /// Requests of this connection in progress (0 or 1 with HTTP/1.1).
    open: Cell<u32>,
    /// Keeps the connection counted as open on its core (the shutdown drain
    /// waits for it, the cores' balance and `client_connections` count it)
    /// for as long as anything of it lives, a tunnel included: whoever
    /// holds this connection holds that count.
    _counted: Box<dyn std::any::Any>,
}

impl Conn {
    /// A new client connection from `peer` (over TLS when `https`);
    /// `counted` is dropped with it.
    pub fn new(worker: Rc<Worker>, peer: SocketAddr, counted: Box<dyn std::any::Any>, https: bool) -> Conn {
        let ip = headers::canonical_ip(peer.ip());
        let trusted = headers::is_trusted(&worker.shared.opts.trusted_proxies, ip);
        let peer_header = headers::peer_value(ip);
        let idle = worker
            .deadlines
            .add(deadline::after(Instant::now(), worker.shared.opts.client_idle));
        Conn {
            worker,
            peer: SocketAddr::new(ip, peer.port()),
            trusted,
            peer_header,
            https,
            idle,
            waiting: Cell::new(Waiting::NextRequest),
            open: Cell::new(0),
            _counted: counted,
        }
    }

    /// Its TLS handshake starts: the deadline times it
    /// (`timeouts.tls_handshake`).
    pub fn handshake_started(&self) {
        self.idle.arm_in(self.worker.shared.opts.tls_handshake);
    }

    /// Its TLS handshake is done: from now on `timeouts.client_idle`, as
    /// for a new plain connection.
    pub fn handshake_done(&self) {
        self.idle.arm(deadline::after(
            Instant::now(),
            self.worker.shared.opts.client_idle,
        ));
    }

    /// A request of this connection starts: the connection is not idle.
    pub fn request_started(&self) {
        self.open.set(self.open.get() + 1);
        self.waiting.set(Waiting::Head);
        self.idle.disarm();
    }

    /// A response body waits for the upstream's next bytes: from now on
    /// (not from each poll that finds nothing) `timeouts.upstream_read`.
    pub fn waits_for_upstream(&self) {
        if self.waiting.get() != Waiting::Upstream {
            self.waiting.set(Waiting::Upstream);
            self.idle.arm_in(self.worker.shared.opts.upstream_read);
        }
    }

    /// A response body frame was handed to the client's connection: from
    /// now on `timeouts.send`, until it asks for the next one.
    pub fn waits_for_client(&self) {
        self.waiting.set(Waiting::Client);
        self.idle.arm_in(self.worker.shared.opts.send_timeout);
    }

    /// What the deadline was timing when it fired and cut the connection
    /// (`Upstream` or `Client` for a response cut mid-body); `None` when it
    /// did not fire.
    pub fn cut_while(&self) -> Option<Waiting> {
        match self.waiting.get() {
            w @ (Waiting::Upstream | Waiting::Client) if self.idle.has_fired() => Some(w),
            _ => None,
        }
    }

    /// A request of this connection ended at `now` (its response body was
    /// sent or abandoned): the idle time starts when none is left.
    pub fn request_ended(&self, now: Instant) {
        let n = self.open.get().saturating_sub(1);
        self.open.set(n);
        if n == 0 {
            self.waiting.set(Waiting::NextRequest);
            self.idle
                .arm(deadline::after(now, self.worker.shared.opts.client_idle));
        }
    }
}
