//! A pool's endpoints, the choice of endpoint (round-robin), and the
//! in-flight count that tells when an inactive pool is drained.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// A named set of endpoints.
pub struct Pool {
    /// The pool's name (`blue`, `green`, …).
    pub name: String,
    /// Its endpoints, in file order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// `x-switchyard-pool`, pre-built.
    pub header: HeaderValue,
    /// The pool's metric handles; `metrics.inflight` is also the in-flight
    /// count that `/status` reads to report `drained`.
    pub metrics: PoolMetrics,
    /// Round-robin cursor.
    next: AtomicUsize,
}

impl Pool {
    /// A pool; `name` is validated by the table (a-z, 0-9, `-`, `_`).
    pub fn new(name: &str, endpoints: Vec<Arc<Endpoint>>, metrics: &Metrics) -> Pool {
        Pool {
            name: name.to_string(),
            endpoints,
            header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            metrics: metrics.pool(name),
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoint addresses, in order.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.addr.as_str())
    }

    /// Where round-robin starts for the next request.
    pub fn next_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Requests of this pool in flight (across every table that holds it).
    pub fn inflight(&self) -> i64 {
        self.metrics.inflight.get()
    }
}
