//! One client connection: who is on the other end, what the header rules
//! need to know about it (made once per connection, not per request), and
//! its idle deadline.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use http::HeaderValue;

use crate::deadline::{self, Deadline};
use crate::headers;
use crate::worker::Worker;

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
    open: Cell<u32>,
}

impl Conn {
    /// A new client connection from `peer`.
    pub fn new(worker: Rc<Worker>, peer: SocketAddr) -> Conn {
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
            idle,
            open: Cell::new(0),
        }
    }

    /// A request of this connection starts: the connection is not idle.
    pub fn request_started(&self) {
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
