//! translation-api: the service that switchyard fronts.
//!
//! The same contract as the original `th3-server.py` (see its
//! README.md, "The API"), built to be fast enough never to be the bottleneck of a
//! proxy benchmark.
//!
//! Layout:
//! - [`routes`]: [`respond`](routes::respond), the one synchronous function
//!   that answers every request from pre-built bytes, the phrase table,
//!   [`AppState`], and [`app`], an axum `Router` around `respond` for
//!   socket-free tests.
//! - [`client_ip`]: who the client is (peer address, or the right-most
//!   untrusted `X-Forwarded-For` entry behind a trusted proxy).
//! - [`stats`]: the Redis `HINCRBY requests_by_ip` pipeline, off the response
//!   path.
//! - [`log`]: per-worker batching in front of the non-blocking log writer.
//! - [`server`]: one `current_thread` runtime per worker thread, each with its
//!   own `SO_REUSEPORT` listener; the access log; graceful shutdown
//!   ([`spawn`], [`Running`]).
//!
//! Request flow: the kernel hands a connection to one worker's listener →
//! hyper parses the request on that worker's runtime → the connection's
//! service calls `respond` with the peer address → a translate request
//! queues its client address for Redis with a non-blocking `try_send` →
//! hyper writes the answer → the access-log line goes to the worker's log
//! buffer, handed to the non-blocking writer thread in batches.

pub mod client_ip;
pub mod log;
pub mod routes;
pub mod server;
pub mod stats;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use routes::{app, AppState};
pub use server::{spawn, Running};

/// The version compiled in: `TRANSLATION_API_VERSION` at `cargo build` time
/// (the Dockerfile's `--build-arg`), else the crate version.
pub fn build_version() -> &'static str {
    match option_env!("TRANSLATION_API_VERSION") {
        Some(v) if !v.is_empty() => v,
        _ => env!("CARGO_PKG_VERSION"),
    }
}

/// The default `--listen` address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080);

/// The default grace period for in-flight requests once the listeners close.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The proxies trusted by default to set `X-Forwarded-For`: loopback
/// (`127.0.0.0/8` and `::1`), i.e. a proxy on the same host or pod.
pub fn default_trusted_proxies() -> Vec<ipnet::IpNet> {
    vec![
        ipnet::IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        ipnet::IpNet::new_assert(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ]
}

/// Everything [`spawn`] needs to run the service.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port ([`Running::addr`] tells which).
    pub listen: SocketAddr,
    /// The version `/version` reports.
    pub version: String,
    /// Peers whose `X-Forwarded-For` is believed; default loopback.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// One `tracing` event per request (target `access`). `false` in
    /// [`Config::new`]; the command line turns it on by default.
    pub access_log: bool,
    /// After [`Running::begin_shutdown`]: keep serving this long with
    /// `/readyz` = 503 before the listeners close. Default 0.
    pub shutdown_delay: Duration,
    /// Then: how long in-flight requests get to finish. Default 30 s.
    pub shutdown_grace: Duration,
    /// `host` or `host:port` (default port 6379) of the Redis that counts
    /// requests per client address; `None` (the default) counts nothing.
    /// Redis being away at start does not stop the service: it logs a
    /// warning naming the address and connects in the background.
    pub redis_addr: Option<String>,
    /// Fail the start ([`Error::RedisRequired`]) when `redis_addr` does not
    /// answer `PING` within 3 s (`--require-redis`). Default `false`.
    pub require_redis: bool,
    /// Number of worker threads, each with its own runtime and listener;
    /// 0 (the default) = one per available core.
    pub workers: usize,
    /// A testing and demo aid (`--fail-ratio`): this share (0.0-1.0) of
    /// translate requests answers 500, evenly spaced (see
    /// [`routes::FailRatio`]). 0 (the default) fails nothing.
    pub fail_ratio: f64,
}

impl Config {
    /// A configuration with the defaults: loopback trusted, no access log,
    /// no shutdown delay, 30 s grace, no Redis (and not required), one
    /// worker per core.
    pub fn new(listen: SocketAddr, version: impl Into<String>) -> Self {
        Config {
            listen,
            version: version.into(),
            trusted_proxies: default_trusted_proxies(),
            access_log: false,
            shutdown_delay: Duration::ZERO,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            redis_addr: None,
            require_redis: false,
            workers: 0,
            fail_ratio: 0.0,
        }
    }
}

/// What can go wrong starting or running the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A tokio runtime or a worker thread could not be started.
    #[error("cannot start a worker: {0}")]
    Runtime(#[source] std::io::Error),
    /// `REDIS_ADDR` is not `host` or `host:port`.
    #[error("invalid Redis address {addr:?}: {reason}")]
    RedisAddr { addr: String, reason: String },
    /// Redis did not answer `PING` at start and [`Config::require_redis`]
    /// is set (without it, the service starts anyway and connects later).
    #[error("cannot reach Redis at {addr} (--require-redis: not starting without it): {reason}")]
    RedisRequired { addr: String, reason: String },
    /// A worker thread panicked.
    #[error("worker thread {0} panicked")]
    WorkerPanicked(String),
}
