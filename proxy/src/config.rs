//! The serde shapes of `proxy.toml` and `upstreams.toml`, and their loading.
//!
//! These are the *raw* shapes, checked for syntax, unknown keys and the
//! features that are not built yet. Turning an [`UpstreamsFile`] into the
//! routing table (and its semantic checks) is the `table` module's job.
//! The errors found in these files ([`ConfigError`]) are defined here too,
//! so that this module depends on no other of the crate.

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

/// `[limits]`: what an internet-facing edge ships with. Only
/// `upgrade_protocols` is built; the other keys of the design are rejected
/// as not supported yet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// The `Upgrade` protocols tunnelled (case-insensitive tokens); any
    /// other `Upgrade` is stripped and the request forwarded as a plain one.
    #[serde(default = "default_upgrade_protocols")]
    pub upgrade_protocols: Vec<String>,
    /// `max_connections` (later).
    pub max_connections: Option<Spanned<toml::Value>>,
    /// `max_header_bytes` (later).
    pub max_header_bytes: Option<Spanned<toml::Value>>,
    /// `max_headers` (later).
    pub max_headers: Option<Spanned<toml::Value>>,
    /// `max_body` (later).
    pub max_body: Option<Spanned<toml::Value>>,
    /// `upstream_max_connections` (later).
    pub upstream_max_connections: Option<Spanned<toml::Value>>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            upgrade_protocols: default_upgrade_protocols(),
            max_connections: None,
            max_header_bytes: None,
            max_headers: None,
            max_body: None,
            upstream_max_connections: None,
        }
    }
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
    /// The pools by name, in file order.
    pub pools: Spanned<toml::map::Map<String, toml::Value>>,
    /// `[health]` (later).
    pub health: Option<Spanned<toml::Value>>,
    /// `[preview]` (later).
    pub preview: Option<Spanned<toml::Value>>,
    /// `[split]` (later).
    pub split: Option<Spanned<toml::Value>>,
    /// `[rollback]` (later).
    pub rollback: Option<Spanned<toml::Value>>,
}

/// `[pools.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// `host:port` endpoints (IP literals or DNS names).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `dns` (later).
    pub dns: Option<toml::Value>,
    /// `min_healthy` (later).
    pub min_healthy: Option<toml::Value>,
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
    /// The file was read but is not valid.
    #[error("{}{}: {reason}", file.display(), line.map(|l| format!(": line {l}")).unwrap_or_default())]
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

fn not_supported(path: &Path, text: &str, key: &str, span: std::ops::Range<usize>) -> ConfigError {
    ConfigError::Invalid {
        file: path.to_path_buf(),
        line: Some(line_of(text, span.start)),
        reason: format!("`{key}` is not supported yet"),
    }
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
        errors.extend(check_tls(&file).into_iter().map(invalid));
        if file.admin.listen == file.listen.http && file.listen.http.port() != 0 {
            errors.push(ConfigError::Invalid {
                file: path.to_path_buf(),
                line: None,
                reason: "admin.listen must not be the data listener's address".into(),
            });
        }
        let l = &file.limits;
        for (key, value) in [
            ("max_connections", &l.max_connections),
            ("max_header_bytes", &l.max_header_bytes),
            ("max_headers", &l.max_headers),
            ("max_body", &l.max_body),
            ("upstream_max_connections", &l.upstream_max_connections),
        ] {
            if let Some(v) = value {
                errors.push(not_supported(path, text, &format!("limits.{key}"), v.span()));
            }
        }
        for p in &l.upgrade_protocols {
            if !is_token(p) {
                errors.push(ConfigError::Invalid {
                    file: path.to_path_buf(),
                    line: None,
                    reason: format!("limits.upgrade_protocols: {p:?} is not a protocol name (an HTTP token)"),
                });
            }
        }
        let t = &file.timeouts;
        for (name, value) in [
            ("connect", t.connect),
            ("request", t.request),
            ("client_idle", t.client_idle),
            ("send", t.send),
            ("upstream_read", t.upstream_read),
            ("tunnel_idle", t.tunnel_idle),
            ("tls_handshake", t.tls_handshake),
        ] {
            if value.is_zero() {
                errors.push(ConfigError::Invalid {
                    file: path.to_path_buf(),
                    line: None,
                    reason: format!("timeouts.{name} must be greater than 0"),
                });
            }
        }
        if file.upstreams.reread.is_zero() {
            errors.push(ConfigError::Invalid {
                file: path.to_path_buf(),
                line: None,
                reason: "upstreams.reread must be greater than 0".into(),
            });
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
    for (key, value) in [
        ("health", &file.health),
        ("preview", &file.preview),
        ("split", &file.split),
        ("rollback", &file.rollback),
    ] {
        if let Some(v) = value {
            errors.push(not_supported(path, text, key, v.span()));
        }
    }
    let pools_line = line_of(text, file.pools.span().start);
    let mut pools = Vec::new();
    for (name, value) in file.pools.get_ref() {
        // Spans are lost inside `toml::Value`; find the pool's header line instead.
        let line = find_line(text, &format!("[pools.{name}]")).unwrap_or(pools_line);
        match PoolFile::deserialize(value.clone()) {
            Ok(pool) => {
                if pool.dns.is_some() {
                    errors.push(ConfigError::Invalid {
                        file: path.to_path_buf(),
                        line: Some(line),
                        reason: format!("pools.{name}: `dns` is not supported yet"),
                    });
                }
                if pool.min_healthy.is_some() {
                    errors.push(ConfigError::Invalid {
                        file: path.to_path_buf(),
                        line: Some(line),
                        reason: format!("pools.{name}: `min_healthy` is not supported yet"),
                    });
                }
                pools.push((name.clone(), pool, line));
            }
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
    fn later_keys_are_not_supported_yet() {
        let text = "active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\ndns = \"x:1\"\n[split]\nweights = {}\n";
        let errs = parse_upstreams(Path::new("u.toml"), text.as_bytes()).unwrap_err();
        let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            all.iter()
                .any(|m| m.contains("`split` is not supported yet") && m.contains("line 5")),
            "{all:?}"
        );
        assert!(
            all.iter()
                .any(|m| m.contains("`dns` is not supported yet") && m.contains("line 2")),
            "{all:?}"
        );
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
    fn limits_builds_upgrade_protocols_and_refuses_the_rest_as_not_supported_yet() {
        let s = Settings::parse(
            Path::new("p.toml"),
            &format!("{MINIMAL}[limits]\nupgrade_protocols = [\"websocket\", \"h2c\"]\n"),
        )
        .unwrap();
        assert_eq!(s.file.limits.upgrade_protocols, ["websocket", "h2c"]);
        for key in [
            "max_connections = 20000",
            "max_header_bytes = \"32KiB\"",
            "max_headers = 100",
            "max_body = \"0\"",
            "upstream_max_connections = 1024",
        ] {
            let errs =
                Settings::parse(Path::new("p.toml"), &format!("{MINIMAL}[limits]\n{key}\n")).unwrap_err();
            let name = key.split(' ').next().unwrap();
            let msg = errs[0].to_string();
            assert!(
                msg.contains(&format!("`limits.{name}` is not supported yet")) && msg.contains("line 6"),
                "{msg}"
            );
        }
        let errs = Settings::parse(
            Path::new("p.toml"),
            &format!("{MINIMAL}[limits]\nupgrade_protocols = [\"web socket\"]\n"),
        )
        .unwrap_err();
        assert!(errs[0].to_string().contains("not a protocol name"), "{errs:?}");
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
}
