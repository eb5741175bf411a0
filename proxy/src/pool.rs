//! A pool's endpoints and the in-flight count that tells when an inactive
//! pool is drained.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

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
}

impl Inflight {
    /// A count with one slot per CPU (a core index wraps onto them).
    pub fn new() -> Inflight {
        let n = std::thread::available_parallelism().map_or(1, usize::from);
        Inflight {
            slots: (0..n).map(|_| Slot::default()).collect(),
        }
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
