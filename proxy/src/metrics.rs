//! Prometheus metrics: a [`Metrics`] value owning its own `Registry` (never
//! the global one, so two proxies can live in one process), the per-pool
//! handles resolved once ([`PoolMetrics`]), and the per-core buffers the
//! request path writes to ([`LocalPoolMetrics`]).

use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// `switchyard_upstream_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connect refused, reset or timed out before anything was sent.
    Connect,
    /// No answer within `timeouts.request`.
    Timeout,
    /// The connection failed after the request was sent.
    Reset,
    /// No byte from the upstream for `timeouts.upstream_read` mid-response.
    ReadTimeout,
    /// The response body ended before its announced end (cut mid-body).
    Truncated,
}

impl ErrorKind {
    const ALL: [ErrorKind; 5] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::ReadTimeout,
        ErrorKind::Truncated,
    ];
    fn label(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::ReadTimeout => "read_timeout",
            ErrorKind::Truncated => "truncated",
        }
    }
}

/// `switchyard_rejected_total{reason}`: requests or connections the proxy
/// refused or cut itself. A fixed list: label values never come from
/// request data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The HTTP parser refused the request (400).
    BadRequest,
    /// The request target is too long (414).
    UriTooLong,
    /// The request head is too large (431).
    HeadTooLarge,
    /// A method the proxy does not forward (`CONNECT`: 405).
    MethodNotAllowed,
    /// The client did not read the response for `timeouts.send`.
    SendTimeout,
    /// A tunnel carried no byte either way for `timeouts.tunnel_idle`.
    TunnelIdle,
    /// A client connection beyond `limits.max_connections`: closed at once.
    TooManyConnections,
    /// A request body over `limits.max_body` (413, or the connection closed).
    BodyTooLarge,
    /// No upstream connection came free within `timeouts.connect` with the
    /// endpoint at `limits.upstream_max_connections` (503).
    UpstreamConnectionLimit,
    /// The request body stopped arriving from the client before
    /// `timeouts.request` (408, connection closed).
    BodyTimeout,
}

impl Reject {
    /// Every reason, in the order of [`Metrics::rejected`]'s handles.
    pub const ALL: [Reject; 10] = [
        Reject::BadRequest,
        Reject::UriTooLong,
        Reject::HeadTooLarge,
        Reject::MethodNotAllowed,
        Reject::SendTimeout,
        Reject::TunnelIdle,
        Reject::TooManyConnections,
        Reject::BodyTooLarge,
        Reject::UpstreamConnectionLimit,
        Reject::BodyTimeout,
    ];
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::UriTooLong => "uri_too_long",
            Reject::HeadTooLarge => "head_too_large",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::SendTimeout => "send_timeout",
            Reject::TunnelIdle => "tunnel_idle",
            Reject::TooManyConnections => "too_many_connections",
            Reject::BodyTooLarge => "body_too_large",
            Reject::UpstreamConnectionLimit => "upstream_connection_limit",
            Reject::BodyTimeout => "body_timeout",
        }
    }
}

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const RELOAD_RESULTS: [&str; 3] = ["ok", "error", "unchanged"];
const SOURCES: [&str; 4] = ["admin", "file", "rollback", "auto"];

/// Every metric family of the proxy, registered in one `Registry`.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    inflight: IntGaugeVec,
    active_pool: IntGaugeVec,
    switches: IntCounterVec,
    /// `switchyard_config_generation`.
    pub generation: IntGauge,
    reloads: IntCounterVec,
    upstream_errors: IntCounterVec,
    retries: IntCounterVec,
    healthy: IntGaugeVec,
    /// `switchyard_last_switch_timestamp_seconds`.
    pub last_switch: IntGauge,
    client_connections: IntGaugeVec,
    pool_ready: IntGaugeVec,
    /// `switchyard_switch_pending`: 1 while a file switch waits for its pool.
    pub switch_pending: IntGauge,
    /// `switchyard_admin_override`: 1 while an admin switch or rollback
    /// overrides the file's `active`.
    pub admin_override: IntGauge,
    file_active: IntGaugeVec,
    split_weight: IntGaugeVec,
    /// `switchyard_drain_seconds`: from a switch to the old pool's drained.
    pub drain_seconds: Histogram,
    /// `switchyard_rejected_total{reason}`, one handle per [`Reject`].
    rejected: [IntCounter; Reject::ALL.len()],
    pool_endpoints: IntGaugeVec,
    pool_panic: IntGaugeVec,
    discovery_errors: IntCounterVec,
    /// `switchyard_tls_handshakes_total{result}`: `ok`, then `error`.
    tls_handshakes: [IntCounter; 2],
    tls_reloads: IntCounterVec,
    tls_expiry: IntGaugeVec,
}

/// The `state` labels of `pool_endpoints`, in the order of `pool::EndpointHealth`.
pub const ENDPOINT_STATES: [&str; 4] = ["unknown", "healthy", "unhealthy", "ejected"];

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only fails on an invalid metric definition or a duplicate registration,
    // both programming errors fixed at compile time in this module.
    r.expect("metric definitions in metrics.rs are valid and registered once")
}

impl Metrics {
    /// Creates and registers every family in a new registry.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("switchyard".into()), None).expect("static prefix is valid");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let requests = counter(
            "requests_total",
            "Requests answered, by pool and status class.",
            &["pool", "code"],
        );
        let duration = must(HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request head to end of response, by pool.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["pool"],
        ));
        must(registry.register(Box::new(duration.clone())));
        let inflight = gauge("inflight_requests", "Requests in flight, by pool.", &["pool"]);
        let active_pool = gauge(
            "active_pool",
            "1 for the pool that gets new requests, else 0.",
            &["pool"],
        );
        let switches = counter(
            "switches_total",
            "Changes of the active pool, by source.",
            &["source"],
        );
        let generation = must(IntGauge::new(
            "config_generation",
            "Generation of the routing table.",
        ));
        must(registry.register(Box::new(generation.clone())));
        let reloads = counter(
            "config_reloads_total",
            "Upstreams file reloads, by result.",
            &["result"],
        );
        let upstream_errors = counter(
            "upstream_errors_total",
            "Upstream failures, by pool and kind.",
            &["pool", "kind"],
        );
        let retries = counter(
            "upstream_retries_total",
            "Requests retried on another connection, by pool.",
            &["pool"],
        );
        let healthy = gauge(
            "upstream_healthy",
            "1 while routing uses the endpoint (unknown or healthy, or any in a panicking pool).",
            &["pool", "endpoint"],
        );
        let last_switch = must(IntGauge::new(
            "last_switch_timestamp_seconds",
            "Unix time of the last change of the active pool.",
        ));
        must(registry.register(Box::new(last_switch.clone())));
        let client_connections = gauge(
            "client_connections",
            "Open client connections, by listener.",
            &["listener"],
        );
        let pool_ready = gauge(
            "pool_ready",
            "1 when the pool is ready (enough endpoints count as healthy for min_healthy).",
            &["pool"],
        );
        let switch_pending = must(IntGauge::new(
            "switch_pending",
            "1 while a file switch waits for its pool to be ready.",
        ));
        must(registry.register(Box::new(switch_pending.clone())));
        let admin_override = must(IntGauge::new(
            "admin_override",
            "1 while an admin switch or rollback overrides the upstreams file's active pool.",
        ));
        must(registry.register(Box::new(admin_override.clone())));
        let file_active = gauge(
            "file_active",
            "1 for the pool the upstreams file names as active (override or not), else 0.",
            &["pool"],
        );
        let split_weight = gauge(
            "split_weight",
            "Share (0-100) of new requests the pool gets: 100 for the active pool without a split.",
            &["pool"],
        );
        let drain_seconds = must(Histogram::with_opts(
            HistogramOpts::new(
                "drain_seconds",
                "Time from a switch to the old pool having nothing in flight (tunnels included).",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
            ]),
        ));
        must(registry.register(Box::new(drain_seconds.clone())));
        let rejected_family = counter(
            "rejected_total",
            "Requests or connections refused or cut by the proxy itself, by reason.",
            &["reason"],
        );
        let rejected = Reject::ALL.map(|r| rejected_family.with_label_values(&[r.label()]));
        let pool_endpoints = gauge(
            "pool_endpoints",
            "Endpoints of a pool, by health state.",
            &["pool", "state"],
        );
        let pool_panic = gauge(
            "pool_panic",
            "1 while none of the pool's endpoints is usable and routing uses them all anyway.",
            &["pool"],
        );
        let discovery_errors = counter(
            "discovery_errors_total",
            "Failed DNS resolutions of a pool's names (the last good addresses stay).",
            &["pool"],
        );
        let handshakes = counter(
            "tls_handshakes_total",
            "TLS handshakes on the HTTPS listener, by result.",
            &["result"],
        );
        let tls_handshakes = ["ok", "error"].map(|r| handshakes.with_label_values(&[r]));
        let tls_reloads = counter(
            "tls_reloads_total",
            "Certificate pairs read after a change of their files, by result (error: rejected, the old pair serves).",
            &["result"],
        );
        let tls_expiry = gauge(
            "tls_cert_expiry_timestamp_seconds",
            "Unix time at which the certificate being served expires (not_after), by certificate.",
            &["name"],
        );
        // Families without labels from the config are initialised so they show at 0.
        for s in SOURCES {
            switches.with_label_values(&[s]);
        }
        for r in RELOAD_RESULTS {
            reloads.with_label_values(&[r]);
        }
        Metrics {
            registry,
            requests,
            duration,
            inflight,
            active_pool,
            switches,
            generation,
            reloads,
            upstream_errors,
            retries,
            healthy,
            last_switch,
            client_connections,
            pool_ready,
            switch_pending,
            admin_override,
            file_active,
            split_weight,
            drain_seconds,
            rejected,
            pool_endpoints,
            pool_panic,
            discovery_errors,
            tls_handshakes,
            tls_reloads,
            tls_expiry,
        }
    }

    /// The handle of one refusal reason, for code that counts it without
    /// access to the metrics (the request body sent upstream).
    pub fn rejected_counter(&self, reason: Reject) -> IntCounter {
        self.rejected[reason as usize].clone()
    }

    /// Counts one TLS handshake (pre-resolved handles).
    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes[usize::from(!ok)].inc();
    }

    /// Counts one read of a changed certificate pair (`ok` or `error`).
    pub fn tls_reload(&self, result: &str) {
        self.tls_reloads.with_label_values(&[result]).inc();
    }

    /// Shows the series of `tls_reloads_total` at 0 (when TLS is configured).
    pub fn tls_init(&self) {
        for r in ["ok", "error"] {
            self.tls_reloads.with_label_values(&[r]);
        }
    }

    /// Sets `tls_cert_expiry_timestamp_seconds{name}`.
    pub fn tls_expiry(&self, name: &str, not_after: i64) {
        self.tls_expiry.with_label_values(&[name]).set(not_after);
    }

    /// Counts one refusal (a pre-resolved handle: fine on the hot path).
    pub fn rejected(&self, reason: Reject) {
        // `Reject::ALL` lists every variant in declaration order.
        self.rejected[reason as usize].inc();
    }

    /// Resolves (and creates at 0) every series of one pool, for the hot path.
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        let requests = CODE_CLASSES.map(|c| self.requests.with_label_values(&[pool, c]));
        let errors = ErrorKind::ALL.map(|k| self.upstream_errors.with_label_values(&[pool, k.label()]));
        PoolMetrics {
            requests,
            duration: self.duration.with_label_values(&[pool]),
            inflight: self.inflight.with_label_values(&[pool]),
            active: self.active_pool.with_label_values(&[pool]),
            ready: self.pool_ready.with_label_values(&[pool]),
            file_active: self.file_active.with_label_values(&[pool]),
            split_weight: self.split_weight.with_label_values(&[pool]),
            errors,
            retries: self.retries.with_label_values(&[pool]),
            endpoints: ENDPOINT_STATES.map(|s| self.pool_endpoints.with_label_values(&[pool, s])),
            panic: self.pool_panic.with_label_values(&[pool]),
            discovery_errors: self.discovery_errors.with_label_values(&[pool]),
        }
    }

    /// The `upstream_healthy` gauge of one endpoint.
    pub fn endpoint_healthy(&self, pool: &str, endpoint: &str) -> IntGauge {
        self.healthy.with_label_values(&[pool, endpoint])
    }

    /// Deletes every series of a pool that a new table removed.
    pub fn remove_pool(&self, pool: &str) {
        for c in CODE_CLASSES {
            let _ = self.requests.remove_label_values(&[pool, c]);
        }
        for k in ErrorKind::ALL {
            let _ = self.upstream_errors.remove_label_values(&[pool, k.label()]);
        }
        let _ = self.duration.remove_label_values(&[pool]);
        let _ = self.inflight.remove_label_values(&[pool]);
        let _ = self.active_pool.remove_label_values(&[pool]);
        let _ = self.pool_ready.remove_label_values(&[pool]);
        let _ = self.file_active.remove_label_values(&[pool]);
        let _ = self.split_weight.remove_label_values(&[pool]);
        let _ = self.retries.remove_label_values(&[pool]);
        for s in ENDPOINT_STATES {
            let _ = self.pool_endpoints.remove_label_values(&[pool, s]);
        }
        let _ = self.pool_panic.remove_label_values(&[pool]);
        let _ = self.discovery_errors.remove_label_values(&[pool]);
    }

    /// Deletes the `upstream_healthy` series of a removed endpoint.
    pub fn remove_endpoint(&self, pool: &str, endpoint: &str) {
        let _ = self.healthy.remove_label_values(&[pool, endpoint]);
    }

    /// Counts a switch of the active pool.
    pub fn switched(&self, source: &str) {
        self.switches.with_label_values(&[source]).inc();
    }

    /// Counts a reload of the upstreams file (`ok`, `error`, `unchanged`).
    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The `client_connections` gauge of one listener.
    pub fn client_connections(&self, listener: &str) -> IntGauge {
        self.client_connections.with_label_values(&[listener])
    }

    /// The Prometheus text exposition of the series as they stand; what the
    /// cores still buffer is not in it (`Shared::render_metrics` collects
    /// that first).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on a malformed family, which `new` rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// One pool's series, resolved once when the pool is built.
#[derive(Clone)]
pub struct PoolMetrics {
    requests: [IntCounter; 5],
    duration: Histogram,
    /// `inflight_requests{pool}`: set from the pool's per-core count when
    /// the metrics are rendered.
    pub inflight: IntGauge,
    /// `active_pool{pool}`.
    pub active: IntGauge,
    /// `pool_ready{pool}`: set when a table is published.
    pub ready: IntGauge,
    /// `file_active{pool}`: set when a table is published.
    pub file_active: IntGauge,
    /// `split_weight{pool}`: the pool's share (0-100); set when a table is published.
    pub split_weight: IntGauge,
    errors: [IntCounter; ErrorKind::ALL.len()],
    /// `upstream_retries_total{pool}`.
    pub retries: IntCounter,
    /// `pool_endpoints{pool,state}`, in [`ENDPOINT_STATES`] order.
    pub endpoints: [IntGauge; 4],
    /// `pool_panic{pool}`.
    pub panic: IntGauge,
    /// `discovery_errors_total{pool}`.
    pub discovery_errors: IntCounter,
}

impl PoolMetrics {
    /// This core's buffer for the per-request series.
    pub fn local(&self) -> LocalPoolMetrics {
        LocalPoolMetrics {
            requests: self.requests.each_ref().map(IntCounter::local),
            duration: self.duration.local(),
        }
    }

    /// Counts one upstream failure.
    pub fn error(&self, kind: ErrorKind) {
        // `ErrorKind::ALL` lists every kind in declaration order.
        self.errors[kind as usize].inc();
    }
}

/// One core's buffer of a pool's per-request series (requests by class and
/// duration): updated without atomics on the request path, added to the
/// shared series by [`LocalPoolMetrics::flush`], which the core calls every
/// [`FLUSH_EVERY`] requests and on a short timer, and which dropping it does.
pub struct LocalPoolMetrics {
    requests: [LocalIntCounter; 5],
    duration: LocalHistogram,
}

/// Requests a core records before it adds them to the shared series.
pub const FLUSH_EVERY: u64 = 64;

impl LocalPoolMetrics {
    /// Records one answered request: its status class and its duration.
    /// Returns true when the buffer should be flushed.
    pub fn request(&self, status: u16, seconds: f64) -> bool {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
        self.duration.observe(seconds);
        self.duration.get_sample_count() >= FLUSH_EVERY
    }

    /// Adds what this core recorded to the shared series.
    pub fn flush(&self) {
        for c in &self.requests {
            c.flush();
        }
        self.duration.flush();
    }
}

impl Drop for LocalPoolMetrics {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_label_lists_are_in_declaration_order() {
        // `error` and `rejected` index their handles by the enum's discriminant.
        assert!(ErrorKind::ALL.iter().enumerate().all(|(i, k)| *k as usize == i));
        assert!(Reject::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
    }

    #[test]
    fn every_rejection_reason_shows_at_zero_and_counts() {
        let m = Metrics::new();
        m.rejected(Reject::HeadTooLarge);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("switchyard_rejected_total{reason=\"head_too_large\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_rejected_total{reason=\"send_timeout\"} 0"),
            "{text}"
        );
    }
}
