//! Typed builders for switchyard's two files, written into a temp dir.
//!
//! testkit cannot depend on switchyard, so [`ProxyConfig::write`] returns
//! the paths ([`ProxyFiles`]); each crate's tests start the proxy (in-process
//! or as the built binary) from them.
//!
//! ```
//! use testkit::config::{ProxyConfig, Upstreams};
//! let files = ProxyConfig::new()
//!     .persist(true)
//!     .token("s3cret")
//!     .upstreams(Upstreams::blue_green("blue", "127.0.0.1:8081", "127.0.0.1:8082"))
//!     .write();
//! assert!(files.proxy_toml.exists() && files.upstreams_toml.exists());
//! ```

use std::fmt::{self, Display};
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

/// An `upstreams.toml`: the active pool and each pool's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    comment: Option<String>,
    active: String,
    force: bool,
    pools: Vec<(String, Vec<String>)>,
    tables: Vec<String>,
    /// `(pool, the value as TOML)`.
    min_healthy: Vec<(String, String)>,
}

impl Upstreams {
    /// No pools yet, `active` named.
    pub fn new(active: &str) -> Self {
        Self {
            comment: None,
            active: active.to_string(),
            force: false,
            pools: Vec::new(),
            tables: Vec::new(),
            min_healthy: Vec::new(),
        }
    }

    /// Pools `blue` and `green` of one endpoint each, `active` active.
    pub fn blue_green(active: &str, blue: impl Display, green: impl Display) -> Self {
        Self::new(active).pool("blue", [blue]).pool("green", [green])
    }

    /// One pool, `blue`, of one endpoint, active.
    pub fn blue(endpoint: impl Display) -> Self {
        Self::new("blue").pool("blue", [endpoint])
    }

    /// Adds (or replaces) the pool `name` with `endpoints`.
    pub fn pool<E: Display>(mut self, name: &str, endpoints: impl IntoIterator<Item = E>) -> Self {
        let endpoints = endpoints.into_iter().map(|e| e.to_string()).collect();
        match self.pools.iter_mut().find(|(n, _)| n == name) {
            Some(p) => p.1 = endpoints,
            None => self.pools.push((name.to_string(), endpoints)),
        }
        self
    }

    /// A different active pool.
    pub fn active(mut self, name: &str) -> Self {
        self.active = name.to_string();
        self
    }

    /// A table written after the pools, verbatim (`"[health]\neject_after = 0"`).
    pub fn table(mut self, toml: &str) -> Self {
        self.tables.push(toml.to_string());
        self
    }

    /// `force = true|false` at the top (skips the switch gate for `active`).
    pub fn force(mut self, on: bool) -> Self {
        self.force = on;
        self
    }

    /// `min_healthy` of pool `name`: a count (`2`) or a percentage (`"50%"`).
    pub fn min_healthy(mut self, name: &str, value: impl Into<Value>) -> Self {
        let value = value.into().to_string();
        match self.min_healthy.iter_mut().find(|(n, _)| n == name) {
            Some(p) => p.1 = value,
            None => self.min_healthy.push((name.to_string(), value)),
        }
        self
    }

    /// A `# comment` first line (then `active` is on line 2).
    pub fn comment(mut self, text: &str) -> Self {
        self.comment = Some(text.to_string());
        self
    }
}

/// A TOML string literal, escaped.
fn quoted(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A TOML key: bare when it can be, else quoted.
fn key(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        s.to_string()
    } else {
        quoted(s)
    }
}

impl Display for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.comment {
            writeln!(f, "# {c}")?;
        }
        writeln!(f, "active = {}", quoted(&self.active))?;
        if self.force {
            writeln!(f, "force = true")?;
        }
        for (name, endpoints) in &self.pools {
            let list: Vec<String> = endpoints.iter().map(|e| quoted(e)).collect();
            writeln!(f, "\n[pools.{}]\nendpoints = [{}]", key(name), list.join(", "))?;
            if let Some((_, v)) = self.min_healthy.iter().find(|(n, _)| n == name) {
                writeln!(f, "min_healthy = {v}")?;
            }
        }
        for t in &self.tables {
            writeln!(f, "\n{t}")?;
        }
        Ok(())
    }
}

/// Where the upstreams file comes from.
#[derive(Debug, Clone)]
enum UpstreamsSource {
    Built(Upstreams),
    Text(String),
    /// Already in the directory (e.g. a ConfigMap-style symlink).
    Existing,
}

/// A `proxy.toml` for tests: listeners on port 0 of 127.0.0.1, access log
/// off, the periodic re-read at 1 h (so only the watcher and SIGHUP reload),
/// everything else switchyard's default unless set.
#[derive(Debug)]
pub struct ProxyConfig {
    http: String,
    admin: String,
    persist: bool,
    allow_unauthenticated: bool,
    token: Option<String>,
    reread: Option<Duration>,
    access_log: bool,
    timeouts: Vec<(&'static str, Duration)>,
    expose: Option<bool>,
    trusted_proxies: Vec<String>,
    upgrade_protocols: Option<Vec<String>>,
    /// `[limits]` keys other than `upgrade_protocols`, in the order set.
    limits: Vec<(&'static str, Value)>,
    cores: Option<usize>,
    https: bool,
    h2c: bool,
    redirect_https: bool,
    tls: Option<(String, String)>,
    sni: Vec<(Vec<String>, String, String)>,
    upstreams: UpstreamsSource,
    dir: Option<tempfile::TempDir>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// A duration as switchyard's files write it (`500ms`, `10s`).
fn humane(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl ProxyConfig {
    /// The defaults above, with an upstreams file of no pools (set one).
    pub fn new() -> Self {
        Self {
            http: "127.0.0.1:0".into(),
            admin: "127.0.0.1:0".into(),
            persist: false,
            allow_unauthenticated: false,
            token: None,
            reread: Some(Duration::from_secs(3600)),
            access_log: false,
            timeouts: Vec::new(),
            expose: None,
            trusted_proxies: Vec::new(),
            upgrade_protocols: None,
            limits: Vec::new(),
            cores: None,
            https: false,
            h2c: false,
            redirect_https: false,
            tls: None,
            sni: Vec::new(),
            upstreams: UpstreamsSource::Text(String::new()),
            dir: None,
        }
    }

    /// Both listeners on port 0 of `ip` (e.g. `::1`).
    pub fn on(mut self, ip: std::net::IpAddr) -> Self {
        let addr = std::net::SocketAddr::new(ip, 0).to_string();
        self.http.clone_from(&addr);
        self.admin = addr;
        self
    }

    /// The admin listener on `ip` (port 0), the data listener unchanged.
    pub fn admin_on(mut self, ip: std::net::IpAddr) -> Self {
        self.admin = std::net::SocketAddr::new(ip, 0).to_string();
        self
    }

    /// The admin listener on exactly `addr` (replicas behind one name share
    /// a port on 127.0.0.1, 127.0.0.2, …).
    pub fn admin_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.admin = addr.to_string();
        self
    }

    /// `[admin] allow_unauthenticated`.
    pub fn allow_unauthenticated(mut self, on: bool) -> Self {
        self.allow_unauthenticated = on;
        self
    }

    /// `[timeouts] admin_body` (an admin request body still arriving).
    pub fn admin_body(self, d: Duration) -> Self {
        self.timeout("admin_body", d)
    }

    /// `[admin] persist`.
    pub fn persist(mut self, on: bool) -> Self {
        self.persist = on;
        self
    }

    /// `[admin] token_file`, a file `token` holding `token` (and a newline).
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// `[upstreams] reread`; `None`: switchyard's default.
    pub fn reread(mut self, every: Option<Duration>) -> Self {
        self.reread = every;
        self
    }

    /// `[log] access`.
    pub fn access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// `[timeouts] connect`.
    pub fn connect_timeout(self, d: Duration) -> Self {
        self.timeout("connect", d)
    }

    /// `[timeouts] request`.
    pub fn request_timeout(self, d: Duration) -> Self {
        self.timeout("request", d)
    }

    /// `[timeouts] client_idle`.
    pub fn client_idle(self, d: Duration) -> Self {
        self.timeout("client_idle", d)
    }

    /// `[timeouts] shutdown_delay`.
    pub fn shutdown_delay(self, d: Duration) -> Self {
        self.timeout("shutdown_delay", d)
    }

    /// `[timeouts] shutdown` (the drain deadline).
    pub fn shutdown_timeout(self, d: Duration) -> Self {
        self.timeout("shutdown", d)
    }

    /// `[timeouts] send` (a client that takes nothing of a response).
    pub fn send_timeout(self, d: Duration) -> Self {
        self.timeout("send", d)
    }

    /// `[timeouts] upstream_read` (an upstream that stalls mid-response).
    pub fn upstream_read(self, d: Duration) -> Self {
        self.timeout("upstream_read", d)
    }

    /// `[timeouts] tunnel_idle` (a tunnel with no byte either way).
    pub fn tunnel_idle(self, d: Duration) -> Self {
        self.timeout("tunnel_idle", d)
    }

    /// `[limits] upgrade_protocols`.
    pub fn upgrade_protocols<S: Display>(mut self, protocols: impl IntoIterator<Item = S>) -> Self {
        self.upgrade_protocols = Some(protocols.into_iter().map(|p| p.to_string()).collect());
        self
    }

    /// `[limits] max_connections` (client connections per process).
    pub fn max_connections(self, n: usize) -> Self {
        self.limit("max_connections", Value::Integer(n as i64))
    }

    /// `[limits] max_header_bytes`, a size as the file writes it (`"16KiB"`).
    pub fn max_header_bytes(self, size: &str) -> Self {
        self.limit("max_header_bytes", Value::String(size.into()))
    }

    /// `[limits] max_headers`.
    pub fn max_headers(self, n: usize) -> Self {
        self.limit("max_headers", Value::Integer(n as i64))
    }

    /// `[limits] max_body`, a size as the file writes it (`"1KiB"`, `"0"`).
    pub fn max_body(self, size: &str) -> Self {
        self.limit("max_body", Value::String(size.into()))
    }

    /// `[limits] upstream_max_connections` (per endpoint per process).
    pub fn upstream_max_connections(self, n: usize) -> Self {
        self.limit("upstream_max_connections", Value::Integer(n as i64))
    }

    /// `[runtime] cores` (0: the CPUs the process may use).
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = Some(n);
        self
    }

    fn limit(mut self, key: &'static str, v: Value) -> Self {
        self.limits.retain(|(k, _)| *k != key);
        self.limits.push((key, v));
        self
    }

    /// `[listen] https` on port 0 of the data listener's address, with
    /// `[tls]` `cert` and `key` (paths relative to the config directory,
    /// e.g. `tls/tls.crt` for a Secret-style mount written there).
    pub fn tls(mut self, cert: &str, key: &str) -> Self {
        self.https = true;
        self.tls = Some((cert.to_string(), key.to_string()));
        self
    }

    /// A `[[tls.sni]]` entry: `names` get the certificate `cert` / `key`.
    pub fn tls_sni(mut self, names: &[&str], cert: &str, key: &str) -> Self {
        let names = names.iter().map(ToString::to_string).collect();
        self.sni.push((names, cert.to_string(), key.to_string()));
        self
    }

    /// `[listen] h2c` (HTTP/2 with prior knowledge on the plain listener).
    pub fn h2c(mut self, on: bool) -> Self {
        self.h2c = on;
        self
    }

    /// `[listen] redirect_https` (needs [`ProxyConfig::tls`]).
    pub fn redirect_https(mut self, on: bool) -> Self {
        self.redirect_https = on;
        self
    }

    /// `[timeouts] tls_handshake`.
    pub fn tls_handshake(self, d: Duration) -> Self {
        self.timeout("tls_handshake", d)
    }

    fn timeout(mut self, key: &'static str, d: Duration) -> Self {
        self.timeouts.retain(|(k, _)| *k != key);
        self.timeouts.push((key, d));
        self
    }

    /// `[headers] expose`.
    pub fn expose_headers(mut self, on: bool) -> Self {
        self.expose = Some(on);
        self
    }

    /// `[headers] trusted_proxies`.
    pub fn trusted_proxies<S: Display>(mut self, nets: impl IntoIterator<Item = S>) -> Self {
        self.trusted_proxies = nets.into_iter().map(|n| n.to_string()).collect();
        self
    }

    /// The upstreams file.
    pub fn upstreams(mut self, u: Upstreams) -> Self {
        self.upstreams = UpstreamsSource::Built(u);
        self
    }

    /// The upstreams file, verbatim (comments, odd layouts, invalid files).
    pub fn upstreams_text(mut self, text: &str) -> Self {
        self.upstreams = UpstreamsSource::Text(text.to_string());
        self
    }

    /// Writes into `dir`, whose `upstreams.toml` is already there (a file or a symlink).
    pub fn in_dir_with_upstreams(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self.upstreams = UpstreamsSource::Existing;
        self
    }

    /// `proxy.toml` as text.
    pub fn proxy_toml(&self) -> String {
        let mut t = Table::new();
        let mut section = |name: &str, entries: Vec<(&str, Value)>| {
            if !entries.is_empty() {
                let table: Table = entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                t.insert(name.to_string(), Value::Table(table));
            }
        };
        let mut listen = vec![("http", Value::String(self.http.clone()))];
        if self.https {
            listen.push(("https", Value::String(self.http.clone())));
        }
        if self.h2c {
            listen.push(("h2c", Value::Boolean(true)));
        }
        if self.redirect_https {
            listen.push(("redirect_https", Value::Boolean(true)));
        }
        section("listen", listen);
        if let Some((cert, key)) = &self.tls {
            let mut tls = vec![
                ("cert", Value::String(cert.clone())),
                ("key", Value::String(key.clone())),
            ];
            if !self.sni.is_empty() {
                let entries = self
                    .sni
                    .iter()
                    .map(|(names, cert, key)| {
                        let mut e = Table::new();
                        e.insert(
                            "names".into(),
                            Value::Array(names.iter().cloned().map(Value::String).collect()),
                        );
                        e.insert("cert".into(), Value::String(cert.clone()));
                        e.insert("key".into(), Value::String(key.clone()));
                        Value::Table(e)
                    })
                    .collect();
                tls.push(("sni", Value::Array(entries)));
            }
            section("tls", tls);
        }
        let mut admin = vec![("listen", Value::String(self.admin.clone()))];
        if self.persist {
            admin.push(("persist", Value::Boolean(true)));
        }
        if self.token.is_some() {
            admin.push(("token_file", Value::String("token".into())));
        }
        if self.allow_unauthenticated {
            admin.push(("allow_unauthenticated", Value::Boolean(true)));
        }
        section("admin", admin);
        let mut ups = vec![("file", Value::String("upstreams.toml".into()))];
        if let Some(r) = self.reread {
            ups.push(("reread", Value::String(humane(r))));
        }
        section("upstreams", ups);
        section("log", vec![("access", Value::Boolean(self.access_log))]);
        section(
            "timeouts",
            self.timeouts
                .iter()
                .map(|(k, d)| (*k, Value::String(humane(*d))))
                .collect(),
        );
        let mut headers = Vec::new();
        if let Some(e) = self.expose {
            headers.push(("expose", Value::Boolean(e)));
        }
        if !self.trusted_proxies.is_empty() {
            let nets = self.trusted_proxies.iter().cloned().map(Value::String).collect();
            headers.push(("trusted_proxies", Value::Array(nets)));
        }
        section("headers", headers);
        let mut limits = Vec::new();
        if let Some(p) = &self.upgrade_protocols {
            let list = p.iter().cloned().map(Value::String).collect();
            limits.push(("upgrade_protocols", Value::Array(list)));
        }
        limits.extend(self.limits.iter().map(|(k, v)| (*k, v.clone())));
        section("limits", limits);
        if let Some(n) = self.cores {
            section("runtime", vec![("cores", Value::Integer(n as i64))]);
        }
        t.to_string()
    }

    /// Writes `proxy.toml`, `upstreams.toml` and the token file into a new
    /// temp dir (or the one given) and returns their paths.
    pub fn write(mut self) -> ProxyFiles {
        let dir = match self.dir.take() {
            Some(d) => d,
            None => tempfile::tempdir().unwrap(),
        };
        let proxy_toml = dir.path().join("proxy.toml");
        let upstreams_toml = dir.path().join("upstreams.toml");
        std::fs::write(&proxy_toml, self.proxy_toml()).unwrap();
        match &self.upstreams {
            UpstreamsSource::Built(u) => std::fs::write(&upstreams_toml, u.to_string()).unwrap(),
            UpstreamsSource::Text(t) => std::fs::write(&upstreams_toml, t).unwrap(),
            UpstreamsSource::Existing => {}
        }
        if let Some(token) = &self.token {
            std::fs::write(dir.path().join("token"), format!("{token}\n")).unwrap();
        }
        ProxyFiles {
            proxy_toml,
            upstreams_toml,
            dir,
        }
    }
}

/// A written configuration: its paths, and the temp dir (removed on drop).
#[derive(Debug)]
pub struct ProxyFiles {
    /// `proxy.toml`: what switchyard is started with.
    pub proxy_toml: PathBuf,
    /// `upstreams.toml`, which tests rewrite to switch.
    pub upstreams_toml: PathBuf,
    /// The directory holding both.
    pub dir: tempfile::TempDir,
}

impl ProxyFiles {
    /// Replaces `upstreams.toml` by writing a temp file and renaming it over
    /// (as `sed -i` and most editors do).
    pub fn rename_upstreams(&self, text: &str) {
        self.rename_upstreams_bytes(text.as_bytes());
    }

    /// [`ProxyFiles::rename_upstreams`] with any bytes, UTF-8 or not.
    pub fn rename_upstreams_bytes(&self, text: &[u8]) {
        let tmp = self.upstreams_toml.with_extension("tmp~");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.upstreams_toml).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_with_force_and_min_healthy() {
        let text = Upstreams::blue_green("green", "127.0.0.1:1", "127.0.0.1:2")
            .force(true)
            .min_healthy("green", 3)
            .min_healthy("blue", "50%")
            .to_string();
        let t: Table = text.parse().unwrap();
        assert_eq!(t["force"].as_bool(), Some(true), "{text}");
        assert_eq!(t["pools"]["green"]["min_healthy"].as_integer(), Some(3), "{text}");
        assert_eq!(t["pools"]["blue"]["min_healthy"].as_str(), Some("50%"), "{text}");
        let plain: Table = Upstreams::blue("127.0.0.1:1").to_string().parse().unwrap();
        assert!(!plain.contains_key("force"));
    }

    #[test]
    fn writes_both_files() {
        let files = ProxyConfig::new()
            .persist(true)
            .token("t")
            .shutdown_delay(Duration::from_millis(500))
            .shutdown_timeout(Duration::from_secs(10))
            .send_timeout(Duration::from_millis(300))
            .upstream_read(Duration::from_secs(2))
            .tunnel_idle(Duration::from_secs(3600))
            .upgrade_protocols(["websocket", "h2c"])
            .max_connections(5)
            .max_header_bytes("16KiB")
            .max_headers(20)
            .max_body("1KiB")
            .upstream_max_connections(1)
            .connect_timeout(Duration::from_millis(300))
            .cores(1)
            .trusted_proxies(["127.0.0.0/8"])
            .expose_headers(false)
            .upstreams(Upstreams::blue_green("green", "127.0.0.1:1", "127.0.0.1:2").comment("test"))
            .write();
        let proxy: Table = std::fs::read_to_string(&files.proxy_toml)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(proxy["admin"]["persist"].as_bool(), Some(true));
        assert_eq!(proxy["admin"]["token_file"].as_str(), Some("token"));
        assert_eq!(proxy["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(proxy["timeouts"]["shutdown_delay"].as_str(), Some("500ms"));
        assert_eq!(proxy["timeouts"]["shutdown"].as_str(), Some("10s"));
        assert_eq!(proxy["timeouts"]["send"].as_str(), Some("300ms"));
        assert_eq!(proxy["timeouts"]["upstream_read"].as_str(), Some("2s"));
        assert_eq!(proxy["timeouts"]["tunnel_idle"].as_str(), Some("3600s"));
        assert_eq!(
            proxy["limits"]["upgrade_protocols"],
            Value::Array(vec!["websocket".into(), "h2c".into()])
        );
        assert_eq!(proxy["headers"]["expose"].as_bool(), Some(false));
        let limits = &proxy["limits"];
        assert_eq!(limits["max_connections"].as_integer(), Some(5));
        assert_eq!(limits["max_header_bytes"].as_str(), Some("16KiB"));
        assert_eq!(limits["max_headers"].as_integer(), Some(20));
        assert_eq!(limits["max_body"].as_str(), Some("1KiB"));
        assert_eq!(limits["upstream_max_connections"].as_integer(), Some(1));
        assert_eq!(proxy["timeouts"]["connect"].as_str(), Some("300ms"));
        assert_eq!(proxy["runtime"]["cores"].as_integer(), Some(1));
        assert_eq!(
            std::fs::read_to_string(files.dir.path().join("token")).unwrap(),
            "t\n"
        );
        let ups = std::fs::read_to_string(&files.upstreams_toml).unwrap();
        assert_eq!(
            ups,
            "# test\nactive = \"green\"\n\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n"
        );
        let parsed: Table = ups.parse().unwrap();
        assert_eq!(
            parsed["pools"]["green"]["endpoints"][0].as_str(),
            Some("127.0.0.1:2")
        );
    }
}
