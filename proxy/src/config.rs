//! The serde shapes of `proxy.toml` and `upstreams.toml`, and their loading.
//!
//! These are the *raw* shapes, checked for syntax, unknown keys and the
//! features that are not built yet. Turning an [`UpstreamsFile`] into the
//! routing table (and its semantic checks) is the `table` module's job.
//! The errors found in these files ([`ConfigError`]) are defined here too,
//! so that this module depends on no other of the crate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// Default `[upstreams] reread`: the periodic re-read backing up file events.
pub const DEFAULT_REREAD: Duration = Duration::from_secs(5);
/// Default `[timeouts] connect`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `[timeouts] request`: the whole request, upstream answer included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `[timeouts] client_idle`.
pub const DEFAULT_CLIENT_IDLE: Duration = Duration::from_secs(60);
/// Default `[timeouts] upstream_idle`; below the upstream's own keep-alive.
pub const DEFAULT_UPSTREAM_IDLE: Duration = Duration::from_secs(50);
/// Default `[timeouts] shutdown_delay`.
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::ZERO;
/// Default `[timeouts] shutdown`: grace for in-flight requests and open tunnels.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default `[timeouts] send`: a response the client takes nothing of for
/// this long is cut (nginx's `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `[timeouts] upstream_read`: a response body of which the upstream
/// sends nothing for this long is cut.
pub const DEFAULT_UPSTREAM_READ: Duration = Duration::from_secs(60);
/// Default `[timeouts] tunnel_idle`: an upgraded connection with no byte
/// either way for this long is closed.
pub const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(3600);
/// Default `timeouts.admin_body`: an admin request body still arriving.
pub const DEFAULT_ADMIN_BODY: Duration = Duration::from_secs(10);
/// Default `[timeouts] tls_handshake`: a TLS handshake not done by then is
/// closed.
pub const DEFAULT_TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// Default `[limits] upgrade_protocols`: the `Upgrade` tokens tunnelled.
pub const DEFAULT_UPGRADE_PROTOCOLS: [&str; 1] = ["websocket"];
/// Default `[limits] max_connections`: client connections per process (all
/// cores together); a new one beyond is accepted and closed at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default `[limits] max_header_bytes`: the request head (request line and
/// header lines), 32 KiB; beyond: 431.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
/// Default `[limits] max_headers`: header lines of a request; beyond: 431.
/// Also hyper's own default: up to 100 its parser keeps the header slots on
/// the stack; more costs a heap allocation per request.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default `[limits] max_body`: 0, no limit on a request body.
pub const DEFAULT_MAX_BODY: u64 = 0;
/// Default `[limits] upstream_max_connections`: open upstream connections
/// (idle and busy) per endpoint per process.
pub const DEFAULT_UPSTREAM_MAX_CONNECTIONS: usize = 1024;
/// Smallest `max_header_bytes` accepted: a request line and a `Host`.
pub const MIN_HEADER_BYTES: u64 = 1024;
/// Largest `max_header_bytes` accepted (nginx's largest default is 32 KiB;
/// this leaves room without letting one head take megabytes).
pub const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Most header lines `limits.max_headers` may allow.
pub const MAX_HEADERS_LIMIT: usize = 10_000;
/// Most data-plane cores `runtime.cores` may ask for.
pub const MAX_CORES: usize = 1024;
/// Default `[discovery] every`: how often DNS names are resolved again.
pub const DEFAULT_DISCOVERY_EVERY: Duration = Duration::from_secs(5);
/// Default `[health] interval`: each endpoint is checked once per interval.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Default `[health] timeout`: a check with no 2xx answer within it fails.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Default `[health] healthy_after`: passed checks in a row to turn healthy.
pub const DEFAULT_HEALTHY_AFTER: u32 = 2;
/// Default `[health] unhealthy_after`: failed checks in a row to turn unhealthy.
pub const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
/// Default `[health] eject_after`: live-traffic failures in a row that eject an endpoint.
pub const DEFAULT_EJECT_AFTER: u32 = 5;
/// Default `[health] eject_for`: how long a passive ejection lasts without active checks.
pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
/// Default `[health] max_ejected_percent`.
pub const DEFAULT_MAX_EJECTED_PERCENT: u32 = 50;
/// Largest upstreams file we read; anything bigger is rejected unparsed.
pub const MAX_UPSTREAMS_BYTES: u64 = 1 << 20;

/// `proxy.toml`: static settings, read once at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// `[listen]`.
    pub listen: Listen,
    /// `[admin]`.
    #[serde(default)]
    pub admin: Admin,
    /// `[upstreams]`.
    pub upstreams: UpstreamsRef,
    /// `[headers]`.
    #[serde(default)]
    pub headers: Headers,
    /// `[log]`.
    #[serde(default)]
    pub log: Log,
    /// `[timeouts]`.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// `[limits]`.
    #[serde(default)]
    pub limits: Limits,
    /// `[runtime]`.
    #[serde(default)]
    pub runtime: Runtime,
    /// `[tls]`: the certificate and key of the HTTPS listener (a
    /// `kubernetes.io/tls` Secret mount), watched.
    pub tls: Option<Tls>,
}

/// `[listen]`: the data-plane listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Plain HTTP listener address (IPv4 or IPv6; port 0 picks a free port).
    pub http: SocketAddr,
    /// HTTPS listener address (with `[tls]`); none by default.
    pub https: Option<SocketAddr>,
    /// HTTP/2 with prior knowledge (h2c) on the plain listener; off by default.
    #[serde(default)]
    pub h2c: bool,
    /// The plain listener answers every request with 308 to the same URL
    /// on https (needs `https`); off by default.
    #[serde(default)]
    pub redirect_https: bool,
}

/// `[tls]`: the default certificate and optional extra ones by server name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain (leaf first), relative to `proxy.toml`'s directory.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), likewise.
    pub key: PathBuf,
    /// `[[tls.sni]]`: a certificate for these server names.
    #[serde(default)]
    pub sni: Vec<TlsSni>,
}

/// `[[tls.sni]]`: a certificate served to clients asking for one of `names`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSni {
    /// Server names (`api.example.com`, or `*.example.com` for one label).
    pub names: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// One certificate of `[tls]` with its paths resolved: what is loaded,
/// checked and watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// `default` for `[tls]` itself, else the first name of its SNI entry
    /// (the `name` label of `tls_cert_expiry_timestamp_seconds`).
    pub name: String,
    /// The server names it is chosen for (lower case); empty for the default.
    pub names: Vec<String>,
    /// The certificate chain file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Admin listener address; never the data listener.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// When set, POST endpoints need `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// Write admin switches back into the upstreams file.
    #[serde(default)]
    pub persist: bool,
    /// Accept a non-loopback `listen` without `token_file` (refused at
    /// start otherwise: anyone who reaches the port could switch traffic).
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

impl Admin {
    /// Why this admin listener is refused: bound beyond loopback with no
    /// token, unless `allow_unauthenticated` says that is meant.
    pub fn refusal(&self) -> Option<String> {
        let open = !self.listen.ip().is_loopback();
        (open && self.token_file.is_none() && !self.allow_unauthenticated).then(|| {
            format!(
                "[admin] listen = \"{}\" is reachable beyond this machine and no token_file is set: \
                 anyone who reaches it could switch traffic; set [admin] token_file, listen on loopback, \
                 or set [admin] allow_unauthenticated = true if the network itself is trusted",
                self.listen
            )
        })
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: default_admin_listen(),
            token_file: None,
            persist: false,
            allow_unauthenticated: false,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// `[upstreams]`: where the watched upstreams file is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsRef {
    /// Path of the upstreams file, relative to `proxy.toml`'s directory.
    pub file: PathBuf,
    /// Periodic re-read that backs up file events.
    #[serde(default = "default_reread", with = "humantime_serde")]
    pub reread: Duration,
}

fn default_reread() -> Duration {
    DEFAULT_REREAD
}

/// `[headers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// Add `x-switchyard-pool` / `x-switchyard-generation` to responses.
    #[serde(default = "yes")]
    pub expose: bool,
    /// Peers whose `X-Forwarded-For` is extended instead of replaced.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            expose: true,
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// One access-log line per request.
    #[serde(default = "yes")]
    pub access: bool,
}

impl Default for Log {
    fn default() -> Self {
        Log { access: true }
    }
}

fn yes() -> bool {
    true
}

/// `[timeouts]`, all humantime strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Upstream connect.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Whole request until the upstream's response head.
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// Idle keep-alive client connection (also bounds reading a request head).
    #[serde(with = "humantime_serde")]
    pub client_idle: Duration,
    /// Idle upstream connection kept for reuse.
    #[serde(with = "humantime_serde")]
    pub upstream_idle: Duration,
    /// On SIGTERM: keep serving this long with `/readyz` = 503.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Then: grace for in-flight requests and open tunnels.
    #[serde(with = "humantime_serde")]
    pub shutdown: Duration,
    /// A response the client takes nothing of for this long is cut
    /// (inactivity, from the head on).
    #[serde(with = "humantime_serde")]
    pub send: Duration,
    /// A response body of which the upstream sends nothing for this long is
    /// cut (inactivity, from the head on).
    #[serde(with = "humantime_serde")]
    pub upstream_read: Duration,
    /// An upgraded connection (a tunnel) with no byte either way for this
    /// long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle: Duration,
    /// An admin request whose body is still arriving after this long gets 408.
    #[serde(with = "humantime_serde")]
    pub admin_body: Duration,
    /// A TLS handshake not complete after this long is closed.
    #[serde(with = "humantime_serde")]
    pub tls_handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
            client_idle: DEFAULT_CLIENT_IDLE,
            upstream_idle: DEFAULT_UPSTREAM_IDLE,
            shutdown_delay: DEFAULT_SHUTDOWN_DELAY,
            shutdown: DEFAULT_SHUTDOWN_GRACE,
            send: DEFAULT_SEND_TIMEOUT,
            upstream_read: DEFAULT_UPSTREAM_READ,
            tunnel_idle: DEFAULT_TUNNEL_IDLE,
            admin_body: DEFAULT_ADMIN_BODY,
            tls_handshake: DEFAULT_TLS_HANDSHAKE,
        }
    }
}

impl Timeouts {
    /// The timeouts that must be greater than 0, each with its key under
    /// `[timeouts]`: what [`Settings::parse`] checks (and the fuzz target
    /// of `proxy.toml` holds accepted settings to).
    pub fn positive(&self) -> [(&'static str, Duration); 7] {
        [
            ("connect", self.connect),
            ("request", self.request),
            ("client_idle", self.client_idle),
            ("send", self.send),
            ("upstream_read", self.upstream_read),
            ("tunnel_idle", self.tunnel_idle),
            ("tls_handshake", self.tls_handshake),
        ]
    }
}

/// `[limits]`: what an internet-facing edge ships with (see
/// docs/security.md for what a client sees at each).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The `Upgrade` protocols tunnelled (case-insensitive tokens); any
    /// other `Upgrade` is stripped and the request forwarded as a plain one.
    #[serde(default = "default_upgrade_protocols")]
    pub upgrade_protocols: Vec<String>,
    /// Client connections open at once in the process (all cores); a new
    /// one beyond is accepted and closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest request head (request line and header lines), in bytes.
    #[serde(default = "default_max_header_bytes", deserialize_with = "max_header_bytes")]
    pub max_header_bytes: u64,
    /// Most header lines in a request.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Largest request body, in bytes; 0: no limit.
    #[serde(default = "default_max_body", deserialize_with = "max_body")]
    pub max_body: u64,
    /// Open upstream connections (idle and busy) per endpoint per process.
    #[serde(default = "default_upstream_max_connections")]
    pub upstream_max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            upgrade_protocols: default_upgrade_protocols(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body: DEFAULT_MAX_BODY,
            upstream_max_connections: DEFAULT_UPSTREAM_MAX_CONNECTIONS,
        }
    }
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_max_header_bytes() -> u64 {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_max_headers() -> usize {
    DEFAULT_MAX_HEADERS
}
fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY
}
fn default_upstream_max_connections() -> usize {
    DEFAULT_UPSTREAM_MAX_CONNECTIONS
}

/// Parses a size as `proxy.toml` writes it: a number of bytes (`0`,
/// `65536`, as a TOML integer or string) or a number with a unit, binary
/// (`32KiB`, `1MiB`) or decimal (`32KB` = 32 000 bytes), by the `bytesize`
/// crate. The error names what was wrong; the caller adds the key.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() || t.starts_with(['-', '+', '.']) {
        return Err(format!(
            "{text:?} is not a size such as \"32KiB\", \"1MiB\" or \"0\""
        ));
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("{text:?} is not a size such as \"32KiB\", \"1MiB\" or \"0\""))
}

/// A size key: a TOML string (`"32KiB"`) or a non-negative integer (bytes);
/// the error names `key`.
fn size<'de, D: serde::Deserializer<'de>>(d: D, key: &str) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
        Other(toml::Value),
    }
    let reason = match Raw::deserialize(d)? {
        Raw::Bytes(n) => return Ok(n),
        Raw::Text(t) => match parse_size(&t) {
            Ok(n) => return Ok(n),
            Err(e) => e,
        },
        Raw::Other(v) => format!("{v} is not a size such as \"32KiB\", \"1MiB\" or \"0\""),
    };
    Err(serde::de::Error::custom(format!("{key}: {reason}")))
}

fn max_header_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    size(d, "limits.max_header_bytes")
}

fn max_body<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    size(d, "limits.max_body")
}

/// `[runtime]`: the data plane's threads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    /// Data-plane threads (cores); 0: the CPUs this process may use
    /// ([`available_cores`]).
    #[serde(default)]
    pub cores: usize,
}

impl Runtime {
    /// The number of data-plane cores to start: `cores`, or when it is 0
    /// the CPUs this process may use. The one place the count is decided.
    pub fn cores(&self) -> usize {
        match self.cores {
            0 => available_cores(),
            n => n,
        }
    }
}

/// The CPUs this process may use: `std::thread::available_parallelism`,
/// which on Linux honours the affinity mask (`taskset`, cpusets) and a
/// cgroup's CPU quota (`cpu.max` in v2, `cfs_quota_us` in v1, rounded
/// down, at least 1), so a pod limited to 2 CPUs on a 64-CPU node runs 2
/// cores. 1 if it cannot tell.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn default_upgrade_protocols() -> Vec<String> {
    DEFAULT_UPGRADE_PROTOCOLS
        .iter()
        .map(|p| (*p).to_string())
        .collect()
}

/// Whether `s` is an HTTP token (RFC 9110 §5.6.2), as an `Upgrade`
/// protocol name must be.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `upstreams.toml`: the desired state, watched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamsFile {
    /// Name of the pool that gets the traffic.
    pub active: Spanned<String>,
    /// Apply a change of `active` even when its pool is not ready (skips the
    /// switch gate for file switches).
    #[serde(default)]
    pub force: bool,
    /// The pools by name, in file order.
    pub pools: Spanned<toml::map::Map<String, toml::Value>>,
    /// `[discovery]`: how DNS names are resolved.
    #[serde(default)]
    pub discovery: Discovery,
    /// `[health]`: active checks (with `path`) and passive ejection.
    pub health: Option<Health>,
    /// `[preview]`: route a request to the pool its header or cookie names.
    pub preview: Option<Spanned<PreviewFile>>,
    /// `[split]`: canary weights instead of all-or-nothing.
    pub split: Option<Spanned<SplitFile>>,
    /// `[rollback]`: the automatic rollback after a forward switch.
    pub rollback: Option<Spanned<RollbackFile>>,
}

/// `[preview]` of `upstreams.toml`: from an address in `allow`, a request
/// whose `header` (or `cookie`) names a pool goes to that pool, never
/// falling back. Both are removed before forwarding, from anyone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewFile {
    /// The header whose value names the pool (default [`DEFAULT_PREVIEW_HEADER`]).
    #[serde(default = "default_preview_header")]
    pub header: String,
    /// A cookie whose value names the pool; none by default.
    pub cookie: Option<String>,
    /// Who may preview (CIDRs); required.
    pub allow: Option<Vec<IpNet>>,
}

/// The preview header when `[preview] header` is not given.
pub const DEFAULT_PREVIEW_HEADER: &str = "x-switchyard-preview";

fn default_preview_header() -> String {
    DEFAULT_PREVIEW_HEADER.to_string()
}

/// `[split]` of `upstreams.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFile {
    /// Share (0-100) of requests per pool, summing to 100; a pool not
    /// named gets 0. Without it, `active` gets everything.
    pub weights: Option<BTreeMap<String, i64>>,
    /// A cookie naming the pool a client got: it stays there while that
    /// pool has a share and is usable. None by default.
    pub sticky_cookie: Option<String>,
}

/// `[rollback]` of `upstreams.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackFile {
    /// How long after a forward switch the new pool's errors are watched
    /// (default [`DEFAULT_ROLLBACK_WINDOW`]).
    #[serde(default = "default_rollback_window", with = "humantime_serde")]
    pub window: Duration,
    /// Errors over requests of the new pool beyond which the proxy switches
    /// back (default [`DEFAULT_MAX_ERROR_RATE`]).
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// Requests of the new pool needed before the rate is judged (default
    /// [`DEFAULT_MIN_REQUESTS`]).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

/// `[rollback] window` when not given.
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(60);
/// `[rollback] max_error_rate` when not given.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.05;
/// `[rollback] min_requests` when not given.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;

fn default_rollback_window() -> Duration {
    DEFAULT_ROLLBACK_WINDOW
}

fn default_max_error_rate() -> f64 {
    DEFAULT_MAX_ERROR_RATE
}

fn default_min_requests() -> u64 {
    DEFAULT_MIN_REQUESTS
}

/// `[pools.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// `host:port` endpoints (IP literals or DNS names).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `dns = "name:port"`: the pool's endpoints are the addresses the name
    /// resolves to (a headless Service); instead of `endpoints`.
    pub dns: Option<String>,
    /// `min_healthy`: how many endpoints must count as healthy for the pool
    /// to be ready (the switch gate); default [`MinHealthy::DEFAULT`].
    #[serde(default)]
    pub min_healthy: MinHealthy,
}

/// `min_healthy` of a pool: a count of endpoints, or a percentage of them
/// (rounded up). A pool is ready when at least this many of its endpoints
/// count as healthy, and it has at least one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub enum MinHealthy {
    /// At least this many endpoints.
    Count(u32),
    /// At least this percentage (0-100) of the endpoints, rounded up.
    Percent(u8),
}

impl MinHealthy {
    /// The default: one endpoint.
    pub const DEFAULT: MinHealthy = MinHealthy::Count(1);

    /// How many healthy endpoints a pool of `total` endpoints needs.
    pub fn needs(self, total: usize) -> usize {
        match self {
            MinHealthy::Count(n) => usize::try_from(n).unwrap_or(usize::MAX),
            MinHealthy::Percent(p) => (total * usize::from(p)).div_ceil(100),
        }
    }
}

impl Default for MinHealthy {
    fn default() -> Self {
        MinHealthy::DEFAULT
    }
}

impl TryFrom<toml::Value> for MinHealthy {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<Self, String> {
        let bad = |v: &dyn std::fmt::Display| {
            format!(
                "min_healthy = {v}: expected a count of endpoints (0 or more) or a percentage \
                 from \"0%\" to \"100%\", such as 1 or \"50%\""
            )
        };
        match &v {
            toml::Value::Integer(n) => u32::try_from(*n).map(MinHealthy::Count).map_err(|_| bad(&v)),
            toml::Value::String(s) => s
                .strip_suffix('%')
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|p| *p <= 100)
                .map(MinHealthy::Percent)
                .ok_or_else(|| bad(&v)),
            _ => Err(bad(&v)),
        }
    }
}

/// The address family of discovered endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// A records only (the default).
    #[default]
    Ipv4,
    /// AAAA records only.
    Ipv6,
}

/// `[discovery]`: how DNS names (`dns`, and names in `endpoints`) are resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Discovery {
    /// Resolve every name again this often.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// Ask only these servers (`ip:port`); empty: the system configuration
    /// (`/etc/resolv.conf`: name servers, search domains, `ndots`).
    pub nameservers: Vec<SocketAddr>,
    /// Which records count: `ipv4` (A) or `ipv6` (AAAA).
    pub family: Family,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            every: DEFAULT_DISCOVERY_EVERY,
            nameservers: Vec::new(),
            family: Family::Ipv4,
        }
    }
}

/// `[health]`: active checks of every endpoint (when `path` is set) and
/// passive ejection on live-traffic failures. Without the table, passive
/// ejection runs with these defaults and no active check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// `GET path` is the active check (2xx passes); none: no active check.
    pub path: Option<String>,
    /// Each endpoint is checked once per interval (spread over it).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A check with no 2xx answer within this fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Passed checks in a row that make an endpoint healthy.
    pub healthy_after: u32,
    /// Failed checks in a row that make an endpoint unhealthy.
    pub unhealthy_after: u32,
    /// Consecutive connect failures, resets or timeouts on live traffic
    /// that eject an endpoint; 0 turns passive ejection off.
    pub eject_after: u32,
    /// Without active checks: how long an ejection lasts.
    #[serde(with = "humantime_serde")]
    pub eject_for: Duration,
    /// At most this share of a pool's endpoints is ejected at once.
    pub max_ejected_percent: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_after: DEFAULT_HEALTHY_AFTER,
            unhealthy_after: DEFAULT_UNHEALTHY_AFTER,
            eject_after: DEFAULT_EJECT_AFTER,
            eject_for: DEFAULT_EJECT_FOR,
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT,
        }
    }
}

impl Health {
    /// Whether active checks run (`path` is set).
    pub fn active(&self) -> bool {
        self.path.is_some()
    }
}

/// A fully loaded `proxy.toml` with paths resolved against its directory.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The parsed file.
    pub file: ProxyFile,
    /// Where `proxy.toml` was read from.
    pub path: PathBuf,
    /// The upstreams file's path, resolved against `proxy.toml`'s directory.
    pub upstreams_path: PathBuf,
    /// The admin token file's path, resolved likewise.
    pub token_path: Option<PathBuf>,
    /// `[tls]`'s certificates, paths resolved likewise: the default first,
    /// then each `[[tls.sni]]` entry; empty without `[tls]`.
    pub certs: Vec<CertFiles>,
}

/// Something wrong with a configuration file. Its `Display` names the file,
/// the line when known, and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not valid. The reason is shown clipped to
    /// [`MAX_REASON`] bytes: it may quote the file (a key, a value), and a
    /// file of garbage must not make an error as large as itself.
    #[error("{}{}: {}", file.display(), line.map(|l| format!(": line {l}")).unwrap_or_default(), clip(reason))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line, when the error points at one.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// Wraps a TOML syntax or shape error, keeping its line.
    pub fn toml(file: &std::path::Path, text: &str, err: &toml::de::Error) -> ConfigError {
        let line = err.span().map(|s| line_of(text, s.start));
        // The first line of toml's message repeats the position; keep the reason.
        let message = err.message().trim().to_string();
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line,
            reason: message,
        }
    }
}

/// Longest reason a [`ConfigError`] shows, in bytes; what is beyond is
/// replaced by how much there was.
pub const MAX_REASON: usize = 300;

/// Most errors a reload error lists in one line ([`one_line`]: the
/// `last_reload_error` of `/status` and its log line); `switchyard check`
/// lists them all.
pub const MAX_LISTED: usize = 10;

/// `reason`, or its first [`MAX_REASON`] bytes (at a character boundary)
/// and how long it was.
fn clip(reason: &str) -> std::borrow::Cow<'_, str> {
    if reason.len() <= MAX_REASON {
        return reason.into();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &reason[..end], reason.len()).into()
}

/// `errors` in one line, separated by `; `: the first [`MAX_LISTED`], then
/// how many more there are.
pub fn one_line(errors: &[ConfigError]) -> String {
    let mut line = errors
        .iter()
        .take(MAX_LISTED)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if errors.len() > MAX_LISTED {
        line.push_str(&format!(
            "; and {} more errors (`switchyard check` lists them all)",
            errors.len() - MAX_LISTED
        ));
    }
    line
}

/// Several configuration errors, listed one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// 1-based line of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

impl Settings {
    /// Reads and checks `proxy.toml`; every error found is returned.
    pub fn load(path: &Path) -> Result<Settings, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                file: path.to_path_buf(),
                source,
            }]
        })?;
        Self::parse(path, &text)
    }

    /// Parses `proxy.toml`'s text (read from `path`).
    pub fn parse(path: &Path, text: &str) -> Result<Settings, Vec<ConfigError>> {
        let file: ProxyFile = toml::from_str(text).map_err(|e| vec![ConfigError::toml(path, text, &e)])?;
        let mut errors = Vec::new();
        let invalid = |reason: String| ConfigError::Invalid {
            file: path.to_path_buf(),
            line: None,
            reason,
        };
        errors.extend(check_tls(&file).into_iter().map(&invalid));
        if file.admin.listen == file.listen.http && file.listen.http.port() != 0 {
            errors.push(invalid(
                "admin.listen must not be the data listener's address".into(),
            ));
        }
        let l = &file.limits;
        if l.max_connections == 0 {
            errors.push(invalid("limits.max_connections must be greater than 0".into()));
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&l.max_header_bytes) {
            errors.push(invalid(format!(
                "limits.max_header_bytes must be between 1KiB and 1MiB (it is {} bytes)",
                l.max_header_bytes
            )));
        }
        if !(1..=MAX_HEADERS_LIMIT).contains(&l.max_headers) {
            errors.push(invalid(format!(
                "limits.max_headers must be between 1 and {MAX_HEADERS_LIMIT} (it is {})",
                l.max_headers
            )));
        }
        if l.upstream_max_connections == 0 {
            errors.push(invalid(
                "limits.upstream_max_connections must be greater than 0".into(),
            ));
        }
        if file.runtime.cores > MAX_CORES {
            errors.push(invalid(format!(
                "runtime.cores must be at most {MAX_CORES} (0: the CPUs this process may use)"
            )));
        }
        for p in &l.upgrade_protocols {
            if !is_token(p) {
                errors.push(invalid(format!(
                    "limits.upgrade_protocols: {p:?} is not a protocol name (an HTTP token)"
                )));
            }
        }
        for (name, value) in file.timeouts.positive() {
            if value.is_zero() {
                errors.push(invalid(format!("timeouts.{name} must be greater than 0")));
            }
        }
        if file.upstreams.reread.is_zero() {
            errors.push(invalid("upstreams.reread must be greater than 0".into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let upstreams_path = dir.join(&file.upstreams.file);
        let token_path = file.admin.token_file.as_ref().map(|t| dir.join(t));
        let certs = file.tls.as_ref().map_or_else(Vec::new, |tls| {
            let default = CertFiles {
                name: "default".into(),
                names: Vec::new(),
                cert: dir.join(&tls.cert),
                key: dir.join(&tls.key),
            };
            let sni = tls.sni.iter().map(|e| {
                let names: Vec<String> = e.names.iter().map(|n| n.to_ascii_lowercase()).collect();
                CertFiles {
                    name: names.first().cloned().unwrap_or_default(),
                    names,
                    cert: dir.join(&e.cert),
                    key: dir.join(&e.key),
                }
            });
            std::iter::once(default).chain(sni).collect()
        });
        Ok(Settings {
            file,
            path: path.to_path_buf(),
            upstreams_path,
            token_path,
            certs,
        })
    }

    /// Reads the admin token (trimmed); `None` when no token file is set.
    pub fn read_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.token_path else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.clone(),
            source,
        })?;
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(ConfigError::Invalid {
                file: path.clone(),
                line: None,
                reason: "the token file is empty".into(),
            });
        }
        Ok(Some(token))
    }
}

/// The rules of `[listen] https`, `h2c`, `redirect_https` and `[tls]`:
/// each broken one's reason.
fn check_tls(file: &ProxyFile) -> Vec<String> {
    let mut errors = Vec::new();
    let listen = &file.listen;
    match (listen.https, &file.tls) {
        (Some(_), None) => errors.push("listen.https needs a [tls] section (cert and key)".to_string()),
        (None, Some(_)) => {
            errors.push("[tls] is set but listen.https is not: set the HTTPS listener's address".into())
        }
        _ => {}
    }
    if listen.redirect_https && listen.https.is_none() {
        errors.push("listen.redirect_https needs listen.https (the address clients are sent to)".into());
    }
    if let Some(https) = listen.https {
        if https == listen.http && https.port() != 0 {
            errors.push("listen.https must not be the plain listener's address".into());
        }
        if https == file.admin.listen && https.port() != 0 {
            errors.push("listen.https must not be the admin listener's address".into());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, entry) in file.tls.iter().flat_map(|t| t.sni.iter()).enumerate() {
        if entry.names.is_empty() {
            errors.push(format!(
                "tls.sni[{i}]: `names` is empty: list the server names this certificate is for"
            ));
        }
        for name in &entry.names {
            if !is_server_name(name) {
                errors.push(format!(
                    "tls.sni[{i}]: {name:?} is not a server name (a DNS name, or `*.` and a DNS name)"
                ));
            } else if !seen.insert(name.to_ascii_lowercase()) {
                errors.push(format!("tls.sni[{i}]: {name:?} is named by two entries"));
            }
        }
    }
    errors
}

/// A DNS name (labels of letters, digits and `-`), or `*.` and one: what
/// an SNI entry may name.
fn is_server_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Reads an upstreams file by path, refusing files over [`MAX_UPSTREAMS_BYTES`].
pub fn read_upstreams(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_UPSTREAMS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_UPSTREAMS_BYTES {
        return Err(ConfigError::Invalid {
            file: path.to_path_buf(),
            line: None,
            reason: format!("the file is larger than {MAX_UPSTREAMS_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// The pools of an upstreams file: name, shape, line of its header.
pub type PoolList = Vec<(String, PoolFile, usize)>;

/// Parses an upstreams file's bytes into its raw shape plus the pools, checking
/// the syntax, the keys and the (later) features. Semantic checks are in `table`.
pub fn parse_upstreams(path: &Path, bytes: &[u8]) -> Result<(UpstreamsFile, PoolList), Vec<ConfigError>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        vec![ConfigError::Invalid {
            file: path.to_path_buf(),
            line: Some(line_of(
                &String::from_utf8_lossy(&bytes[..e.valid_up_to()]),
                usize::MAX,
            )),
            reason: "the file is not valid UTF-8".into(),
        }]
    })?;
    if text.trim().is_empty() {
        return Err(vec![ConfigError::Invalid {
            file: path.to_path_buf(),
            line: None,
            reason: "the file is empty".into(),
        }]);
    }
    let file: UpstreamsFile = toml::from_str(text).map_err(|e| vec![ConfigError::toml(path, text, &e)])?;
    let mut errors = Vec::new();
    let pools_line = line_of(text, file.pools.span().start);
    let mut pools = Vec::new();
    for (name, value) in file.pools.get_ref() {
        // Spans are lost inside `toml::Value`; find the pool's header line instead.
        let line = find_line(text, &format!("[pools.{name}]")).unwrap_or(pools_line);
        match PoolFile::deserialize(value.clone()) {
            Ok(pool) => pools.push((name.clone(), pool, line)),
            Err(e) => errors.push(ConfigError::Invalid {
                file: path.to_path_buf(),
                line: Some(line),
                reason: format!("pools.{name}: {}", e.message()),
            }),
        }
    }
    if errors.is_empty() {
        Ok((file, pools))
    } else {
        Err(errors)
    }
}

fn find_line(text: &str, needle: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Settings::parse(
            Path::new("p.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\nhtp = 1\n[upstreams]\nfile = \"u\"\n",
        )
        .unwrap_err();
        let msg = err[0].to_string();
        assert!(msg.contains("htp") && msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn min_healthy_is_a_count_or_a_percentage_and_force_a_bool() {
        let parse = |extra: &str, pool: &str| {
            let text =
                format!("active = \"blue\"\n{extra}\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n{pool}\n");
            parse_upstreams(Path::new("u.toml"), text.as_bytes())
                .map(|(f, pools)| (f.force, pools[0].1.min_healthy))
                .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        };
        assert_eq!(parse("", ""), Ok((false, MinHealthy::Count(1))), "the defaults");
        assert_eq!(
            parse("force = true", "min_healthy = 0"),
            Ok((true, MinHealthy::Count(0)))
        );
        assert_eq!(parse("", "min_healthy = 3"), Ok((false, MinHealthy::Count(3))));
        assert_eq!(
            parse("", "min_healthy = \"50%\""),
            Ok((false, MinHealthy::Percent(50)))
        );
        assert_eq!(
            parse("", "min_healthy = \"100%\""),
            Ok((false, MinHealthy::Percent(100)))
        );
        for bad in [
            "-1", "1.5", "\"150%\"", "\"half\"", "\"%\"", "\"-5%\"", "\"3\"", "true",
        ] {
            let err = parse("", &format!("min_healthy = {bad}")).unwrap_err();
            assert!(
                err.contains("pools.blue")
                    && err.contains("line 3")
                    && err.contains("min_healthy")
                    && err.contains("\"50%\""),
                "{bad}: {err}"
            );
        }
        let err = parse("force = \"yes\"", "").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn min_healthy_percentages_round_up() {
        assert_eq!(MinHealthy::Percent(50).needs(3), 2);
        assert_eq!(MinHealthy::Percent(50).needs(4), 2);
        assert_eq!(MinHealthy::Percent(1).needs(3), 1);
        assert_eq!(MinHealthy::Percent(0).needs(3), 0);
        assert_eq!(MinHealthy::Percent(100).needs(3), 3);
        assert_eq!(MinHealthy::Percent(50).needs(0), 0);
        assert_eq!(MinHealthy::Count(2).needs(1), 2);
    }

    #[test]
    fn pool_unknown_key_is_an_error() {
        let text = "active = \"blue\"\n[pools.blue]\nendpoint = [\"127.0.0.1:1\"]\n";
        let errs = parse_upstreams(Path::new("u.toml"), text.as_bytes()).unwrap_err();
        let msg = errs[0].to_string();
        assert!(msg.contains("endpoint") && msg.contains("pools.blue"), "{msg}");
    }

    #[test]
    fn defaults_fill_in() {
        let s = Settings::parse(
            Path::new("/etc/sy/proxy.toml"),
            "[listen]\nhttp = \"[::1]:8080\"\n[upstreams]\nfile = \"u.toml\"\n",
        )
        .unwrap();
        assert_eq!(s.upstreams_path, Path::new("/etc/sy/u.toml"));
        assert_eq!(s.file.timeouts.upstream_idle, DEFAULT_UPSTREAM_IDLE);
        assert!(s.file.headers.expose && s.file.log.access && !s.file.admin.persist);
        assert_eq!(
            (
                s.file.timeouts.send,
                s.file.timeouts.upstream_read,
                s.file.timeouts.tunnel_idle
            ),
            (DEFAULT_SEND_TIMEOUT, DEFAULT_UPSTREAM_READ, DEFAULT_TUNNEL_IDLE)
        );
        assert_eq!(s.file.limits.upgrade_protocols, ["websocket"]);
    }

    const MINIMAL: &str = "[listen]\nhttp = \"127.0.0.1:1\"\n[upstreams]\nfile = \"u\"\n";

    #[test]
    fn limits_and_runtime_have_the_design_defaults() {
        let s = Settings::parse(Path::new("p.toml"), MINIMAL).unwrap();
        let l = &s.file.limits;
        assert_eq!(
            (
                l.max_connections,
                l.max_header_bytes,
                l.max_headers,
                l.max_body,
                l.upstream_max_connections
            ),
            (20_000, 32 * 1024, 100, 0, 1024)
        );
        assert_eq!(s.file.runtime.cores, 0);
        assert_eq!(s.file.runtime.cores(), available_cores());
    }

    #[test]
    fn limits_parse_sizes_and_counts() {
        let s = Settings::parse(
            Path::new("p.toml"),
            &format!(
                "{MINIMAL}[limits]\nupgrade_protocols = [\"websocket\", \"h2c\"]\nmax_connections = 5\n\
                 max_header_bytes = \"16KiB\"\nmax_headers = 20\nmax_body = \"1MiB\"\n\
                 upstream_max_connections = 1\n[runtime]\ncores = 3\n"
            ),
        )
        .unwrap();
        let l = &s.file.limits;
        assert_eq!(l.upgrade_protocols, ["websocket", "h2c"]);
        assert_eq!(
            (
                l.max_connections,
                l.max_header_bytes,
                l.max_headers,
                l.max_body,
                l.upstream_max_connections
            ),
            (5, 16 * 1024, 20, 1 << 20, 1)
        );
        assert_eq!(s.file.runtime.cores(), 3);
        // A plain integer is bytes, and so is a string of digits.
        let s = Settings::parse(
            Path::new("p.toml"),
            &format!("{MINIMAL}[limits]\nmax_body = 65536\nmax_header_bytes = \"2048\"\n"),
        )
        .unwrap();
        assert_eq!(
            (s.file.limits.max_body, s.file.limits.max_header_bytes),
            (65536, 2048)
        );
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        for (text, bytes) in [
            ("0", 0),
            ("32KiB", 32 * 1024),
            ("1MiB", 1 << 20),
            ("1 MiB", 1 << 20),
            ("32KB", 32_000),
            ("512", 512),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "lots", "12XB", "-1", "KiB"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_limits_are_errors_naming_the_key() {
        for (line, want) in [
            ("max_body = \"12XB\"", "limits.max_body: \"12XB\" is not a size"),
            ("max_body = -1", "limits.max_body: -1 is not a size"),
            (
                "max_header_bytes = \"lots\"",
                "limits.max_header_bytes: \"lots\" is not a size",
            ),
            (
                "max_header_bytes = \"100\"",
                "limits.max_header_bytes must be between 1KiB and 1MiB",
            ),
            ("max_headers = 0", "limits.max_headers must be between 1 and"),
            (
                "max_connections = 0",
                "limits.max_connections must be greater than 0",
            ),
            (
                "upstream_max_connections = 0",
                "limits.upstream_max_connections must be greater than 0",
            ),
            ("max_conections = 5", "max_conections"),
        ] {
            let errs =
                Settings::parse(Path::new("p.toml"), &format!("{MINIMAL}[limits]\n{line}\n")).unwrap_err();
            let msg = errs[0].to_string();
            assert!(msg.contains(want), "{line}: {msg}");
        }
        let errs = Settings::parse(
            Path::new("p.toml"),
            &format!("{MINIMAL}[limits]\nmax_body = \"12XB\"\n"),
        )
        .unwrap_err();
        assert!(errs[0].to_string().contains("line 6"), "{errs:?}");
        let errs = Settings::parse(
            Path::new("p.toml"),
            &format!("{MINIMAL}[limits]\nupgrade_protocols = [\"web socket\"]\n"),
        )
        .unwrap_err();
        assert!(errs[0].to_string().contains("not a protocol name"), "{errs:?}");
        let errs = Settings::parse(
            Path::new("p.toml"),
            &format!("{MINIMAL}[runtime]\ncores = 5000\n"),
        )
        .unwrap_err();
        assert!(
            errs[0].to_string().contains("runtime.cores must be at most"),
            "{errs:?}"
        );
    }

    #[test]
    fn tls_keys_parse_resolve_and_are_checked_together() {
        let s = Settings::parse(
            Path::new("/etc/sy/proxy.toml"),
            "[listen]\nhttp = \"127.0.0.1:1\"\nhttps = \"127.0.0.1:2\"\nh2c = true\nredirect_https = true\n\
             [upstreams]\nfile = \"u\"\n[tls]\ncert = \"tls/tls.crt\"\nkey = \"tls/tls.key\"\n\
             [[tls.sni]]\nnames = [\"API.example.com\", \"*.apps.example.com\"]\ncert = \"a.crt\"\nkey = \"a.key\"\n\
             [timeouts]\ntls_handshake = \"3s\"\n",
        )
        .unwrap();
        assert!(s.file.listen.h2c && s.file.listen.redirect_https);
        assert_eq!(s.file.timeouts.tls_handshake, Duration::from_secs(3));
        assert_eq!(s.certs.len(), 2);
        assert_eq!(s.certs[0].name, "default");
        assert_eq!(s.certs[0].cert, Path::new("/etc/sy/tls/tls.crt"));
        assert_eq!(s.certs[1].name, "api.example.com");
        assert_eq!(s.certs[1].names, ["api.example.com", "*.apps.example.com"]);
        assert_eq!(s.certs[1].key, Path::new("/etc/sy/a.key"));
        let defaults = Settings::parse(Path::new("p.toml"), MINIMAL).unwrap();
        assert_eq!(defaults.file.timeouts.tls_handshake, DEFAULT_TLS_HANDSHAKE);
        assert!(
            defaults.certs.is_empty() && !defaults.file.listen.h2c && !defaults.file.listen.redirect_https
        );

        let tls = "[tls]\ncert = \"c\"\nkey = \"k\"\n";
        for (text, reason) in [
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\nhttps = \"127.0.0.1:2\"\n[upstreams]\nfile = \"u\"\n".to_string(),
                "listen.https needs a [tls] section",
            ),
            (format!("{MINIMAL}{tls}"), "[tls] is set but listen.https is not"),
            (
                "[listen]\nhttp = \"127.0.0.1:1\"\nredirect_https = true\n[upstreams]\nfile = \"u\"\n".to_string(),
                "listen.redirect_https needs listen.https",
            ),
            (
                format!("[listen]\nhttp = \"127.0.0.1:1\"\nhttps = \"127.0.0.1:1\"\n[upstreams]\nfile = \"u\"\n{tls}"),
                "must not be the plain listener's address",
            ),
            (
                format!(
                    "[listen]\nhttp = \"127.0.0.1:1\"\nhttps = \"127.0.0.1:2\"\n[upstreams]\nfile = \"u\"\n{tls}\
                     [[tls.sni]]\nnames = [\"bad name\"]\ncert = \"c\"\nkey = \"k\"\n"
                ),
                "\"bad name\" is not a server name",
            ),
            (
                format!(
                    "[listen]\nhttp = \"127.0.0.1:1\"\nhttps = \"127.0.0.1:2\"\n[upstreams]\nfile = \"u\"\n{tls}\
                     [[tls.sni]]\nnames = []\ncert = \"c\"\nkey = \"k\"\n"
                ),
                "`names` is empty",
            ),
            (
                format!("{MINIMAL}[timeouts]\ntls_handshake = \"0s\"\n"),
                "timeouts.tls_handshake must be greater than 0",
            ),
        ] {
            let errs = Settings::parse(Path::new("p.toml"), &text).unwrap_err();
            assert!(
                errs.iter().any(|e| e.to_string().contains(reason)),
                "{reason}: {errs:?}"
            );
        }
    }

    #[test]
    fn the_response_timeouts_parse_and_must_not_be_zero() {
        let s = Settings::parse(
            Path::new("p.toml"),
            &format!(
                "{MINIMAL}[timeouts]\nsend = \"5s\"\nupstream_read = \"300ms\"\ntunnel_idle = \"10m\"\n"
            ),
        )
        .unwrap();
        let t = &s.file.timeouts;
        assert_eq!(
            (t.send, t.upstream_read, t.tunnel_idle),
            (
                Duration::from_secs(5),
                Duration::from_millis(300),
                Duration::from_secs(600)
            )
        );
        let errs = Settings::parse(
            Path::new("p.toml"),
            &format!("{MINIMAL}[timeouts]\nsend = \"0s\"\n"),
        )
        .unwrap_err();
        assert!(
            errs[0]
                .to_string()
                .contains("timeouts.send must be greater than 0"),
            "{errs:?}"
        );
    }

    #[test]
    fn an_error_quoting_a_huge_key_is_clipped() {
        let key = "é".repeat(400_000);
        let text = format!("active = \"blue\"\n\"{key}\" = 1\n");
        let errs = parse_upstreams(Path::new("u.toml"), text.as_bytes()).unwrap_err();
        let msg = errs[0].to_string();
        assert!(msg.len() < MAX_REASON + 100, "{} bytes", msg.len());
        assert!(
            msg.starts_with("u.toml: line 2: unknown field `éé") && msg.ends_with(" bytes in all)"),
            "{msg}"
        );
    }

    #[test]
    fn one_line_lists_the_first_errors_then_how_many_more() {
        let err = |i: usize| ConfigError::Invalid {
            file: "u.toml".into(),
            line: Some(i),
            reason: "bad".into(),
        };
        assert_eq!(
            one_line(&[err(1), err(2)]),
            "u.toml: line 1: bad; u.toml: line 2: bad"
        );
        let many: Vec<ConfigError> = (1..=25).map(err).collect();
        let line = one_line(&many);
        assert!(line.starts_with("u.toml: line 1: bad; "), "{line}");
        assert!(line.contains("line 10: bad; and 15 more errors"), "{line}");
        assert!(!line.contains("line 11:"), "{line}");
    }
}
