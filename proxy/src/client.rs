//! One core's upstream connections: it opens them
//! (`hyper::client::conn::http1` handles driven on *this* core's runtime)
//! and keeps the idle ones per endpoint for reuse. Nothing here is shared
//! between cores, so nothing is locked: the idle connections live in a
//! `RefCell` of a `current_thread` runtime. ("Pool" in this crate means a
//! blue/green pool of endpoints, never this.)
//!
//! A connection is kept for reuse ([`Recycle`]) only once its response body
//! was read to the end; idle connections expire after
//! `timeouts.upstream_idle` (set below the upstream's own keep-alive timeout
//! so the proxy, not the upstream, closes them), and at most
//! [`MAX_IDLE_PER_ENDPOINT`] are kept per endpoint and core.
//!
//! `limits.upstream_max_connections` bounds an endpoint's open connections
//! (idle and busy) in the whole process: a per-endpoint atomic count
//! ([`crate::pool::OpenConns`]), touched when a connection opens or closes,
//! never per request. A request that finds its endpoint at the limit (and
//! no idle connection on its core) waits up to `timeouts.connect` for one
//! to close ([`LocalClient::wait_for_room`]); meanwhile every core closes
//! the idle connections it keeps to that endpoint and, rather than keep
//! one that comes back idle, closes it, so that the waiting request can
//! open its own on its core.
//!
//! Layout: this file (connect, keep, reuse, [`Recycle`]) and [`body`], the
//! request body sent upstream.

pub mod body;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

use crate::pool::{Endpoint, OpenConn};
use crate::table::RoutingTable;

pub use body::UpstreamBody;

/// Idle connections kept per endpoint on one core.
pub const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// How often a request waiting for room at an endpoint asks the cores
/// again to close their idle connections to it.
const SHED_AGAIN: Duration = Duration::from_millis(20);

/// A sender to one upstream connection.
pub type Sender = SendRequest<UpstreamBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections of one core to one endpoint.
struct Kept {
    /// The endpoint's id, searched per request (kept here, not behind `ep`).
    id: u64,
    /// The endpoint (forgotten once it is in no table and has no idle
    /// connection here: see [`LocalClient::sweep`]).
    ep: Arc<Endpoint>,
    queue: VecDeque<Idle>,
}

/// One core's upstream connections, idle ones kept per endpoint; see the
/// module doc.
pub struct LocalClient {
    /// Idle connections by endpoint. A short list searched in order: a
    /// core talks to a handful of endpoints, and hashing each request's
    /// endpoint id would cost more than the scan.
    idle: RefCell<Vec<Kept>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// `limits.upstream_max_connections`.
    max_per_endpoint: usize,
    /// Shared by every core: a request waiting for room at an endpoint
    /// asks every core to close its idle connections to it.
    shed: Arc<Notify>,
}

/// Why a new connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No connection within `timeouts.connect`.
    #[error("connect timed out")]
    Timeout,
    /// Refused, unreachable, unresolvable…
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The HTTP/1 handshake failed.
    #[error("{0}")]
    Handshake(#[source] hyper::Error),
    /// The endpoint had `limits.upstream_max_connections` open, and none
    /// came free within `timeouts.connect`.
    #[error("{0} upstream connections open (limits.upstream_max_connections) and none came free in time")]
    AtLimit(usize),
}

impl LocalClient {
    /// No connections yet; at most `max_per_endpoint` open per endpoint in
    /// the process; `shed` is shared by every core.
    pub fn new(
        idle_timeout: Duration,
        connect_timeout: Duration,
        max_per_endpoint: usize,
        shed: Arc<Notify>,
    ) -> LocalClient {
        LocalClient {
            idle: RefCell::new(Vec::new()),
            idle_timeout,
            connect_timeout,
            max_per_endpoint,
            shed,
        }
    }

    /// The most recently used idle connection to `ep` that is still open and
    /// not expired. It may still turn out closed: callers check `ready()`.
    pub fn take(&self, ep: &Endpoint) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let queue = &mut idle.iter_mut().find(|k| k.id == ep.id)?.queue;
        while let Some(conn) = queue.pop_back() {
            if !conn.sender.is_closed() && conn.since.elapsed() < self.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end. It is
    /// closed instead when a request waits for room at its endpoint.
    pub fn put(&self, endpoint_id: u64, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        // The entry was made when the connection was opened, and stays
        // while the endpoint is in a table; an endpoint that left every
        // table keeps no connection.
        let Some(kept) = idle.iter_mut().find(|k| k.id == endpoint_id) else {
            return;
        };
        if kept.ep.conns.waiting() > 0 {
            return;
        }
        let queue = &mut kept.queue;
        if queue.len() >= MAX_IDLE_PER_ENDPOINT {
            queue.pop_front();
        }
        queue.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Room for one more connection to `ep`: counted open now unless the
    /// endpoint is at `limits.upstream_max_connections`.
    pub fn reserve(&self, ep: &Endpoint) -> Option<OpenConn> {
        ep.conns.try_open(self.max_per_endpoint)
    }

    /// Waits up to `timeouts.connect` for room at `ep` (an open connection
    /// to it closing anywhere), asking every core to close its idle ones
    /// to it meanwhile; the cold path of [`LocalClient::reserve`].
    pub async fn wait_for_room(&self, ep: &Endpoint) -> Result<OpenConn, ConnectError> {
        let _waiting = ep.conns.wait();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        loop {
            let freed = ep.conns.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(room) = self.reserve(ep) {
                return Ok(room);
            }
            // This core's own idle ones first, then the other cores'. A
            // core busy at the moment of the notification misses it: asked
            // again at the next turn.
            self.shed_waited();
            self.shed.notify_waiters();
            let turn = (tokio::time::Instant::now() + SHED_AGAIN).min(deadline);
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep_until(turn) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return self
                    .reserve(ep)
                    .ok_or(ConnectError::AtLimit(self.max_per_endpoint));
            }
        }
    }

    /// Closes this core's idle connections to the endpoints that a request
    /// waits for room at (each core does when [`LocalClient::wait_for_room`]
    /// asks).
    pub fn shed_waited(&self) {
        for kept in self.idle.borrow_mut().iter_mut() {
            if kept.ep.conns.waiting() > 0 {
                kept.queue.clear();
            }
        }
    }

    /// What a waiting request notifies to make every core call
    /// [`LocalClient::shed_waited`].
    pub fn shed_signal(&self) -> &Notify {
        &self.shed
    }

    /// Opens a new connection to `ep`: at once when the endpoint has room
    /// under `limits.upstream_max_connections`, else once one came free
    /// ([`LocalClient::wait_for_room`]).
    pub async fn open(&self, ep: &Arc<Endpoint>) -> Result<Sender, ConnectError> {
        let room = match self.reserve(ep) {
            Some(room) => room,
            None => self.wait_for_room(ep).await?,
        };
        self.connect(ep, room).await
    }

    /// Opens a new connection to `ep`, counted in `room` (see
    /// [`LocalClient::reserve`]), and drives it on this core.
    pub async fn connect(&self, ep: &Arc<Endpoint>, room: OpenConn) -> Result<Sender, ConnectError> {
        {
            let mut idle = self.idle.borrow_mut();
            if !idle.iter().any(|k| k.id == ep.id) {
                idle.push(Kept {
                    id: ep.id,
                    ep: Arc::clone(ep),
                    queue: VecDeque::new(),
                });
            }
        }
        let stream = match tokio::time::timeout(self.connect_timeout, ep.connect()).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            // See the server side (listener.rs): one buffer per message.
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::task::spawn_local(async move {
            // Counted open until the connection ends (or is handed to a
            // tunnel after an upgrade).
            let _room = room;
            // Ends when the upstream or we close it; errors surface on the request.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Drops expired and closed idle connections (run periodically), and
    /// forgets an endpoint that no table and no connection holds any more.
    pub fn sweep(&self) {
        let mut idle = self.idle.borrow_mut();
        idle.retain_mut(|k| {
            k.queue
                .retain(|c| !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout);
            !k.queue.is_empty() || Arc::strong_count(&k.ep) > 1
        });
    }

    /// Closes the idle connections of endpoints that `table` no longer has
    /// (a discovered address that went away): they get no new request.
    pub fn retain_endpoints_of(&self, table: &RoutingTable) {
        self.idle.borrow_mut().retain(|k| {
            table
                .pools
                .iter()
                .any(|p| p.endpoints.iter().any(|e| e.id == k.id))
        });
    }

    /// Closes every idle connection (at shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }
}

/// A connection to keep for reuse once its response body has been read.
pub struct Recycle {
    /// The connection.
    pub sender: Sender,
    /// This core's upstream connections, where it is kept.
    pub client: Rc<LocalClient>,
    /// Its endpoint's id.
    pub endpoint_id: u64,
}

impl Recycle {
    /// Keeps the connection for reuse by this core's next requests.
    pub fn give_back(self) {
        self.client.put(self.endpoint_id, self.sender);
    }
}
