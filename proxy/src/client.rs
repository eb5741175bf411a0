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
//! Layout: this file (connect, keep, reuse, [`Recycle`]) and [`body`], the
//! request body sent upstream.

pub mod body;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::pool::Endpoint;
use crate::table::RoutingTable;

pub use body::UpstreamBody;

/// Idle connections kept per endpoint on one core.
pub const MAX_IDLE_PER_ENDPOINT: usize = 512;

/// A sender to one upstream connection.
pub type Sender = SendRequest<UpstreamBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One core's upstream connections, idle ones kept per endpoint; see the
/// module doc.
pub struct LocalClient {
    /// Idle connections by endpoint id. A short list searched in order: a
    /// core talks to a handful of endpoints, and hashing each request's
    /// endpoint id would cost more than the scan.
    idle: RefCell<Vec<(u64, VecDeque<Idle>)>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
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
}

impl LocalClient {
    /// No connections yet.
    pub fn new(idle_timeout: Duration, connect_timeout: Duration) -> LocalClient {
        LocalClient {
            idle: RefCell::new(Vec::new()),
            idle_timeout,
            connect_timeout,
        }
    }

    /// The most recently used idle connection to `ep` that is still open and
    /// not expired. It may still turn out closed: callers check `ready()`.
    pub fn take(&self, ep: &Endpoint) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let (_, queue) = idle.iter_mut().find(|(id, _)| *id == ep.id)?;
        while let Some(conn) = queue.pop_back() {
            if !conn.sender.is_closed() && conn.since.elapsed() < self.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub fn put(&self, endpoint_id: u64, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let queue = match idle.iter().position(|(id, _)| *id == endpoint_id) {
            Some(i) => &mut idle[i].1,
            None => {
                idle.push((endpoint_id, VecDeque::new()));
                &mut idle.last_mut().expect("just pushed").1
            }
        };
        if queue.len() >= MAX_IDLE_PER_ENDPOINT {
            queue.pop_front();
        }
        queue.push_back(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Opens a new connection to `ep` and drives it on this core.
    pub async fn connect(&self, ep: &Endpoint) -> Result<Sender, ConnectError> {
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
            // Ends when the upstream or we close it; errors surface on the request.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Drops expired and closed idle connections (run periodically).
    pub fn sweep(&self) {
        let mut idle = self.idle.borrow_mut();
        idle.retain_mut(|(_, queue)| {
            queue.retain(|c| !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout);
            !queue.is_empty()
        });
    }

    /// Closes the idle connections of endpoints that `table` no longer has
    /// (a discovered address that went away): they get no new request.
    pub fn retain_endpoints_of(&self, table: &RoutingTable) {
        self.idle.borrow_mut().retain(|(id, _)| {
            table
                .pools
                .iter()
                .any(|p| p.endpoints.iter().any(|e| e.id == *id))
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
