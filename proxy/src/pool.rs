//! A pool's endpoints and the in-flight count that tells when an inactive
//! pool is drained.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use prometheus::IntGauge;

use crate::metrics::{Metrics, PoolMetrics};

static NEXT_ENDPOINT_ID: AtomicU64 = AtomicU64::new(1);

/// One upstream address of one pool. Its `id` keys the per-core connection
/// pools, so a connection opened for one pool is never used for another.
pub struct Endpoint {
    /// Unique in the process; kept while the endpoint stays in the tables.
    pub id: u64,
    /// As written in the file: `ip:port` or `name:port`.
    pub addr: String,
    /// The parsed address when `addr` is an IP literal; names are resolved
    /// each time a new connection is opened.
    pub socket: Option<SocketAddr>,
    /// `upstream_healthy{pool,endpoint}`: 1 until active health checks exist.
    pub healthy: IntGauge,
    /// Its open upstream connections, all cores together, for
    /// `limits.upstream_max_connections`.
    pub conns: Arc<OpenConns>,
}

/// The open upstream connections of one endpoint (idle and busy, every
/// core): counted when one is opened and uncounted when it closes (never
/// per request), on a cache line of their own. A request that finds the
/// endpoint at its limit waits for one to close ([`OpenConns::freed`]);
/// while one waits, the cores close their idle connections to it rather
/// than keep them (see `client.rs`).
#[repr(align(128))]
#[derive(Default)]
pub struct OpenConns {
    open: AtomicUsize,
    waiting: AtomicUsize,
    /// Notified when a connection closes while a request waits.
    pub freed: tokio::sync::Notify,
}

impl OpenConns {
    /// Counts one more open connection unless `max` are open.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<OpenConn> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenConn(Arc::clone(self)))
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Requests waiting for a connection to come free.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Counts a request as waiting until the guard is dropped.
    pub fn wait(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(Arc::clone(self))
    }
}

/// One open upstream connection of an endpoint, uncounted when dropped
/// (with the task that drives the connection).
pub struct OpenConn(Arc<OpenConns>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if self.0.waiting.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_waiters();
        }
    }
}

/// A request waiting for an upstream connection to come free.
pub struct Waiting(Arc<OpenConns>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Endpoint {
    /// A new endpoint of pool `pool`.
    pub fn new(pool: &str, addr: &str, metrics: &Metrics) -> Endpoint {
        let healthy = metrics.endpoint_healthy(pool, addr);
        healthy.set(1);
        Endpoint {
            id: NEXT_ENDPOINT_ID.fetch_add(1, Ordering::Relaxed),
            addr: addr.to_string(),
            socket: addr.parse().ok(),
            healthy,
            conns: Arc::new(OpenConns::default()),
        }
    }

    /// Opens a TCP connection (resolving a DNS name first, trying each address).
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match self.socket {
            Some(addr) => tokio::net::TcpStream::connect(addr).await,
            None => tokio::net::TcpStream::connect(self.addr.as_str()).await,
        }
    }
}

/// One core's share of an in-flight count (and of the tunnels among it),
/// alone on its cache line so that cores never write the same line.
#[repr(align(128))]
#[derive(Default)]
struct Slot {
    inflight: AtomicI64,
    tunnels: AtomicI64,
}

/// Requests of a pool in flight (an open tunnel is one until it closes),
/// and the tunnels among them, counted per core: each core adds to its own
/// slot (no cache line shared between cores on the request path) and a
/// reader sums the slots. Exact, not sampled: `/status` says `drained` only
/// when the sum is 0.
pub struct Inflight {
    slots: Box<[Slot]>,
    /// When the pool last became drained (inactive with nothing in flight),
    /// in Unix milliseconds; 0 while active or not drained yet. Written only
    /// by the control plane's writer, read by `/status`; never on the
    /// request path.
    drained_at_ms: AtomicU64,
}

impl Inflight {
    /// A count with one slot per CPU (a core index wraps onto them).
    pub fn new() -> Inflight {
        let n = std::thread::available_parallelism().map_or(1, usize::from);
        Inflight {
            slots: (0..n).map(|_| Slot::default()).collect(),
            drained_at_ms: AtomicU64::new(0),
        }
    }

    /// When the pool last became drained, as the writer recorded it (None
    /// while it is active or still has requests in flight since a switch).
    pub fn drained_at(&self) -> Option<SystemTime> {
        match self.drained_at_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Records when the pool became drained (None: it is active, or a switch
    /// away from it has just begun its drain). Called by the writer only.
    pub fn set_drained_at(&self, at: Option<SystemTime>) {
        let ms = at.map_or(0, |t| {
            let ms = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            u64::try_from(ms).unwrap_or(u64::MAX).max(1)
        });
        self.drained_at_ms.store(ms, Ordering::Release);
    }

    /// Adds `delta` on core `core`.
    pub fn add(&self, core: usize, delta: i64) {
        self.slots[core % self.slots.len()]
            .inflight
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// The total over every core.
    pub fn get(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| s.inflight.load(Ordering::Relaxed))
            .sum()
    }

    /// Adds `delta` open tunnels on core `core` (each is also in flight).
    pub fn add_tunnels(&self, core: usize, delta: i64) {
        self.slots[core % self.slots.len()]
            .tunnels
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Open tunnels over every core.
    pub fn tunnels(&self) -> i64 {
        self.slots.iter().map(|s| s.tunnels.load(Ordering::Relaxed)).sum()
    }
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight::new()
    }
}

/// A named set of endpoints.
pub struct Pool {
    /// The pool's name (`blue`, `green`, …).
    pub name: String,
    /// Its endpoints, in file order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// `x-switchyard-pool`, pre-built.
    pub header: HeaderValue,
    /// The pool's metric handles.
    pub metrics: PoolMetrics,
    /// Requests in flight; shared with the pool of the same name that a
    /// table change rebuilt (new endpoints), so the count carries over.
    pub inflight: Arc<Inflight>,
}

impl Pool {
    /// A pool; `name` is validated by the table (a-z, 0-9, `-`, `_`).
    /// `inflight` is the count of the pool it replaces, if any.
    pub fn new(
        name: &str,
        endpoints: Vec<Arc<Endpoint>>,
        metrics: &Metrics,
        inflight: Option<Arc<Inflight>>,
    ) -> Pool {
        Pool {
            name: name.to_string(),
            endpoints,
            header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            metrics: metrics.pool(name),
            inflight: inflight.unwrap_or_default(),
        }
    }

    /// The endpoint addresses, in order.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.addr.as_str())
    }

    /// `(endpoints that count for the switch gate, all endpoints)`: what
    /// the pool's readiness is computed from. Without health checks every
    /// endpoint counts. (The seam with active health checks and passive
    /// ejection, which decide which endpoints count.)
    pub fn gate_count(&self) -> (usize, usize) {
        (self.endpoints.len(), self.endpoints.len())
    }

    /// Requests of this pool in flight (across every table that holds it).
    pub fn inflight(&self) -> i64 {
        self.inflight.get()
    }

    /// Open tunnels of this pool (across every table that holds it); each
    /// also counts in [`Pool::inflight`].
    pub fn tunnels(&self) -> i64 {
        self.inflight.tunnels()
    }
}
