//! What the cores and the control plane share: the routing table, the
//! metrics, the data plane's fixed settings, readiness, and the cores'
//! connection counts.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::balance;
use crate::config;
use crate::control::Routes;
use crate::local;
use crate::metrics::Metrics;
use crate::pool::FailureTx;
use crate::tls::Tls;

/// The data plane's settings, fixed at start.
#[derive(Debug, Clone)]
pub struct DataOpts {
    /// Add `x-switchyard-pool` / `-generation` to responses.
    pub expose_headers: bool,
    /// Peers whose `X-Forwarded-For` is extended.
    pub trusted_proxies: Vec<IpNet>,
    /// One access-log line per request.
    pub access_log: bool,
    /// Until the upstream's response head.
    pub request_timeout: Duration,
    /// Idle keep-alive client connection.
    pub client_idle: Duration,
    /// Idle upstream connection kept for reuse.
    pub upstream_idle: Duration,
    /// Upstream connect.
    pub connect_timeout: Duration,
    /// Grace for in-flight requests and open tunnels at shutdown.
    pub shutdown_grace: Duration,
    /// `timeouts.send`: a response body the client takes nothing of for
    /// this long is cut (both sides closed).
    pub send_timeout: Duration,
    /// `timeouts.upstream_read`: a response body of which the upstream
    /// sends nothing for this long is cut (both sides closed).
    pub upstream_read: Duration,
    /// `timeouts.tunnel_idle`: a tunnel with no byte either way for this
    /// long is closed.
    pub tunnel_idle: Duration,
    /// `limits.upgrade_protocols`, lower-cased: the `Upgrade` protocols
    /// tunnelled; any other `Upgrade` is stripped.
    pub upgrade_protocols: Vec<String>,
    /// `limits.max_header_bytes`: the request head (hyper's parser enforces it).
    pub max_header_bytes: usize,
    /// `limits.max_headers`: header lines of a request (hyper's parser).
    pub max_headers: usize,
    /// `limits.max_body`: a request body's bytes; 0: no limit.
    pub max_body: u64,
    /// `limits.upstream_max_connections`: open upstream connections per
    /// endpoint per process.
    pub upstream_max_connections: usize,
    /// `limits.max_connections`: client connections per process (the
    /// balancer enforces it; kept here for the log line).
    pub max_connections: usize,
    /// `timeouts.tls_handshake`: a TLS handshake not done by then is closed.
    pub tls_handshake: Duration,
    /// `listen.h2c`: the plain listener also speaks HTTP/2 with prior knowledge.
    pub h2c: bool,
    /// With `listen.redirect_https`: the port that the plain listener's 308
    /// answers send clients to (the HTTPS listener's, once bound).
    pub redirect_https: Option<u16>,
}

impl DataOpts {
    pub(crate) fn of(file: &config::ProxyFile) -> DataOpts {
        let t = &file.timeouts;
        DataOpts {
            expose_headers: file.headers.expose,
            trusted_proxies: file.headers.trusted_proxies.clone(),
            access_log: file.log.access,
            request_timeout: t.request,
            client_idle: t.client_idle,
            upstream_idle: t.upstream_idle,
            connect_timeout: t.connect,
            shutdown_grace: t.shutdown,
            send_timeout: t.send,
            upstream_read: t.upstream_read,
            tunnel_idle: t.tunnel_idle,
            upgrade_protocols: file
                .limits
                .upgrade_protocols
                .iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
            max_header_bytes: usize::try_from(file.limits.max_header_bytes).unwrap_or(usize::MAX),
            max_headers: file.limits.max_headers,
            max_body: file.limits.max_body,
            upstream_max_connections: file.limits.upstream_max_connections,
            max_connections: file.limits.max_connections,
            tls_handshake: t.tls_handshake,
            h2c: file.listen.h2c,
            redirect_https: (file.listen.redirect_https)
                .then(|| file.listen.https.map(|a| a.port()))
                .flatten(),
        }
    }
}

/// Everything the cores and the control plane share.
pub struct Shared {
    /// The routing table: loaded by every request, stored only by the
    /// control plane's writer (see [`Routes`]).
    pub table: Arc<Routes>,
    /// Every metric, in the proxy's own registry.
    pub metrics: Arc<Metrics>,
    /// Fixed settings of the data plane.
    pub opts: DataOpts,
    /// `/readyz`: true once listening with a table, false from shutdown on.
    pub ready: AtomicBool,
    /// How a scrape collects the metrics the cores buffer.
    pub flush: local::FlushRequests,
    /// The cores' open client connections, kept even.
    pub balance: Arc<balance::Balancer>,
    /// Notified by a request that waits for room at an endpoint at
    /// `limits.upstream_max_connections`: every core then closes its idle
    /// connections to that endpoint (see client.rs).
    pub upstream_shed: Arc<tokio::sync::Notify>,
    /// Where the cores report runs of live-traffic failures to the health
    /// task (passive ejection).
    pub failures: FailureTx,
    /// The HTTPS listener's TLS (its certificates, reloaded by the control
    /// runtime); `None` without `[tls]`.
    pub tls: Option<Arc<Tls>>,
}

impl Shared {
    /// The Prometheus text exposition, with every request that ended before
    /// the call counted.
    pub async fn render_metrics(&self) -> Vec<u8> {
        self.flush.flush_all(Duration::from_millis(250)).await;
        // The in-flight gauges are read from the pools' per-core counts.
        for p in &self.table.load().pools {
            p.metrics.inflight.set(p.inflight());
        }
        self.metrics.render()
    }
}
