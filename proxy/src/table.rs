//! The routing table: one immutable value that decides where every request
//! goes, built and validated completely before it is stored in the
//! `ArcSwap` that the data plane loads once per request.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

use crate::config::ConfigError;
use crate::config::{self, Discovery, Health, MinHealthy, PoolFile};
use crate::metrics::Metrics;
use crate::pool::{Endpoint, EndpointHealth, Pool};

/// One pool of an upstreams file: fixed `endpoints` (IP literals or DNS
/// names) or one `dns` name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolDef {
    /// `endpoints`, as written.
    pub endpoints: Vec<String>,
    /// `dns = "name:port"`.
    pub dns: Option<String>,
}

impl PoolDef {
    /// A pool of fixed endpoints.
    pub fn fixed(endpoints: Vec<String>) -> PoolDef {
        PoolDef { endpoints, dns: None }
    }

    /// Where its endpoints come from: each `host:port` of `endpoints`, or
    /// its `dns` name.
    pub fn sources(&self) -> Vec<String> {
        match &self.dns {
            Some(d) => vec![d.clone()],
            None => self.endpoints.clone(),
        }
    }
}

/// What each DNS name (`name:port`, as written) last resolved to: kept by
/// the writer, filled by discovery.
pub type Resolved = HashMap<String, Vec<SocketAddr>>;

/// Whether a source needs DNS (it is not an `ip:port` literal).
pub fn is_name(source: &str) -> bool {
    source.parse::<SocketAddr>().is_err()
}

/// Who made a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The upstreams file (at start, on a change, on SIGHUP).
    File,
    /// `POST /switch`.
    Admin,
    /// `POST /rollback`.
    Rollback,
    /// (later) the automatic rollback.
    Auto,
}

impl Source {
    /// The label used in metrics, logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Admin => "admin",
            Source::Rollback => "rollback",
            Source::Auto => "auto",
        }
    }
}

/// The pools of an upstreams file, validated: names and endpoint strings in
/// file order, and the file's `active`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The file's `active`.
    pub active: String,
    /// The file's `force`: a change of `active` skips the switch gate.
    pub force: bool,
    /// `(pool name, definition)` in file order.
    pub pools: Vec<(String, PoolDef)>,
    /// Each pool's `min_healthy` (the default filled in), by pool name.
    pub min_healthy: BTreeMap<String, MinHealthy>,
    /// `[discovery]` (shared: every table built from this file holds it).
    pub discovery: Arc<Discovery>,
    /// `[health]`; `None`: passive ejection with the defaults, no active check.
    pub health: Option<Arc<Health>>,
    /// `[split] weights`: each pool with a share above 0 (sorted by name);
    /// `None` without a split.
    pub split: Option<Vec<(String, u8)>>,
    /// `[split] sticky_cookie`.
    pub sticky_cookie: Option<String>,
    /// `[preview]`.
    pub preview: Option<Arc<PreviewRules>>,
    /// `[rollback]`; `None`: no automatic rollback.
    pub rollback: Option<RollbackRules>,
}

/// `[preview]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewRules {
    /// The header whose value names the pool (lower case).
    pub header: http::HeaderName,
    /// The cookie whose value names the pool, if any.
    pub cookie: Option<String>,
    /// Who may preview.
    pub allow: Vec<ipnet::IpNet>,
}

/// `[rollback]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackRules {
    /// How long after a forward switch the new pool is watched.
    pub window: std::time::Duration,
    /// `max_error_rate` in millionths (an integer, so the rules compare exactly).
    pub max_error_ppm: u64,
    /// Requests of the new pool needed before the rate is judged.
    pub min_requests: u64,
}

impl RollbackRules {
    /// Whether `errors` of `requests` is past the threshold: at least
    /// `min_requests`, and a rate above `max_error_rate`.
    pub fn past(&self, requests: u64, errors: u64) -> bool {
        requests > 0
            && requests >= self.min_requests
            && u128::from(errors) * 1_000_000 > u128::from(self.max_error_ppm) * u128::from(requests)
    }

    /// `max_error_rate` as a percentage, for messages.
    pub fn max_error_percent(&self) -> f64 {
        self.max_error_ppm as f64 / 10_000.0
    }
}

impl Desired {
    /// Parses and validates an upstreams file's bytes; every error is listed.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Desired, Vec<ConfigError>> {
        let (file, pools) = config::parse_upstreams(path, bytes)?;
        // `parse_upstreams` accepted the bytes only as UTF-8: no copy needed.
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        let mut errors = Vec::new();
        let mut out = Vec::new();
        let mut min_healthy = BTreeMap::new();
        for (
            name,
            PoolFile {
                endpoints,
                dns,
                min_healthy: min,
            },
            line,
        ) in pools
        {
            min_healthy.insert(name.clone(), min);
            let err = |reason: String| ConfigError::Invalid {
                file: path.to_path_buf(),
                line: Some(line),
                reason,
            };
            if !valid_name(&name) {
                errors.push(err(format!(
                    "pool name `{name}` must be 1-64 characters of a-z, 0-9, `-` or `_`"
                )));
            }
            match (&dns, endpoints.is_empty()) {
                (Some(_), false) => errors.push(err(format!(
                    "pools.{name}: `endpoints` and `dns` exclude each other; give one of them"
                ))),
                (None, true) => errors.push(err(format!(
                    "pools.{name}: a pool needs at least one endpoint (or a `dns` name)"
                ))),
                (Some(d), true) => match check_endpoint(d) {
                    Err(reason) => errors.push(err(format!("pools.{name}: dns `{d}`: {reason}"))),
                    Ok(()) if !is_name(d) => errors.push(err(format!(
                        "pools.{name}: dns `{d}` is an address, not a name; use `endpoints`"
                    ))),
                    Ok(()) => {}
                },
                (None, false) => {}
            }
            let mut seen = std::collections::HashSet::new();
            for ep in &endpoints {
                if let Err(reason) = check_endpoint(ep) {
                    errors.push(err(format!("pools.{name}: endpoint `{ep}`: {reason}")));
                } else if !seen.insert(ep.as_str()) {
                    errors.push(err(format!("pools.{name}: endpoint `{ep}` is listed twice")));
                }
            }
            out.push((name, PoolDef { endpoints, dns }));
        }
        if out.is_empty() {
            errors.push(ConfigError::Invalid {
                file: path.to_path_buf(),
                line: Some(config::line_of(text, file.pools.span().start)),
                reason: "no pool is defined".into(),
            });
        }
        let active = file.active.get_ref().clone();
        if !out.iter().any(|(n, _)| *n == active) {
            let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
            errors.push(ConfigError::Invalid {
                file: path.to_path_buf(),
                line: Some(config::line_of(text, file.active.span().start)),
                reason: format!(
                    "active = \"{active}\" is not a pool (pools: {})",
                    names.join(", ")
                ),
            });
        }
        let d = &file.discovery;
        let mut invalid = |reason: String| {
            errors.push(ConfigError::Invalid {
                file: path.to_path_buf(),
                line: None,
                reason,
            })
        };
        if d.every.is_zero() {
            invalid("discovery.every must be greater than 0".into());
        }
        if let Some(h) = &file.health {
            if let Some(p) = &h.path {
                if !p.starts_with('/') || p.parse::<http::uri::PathAndQuery>().is_err() {
                    invalid(format!("health.path `{p}` must be a path starting with `/`"));
                }
            }
            for (key, value) in [("interval", h.interval), ("timeout", h.timeout)] {
                if value.is_zero() {
                    invalid(format!("health.{key} must be greater than 0"));
                }
            }
            for (key, value) in [
                ("healthy_after", h.healthy_after),
                ("unhealthy_after", h.unhealthy_after),
            ] {
                if value == 0 {
                    invalid(format!("health.{key} must be at least 1"));
                }
            }
            if h.max_ejected_percent > 100 {
                invalid(format!(
                    "health.max_ejected_percent = {} is not a percentage (0-100)",
                    h.max_ejected_percent
                ));
            }
            if h.eject_for.is_zero() {
                invalid("health.eject_for must be greater than 0".into());
            }
        }
        let line = |span: std::ops::Range<usize>| Some(config::line_of(text, span.start));
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        let mut split = None;
        let mut sticky_cookie = None;
        if let Some(s) = &file.split {
            let at = line(s.span());
            let mut bad = |reason: String| {
                errors.push(ConfigError::Invalid {
                    file: path.to_path_buf(),
                    line: at,
                    reason,
                })
            };
            let s = s.get_ref();
            if let Some(weights) = &s.weights {
                let mut sum = 0i64;
                let mut ok = Vec::new();
                for (pool, w) in weights {
                    if !names.contains(&pool.as_str()) {
                        bad(format!(
                            "split.weights: `{pool}` is not a pool (pools: {})",
                            names.join(", ")
                        ));
                    } else if !(0..=100).contains(w) {
                        bad(format!(
                            "split.weights.{pool} = {w} is not a share (an integer 0-100)"
                        ));
                    } else {
                        sum += w;
                        ok.push((pool.clone(), u8::try_from(*w).unwrap_or(0)));
                    }
                }
                if ok.len() == weights.len() && sum != 100 {
                    bad(format!(
                        "split.weights add up to {sum}, not 100 ({})",
                        weights
                            .iter()
                            .map(|(p, w)| format!("{p} = {w}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                split = Some(ok);
            }
            if let Some(c) = &s.sticky_cookie {
                if !is_cookie_name(c) {
                    bad(format!(
                        "split.sticky_cookie `{c}` is not a cookie name (a token)"
                    ));
                }
                sticky_cookie = Some(c.clone());
            }
        }
        let mut preview = None;
        if let Some(p) = &file.preview {
            let at = line(p.span());
            let mut bad = |reason: String| {
                errors.push(ConfigError::Invalid {
                    file: path.to_path_buf(),
                    line: at,
                    reason,
                })
            };
            let p = p.get_ref();
            let header = http::HeaderName::from_bytes(p.header.to_ascii_lowercase().as_bytes());
            if header.is_err() {
                bad(format!("preview.header `{}` is not a header name", p.header));
            }
            if let Some(c) = p.cookie.as_ref().filter(|c| !is_cookie_name(c)) {
                bad(format!("preview.cookie `{c}` is not a cookie name (a token)"));
            }
            if p.cookie.is_some() && p.cookie == sticky_cookie {
                bad("preview.cookie and split.sticky_cookie must differ".into());
            }
            match (&p.allow, header) {
                (None, _) => bad(
                    "preview.allow is required: the CIDRs that may preview (e.g. [\"10.0.0.0/8\"])".into(),
                ),
                (Some(allow), Ok(header)) => {
                    preview = Some(Arc::new(PreviewRules {
                        header,
                        cookie: p.cookie.clone(),
                        allow: allow.clone(),
                    }))
                }
                (Some(_), Err(_)) => {}
            }
        }
        let mut rollback = None;
        if let Some(r) = &file.rollback {
            let at = line(r.span());
            let r = r.get_ref();
            let mut bad = |reason: String| {
                errors.push(ConfigError::Invalid {
                    file: path.to_path_buf(),
                    line: at,
                    reason,
                })
            };
            if r.window.is_zero() {
                bad("rollback.window must be greater than 0".into());
            }
            if !(r.max_error_rate >= 0.0 && r.max_error_rate < 1.0) {
                bad(format!(
                    "rollback.max_error_rate = {} is not a rate (0 <= rate < 1, e.g. 0.05)",
                    r.max_error_rate
                ));
            }
            if r.min_requests == 0 {
                bad("rollback.min_requests must be at least 1".into());
            }
            rollback = Some(RollbackRules {
                window: r.window,
                max_error_ppm: (r.max_error_rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u64,
                min_requests: r.min_requests,
            });
        }
        if errors.is_empty() {
            Ok(Desired {
                active,
                force: file.force,
                pools: out,
                min_healthy,
                discovery: Arc::new(file.discovery.clone()),
                health: file.health.clone().map(Arc::new),
                split: split.map(|w| {
                    let mut w: Vec<(String, u8)> = w.into_iter().filter(|(_, n)| *n > 0).collect();
                    w.sort();
                    w
                }),
                sticky_cookie,
                preview,
                rollback,
            })
        } else {
            Err(errors)
        }
    }

    /// Whether `name` is one of the pools.
    pub fn has_pool(&self, name: &str) -> bool {
        self.pools.iter().any(|(n, _)| n == name)
    }

    /// The `min_healthy` of pool `name` (the default for a pool not listed).
    pub fn min_healthy(&self, name: &str) -> MinHealthy {
        self.min_healthy.get(name).copied().unwrap_or_default()
    }
}

/// Whether a pool is ready (the switch gate), with the counts that say why:
/// ready when it has at least one endpoint and at least `needs` of its
/// `endpoints` count as healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Endpoints that count for the gate.
    pub healthy: usize,
    /// All of the pool's endpoints.
    pub endpoints: usize,
    /// Healthy endpoints the pool needs (`min_healthy`, a percentage rounded up).
    pub needs: usize,
}

impl Readiness {
    /// A pool of `endpoints` endpoints, `healthy` of them counting, with `min_healthy`.
    pub fn of(healthy: usize, endpoints: usize, min_healthy: MinHealthy) -> Readiness {
        Readiness {
            healthy,
            endpoints,
            needs: min_healthy.needs(endpoints),
        }
    }

    /// Whether traffic may be switched to the pool: a pool with no endpoint
    /// never is.
    pub fn is_ready(&self) -> bool {
        self.endpoints > 0 && self.healthy >= self.needs
    }

    /// Why pool `pool` is (not) ready, as the 409 and `/status` say it:
    /// `green: 0 of 3 endpoints healthy, needs 1`.
    pub fn reason(&self, pool: &str) -> String {
        if self.endpoints == 0 {
            format!("{pool}: no endpoint (a pool with no endpoint is never ready)")
        } else {
            format!(
                "{pool}: {} of {} endpoints healthy, needs {}",
                self.healthy, self.endpoints, self.needs
            )
        }
    }
}

/// A file switch waiting for its pool to be ready, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFact {
    /// The pool the file names.
    pub active: String,
    /// Why it waits (the target's readiness).
    pub reason: String,
}

/// Whether `name` may name a cookie (an HTTP token, RFC 6265 §4.1.1).
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks a `host:port` endpoint: an IP literal (`[v6]:port` for IPv6) or a DNS name.
pub fn check_endpoint(ep: &str) -> Result<(), String> {
    if let Ok(addr) = ep.parse::<std::net::SocketAddr>() {
        return if addr.port() == 0 {
            Err("port 0 is not a port (1-65535)".into())
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = ep.rsplit_once(':') else {
        return Err("expected host:port".into());
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("`{port}` is not a port (1-65535)"));
    }
    // A fully qualified name may end with its root dot.
    let host = host.strip_suffix('.').unwrap_or(host);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if host_ok {
        Ok(())
    } else {
        Err(format!("`{host}` is neither an IP address nor a DNS name"))
    }
}

/// What `/status` shows of the control plane, carried by the table so that
/// one load answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlFacts {
    /// The pool active before the last switch, until a rollback consumes it.
    pub previous: Option<String>,
    /// Whether an admin switch or rollback overrides the file's `active`.
    pub overridden: bool,
    /// Why the override was made, when the proxy made it (`auto`).
    pub override_reason: Option<String>,
    /// Why an automatic rollback that is due cannot switch.
    pub rollback_blocked: Option<String>,
    /// The last rejected reload's errors, cleared by the next valid read.
    pub last_reload_error: Option<String>,
    /// Why the override in force could not be written to the file (persist).
    pub persist_error: Option<String>,
    /// The last accepted file's `active` (override or not).
    pub file_active: String,
    /// A file switch waiting for its pool to be ready.
    pub pending: Option<PendingFact>,
    /// Each pool's readiness, as the writer last computed it (by pool name).
    pub readiness: BTreeMap<String, Readiness>,
}

/// What a table is built from.
#[derive(Debug, Clone)]
pub struct Spec<'a> {
    /// The pools (of the last accepted upstreams file).
    pub file: &'a Desired,
    /// The active pool; must be a pool of `file`.
    pub active: &'a str,
    /// The weights of a split (each pool with a share above 0), or empty.
    pub split: &'a [(String, u8)],
    /// The table's generation.
    pub generation: u64,
    /// Who made it.
    pub source: Source,
    /// When the active pool last changed.
    pub switched_at: SystemTime,
    /// When the pending file switch (if any) began waiting.
    pub pending_since: Option<SystemTime>,
    /// The control facts it carries.
    pub facts: ControlFacts,
    /// What the DNS names of the pools last resolved to.
    pub resolved: &'a Resolved,
}

/// The immutable routing table the data plane reads.
#[derive(Clone)]
pub struct RoutingTable {
    /// Counts changes of routing intent; starts at 1.
    pub generation: u64,
    /// Who made this table.
    pub source: Source,
    /// Every pool, in file order.
    pub pools: Vec<Arc<Pool>>,
    /// Index of the active pool in `pools`.
    pub active: usize,
    /// `x-switchyard-generation`, pre-built.
    pub generation_header: HeaderValue,
    /// When the active pool last changed (or the table was first loaded).
    pub switched_at: SystemTime,
    /// When the pending file switch in `facts` began waiting.
    pub pending_since: Option<SystemTime>,
    /// What `/status` shows of the control plane.
    pub facts: ControlFacts,
    /// `[discovery]` of the file it was built from.
    pub discovery: Arc<Discovery>,
    /// `[health]` of the file it was built from (the defaults without one).
    pub health: Arc<Health>,
    /// Each pool's share of requests (0-100), by index in `pools`: 100 for
    /// the active pool when there is no split.
    pub weights: Vec<u8>,
    /// During a split: for each r in 0..100, the index of the pool a
    /// request with that draw goes to (the weights as a cumulative table,
    /// so the choice is one index, no search, no lock, no allocation).
    pub split: Option<Box<[u16]>>,
    /// `[split] sticky_cookie` with each pool's `Set-Cookie` value, pre-built.
    pub sticky: Option<Arc<Sticky>>,
    /// `[preview]`.
    pub preview: Option<Arc<PreviewRules>>,
}

/// The sticky cookie of a split.
#[derive(Debug)]
pub struct Sticky {
    /// The cookie's name.
    pub name: String,
    /// `<name>=<pool>; Path=/; HttpOnly; SameSite=Lax` per pool index.
    pub set_cookie: Vec<HeaderValue>,
}

impl Sticky {
    fn new(name: &str, pools: &[Arc<Pool>]) -> Sticky {
        let set_cookie = pools
            .iter()
            .map(|p| {
                HeaderValue::from_str(&format!("{name}={}; Path=/; HttpOnly; SameSite=Lax", p.name))
                    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
            })
            .collect();
        Sticky {
            name: name.to_string(),
            set_cookie,
        }
    }
}

impl RoutingTable {
    /// The pool that gets new requests.
    pub fn active_pool(&self) -> &Arc<Pool> {
        &self.pools[self.active]
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// Builds the table `spec` describes, reusing the pools (and so the
    /// endpoints and their warm connections) of `old` that did not change.
    /// It sets no metric: new pools and endpoints only resolve their metric
    /// handles; [`RoutingTable::publish`] sets the gauges once it is stored.
    pub fn build(spec: &Spec<'_>, old: Option<&RoutingTable>, metrics: &Metrics) -> RoutingTable {
        let health = spec.file.health.clone().unwrap_or_default();
        let checked = health.active();
        let pools: Vec<Arc<Pool>> = spec
            .file
            .pools
            .iter()
            .map(|(name, def)| {
                let sources = def.sources();
                let addrs = addresses(&sources, spec.resolved);
                let old_pool = old.and_then(|t| t.pool(name));
                match old_pool {
                    Some(p)
                        if p.endpoints.iter().map(|e| e.socket).eq(addrs.iter().copied())
                            && p.sources == sources
                            && p.checked == checked
                            && p.eject_after == health.eject_after =>
                    {
                        Arc::clone(p)
                    }
                    _ => {
                        let eps = addrs
                            .iter()
                            .map(|addr| {
                                old_pool
                                    .and_then(|p| p.endpoints.iter().find(|e| e.socket == *addr))
                                    .cloned()
                                    .unwrap_or_else(|| Arc::new(Endpoint::new(name, *addr, metrics)))
                            })
                            .collect();
                        let mut pool = Pool::new(name, eps, metrics, old_pool.map(|p| &**p));
                        pool.sources = sources;
                        pool.checked = checked;
                        pool.eject_after = health.eject_after;
                        Arc::new(pool)
                    }
                }
            })
            .collect();
        let active = pools.iter().position(|p| p.name == spec.active).unwrap_or(0);
        let weights: Vec<u8> = pools
            .iter()
            .enumerate()
            .map(|(i, p)| match spec.split {
                [] => 100 * u8::from(i == active),
                split => split.iter().find(|(n, _)| *n == p.name).map_or(0, |(_, w)| *w),
            })
            .collect();
        let split = (!spec.split.is_empty()).then(|| {
            let mut pick = Vec::with_capacity(100);
            for (i, w) in weights.iter().enumerate() {
                for _ in 0..*w {
                    pick.push(u16::try_from(i).unwrap_or(0));
                }
            }
            // Validated weights sum to 100; anything short goes to the active pool.
            pick.resize(100, u16::try_from(active).unwrap_or(0));
            pick.truncate(100);
            pick.into_boxed_slice()
        });
        let sticky = spec
            .file
            .sticky_cookie
            .as_deref()
            .map(|name| Arc::new(Sticky::new(name, &pools)));
        RoutingTable {
            generation: spec.generation,
            source: spec.source,
            pools,
            active,
            generation_header: HeaderValue::from(spec.generation),
            switched_at: spec.switched_at,
            pending_since: spec.pending_since,
            facts: spec.facts.clone(),
            discovery: Arc::clone(&spec.file.discovery),
            health,
            weights,
            split,
            sticky,
            preview: spec.file.preview.clone(),
        }
    }

    /// Whether pool `i` gets new requests (it is active, or has a share of a
    /// split): such a pool is never `drained`.
    pub fn serves(&self, i: usize) -> bool {
        i == self.active || self.weights.get(i).is_some_and(|w| *w > 0)
    }

    /// The same table with other control facts (nothing a request sees changes).
    pub fn with_facts(&self, facts: ControlFacts, pending_since: Option<SystemTime>) -> RoutingTable {
        RoutingTable {
            facts,
            pending_since,
            ..self.clone()
        }
    }

    /// Each pool's readiness now: its endpoints that count for the gate
    /// ([`Pool::gate_count`]) against its `min_healthy` in `file`. Computed
    /// by the writer and handed to `decide` as data.
    pub fn readiness(&self, file: &Desired) -> BTreeMap<String, Readiness> {
        self.pools
            .iter()
            .map(|p| {
                let (healthy, endpoints) = p.gate_count();
                (
                    p.name.clone(),
                    Readiness::of(healthy, endpoints, file.min_healthy(&p.name)),
                )
            })
            .collect()
    }

    /// Publishes this stored table in the metrics: which pool is active, the
    /// generation, and no series left of a pool or endpoint that `old` had
    /// and this table has not.
    pub fn publish(&self, old: Option<&RoutingTable>, metrics: &Metrics) {
        for (i, p) in self.pools.iter().enumerate() {
            p.metrics.active.set(i64::from(i == self.active));
            p.metrics
                .split_weight
                .set(i64::from(self.weights.get(i).copied().unwrap_or(0)));
            let ready = self.facts.readiness.get(&p.name).is_some_and(Readiness::is_ready);
            p.metrics.ready.set(i64::from(ready));
            p.metrics
                .file_active
                .set(i64::from(p.name == self.facts.file_active));
        }
        metrics
            .switch_pending
            .set(i64::from(self.facts.pending.is_some()));
        metrics.admin_override.set(i64::from(self.facts.overridden));
        for p in old.map(|o| o.pools.as_slice()).unwrap_or_default() {
            match self.pool(&p.name) {
                None => {
                    metrics.remove_pool(&p.name);
                    for e in &p.endpoints {
                        metrics.remove_endpoint(&p.name, &e.addr);
                    }
                }
                Some(n) => {
                    for e in &p.endpoints {
                        if !n.endpoints.iter().any(|x| x.addr == e.addr) {
                            metrics.remove_endpoint(&p.name, &e.addr);
                        }
                    }
                }
            }
        }
        metrics
            .generation
            .set(i64::try_from(self.generation).unwrap_or(i64::MAX));
        self.publish_health();
    }

    /// Sets the health series from the endpoints' states as they stand:
    /// `upstream_healthy` (1 while routing uses the endpoint),
    /// `pool_endpoints{state}` and `pool_panic`.
    pub fn publish_health(&self) {
        for p in &self.pools {
            let panic = p.panic();
            for e in &p.endpoints {
                e.healthy.set(i64::from(panic || e.health.get().usable()));
            }
            for (state, n) in EndpointHealth::ALL.iter().zip(p.census()) {
                p.metrics.endpoints[*state as usize].set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            p.metrics.panic.set(i64::from(panic));
        }
    }

    /// Every DNS name of every pool (`name:port`), each once.
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.pools {
            for s in p.sources.iter().filter(|s| is_name(s)) {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
        }
        out
    }
}

/// A pool's addresses: its `ip:port` sources and what its names resolved
/// to, in order, each once.
fn addresses(sources: &[String], resolved: &Resolved) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for s in sources {
        let literal = s.parse::<SocketAddr>().ok();
        let found = match &literal {
            Some(a) => std::slice::from_ref(a),
            None => resolved.get(s).map_or(&[][..], Vec::as_slice),
        };
        for a in found {
            if !out.contains(a) {
                out.push(*a);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Desired, Vec<String>> {
        Desired::parse(Path::new("u.toml"), text.as_bytes())
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn valid_file() {
        let d = parse("active = \"green\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"[::1]:2\", \"api.default.svc:80\"]\n").unwrap();
        assert_eq!(d.active, "green");
        assert_eq!(d.pools.len(), 2);
    }

    #[test]
    fn unknown_active_pool_names_line() {
        let errs =
            parse("\n\nactive = \"purple\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert!(
            errs[0].contains("line 3:") && errs[0].contains("purple"),
            "{errs:?}"
        );
    }

    #[test]
    fn empty_pool_and_bad_endpoint_are_listed_together() {
        let errs = parse("active = \"blue\"\n[pools.blue]\nendpoints = []\n[pools.green]\nendpoints = [\"nohost\", \"1.2.3.4:0\"]\n")
            .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].contains("at least one endpoint"));
    }

    #[test]
    fn empty_and_garbage_files_are_errors() {
        assert!(parse("").unwrap_err()[0].contains("empty"));
        assert!(parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"").is_err());
        assert!(Desired::parse(Path::new("u"), &[0xff, 0xfe, 0x00]).is_err());
    }

    #[test]
    fn progressive_sections_are_checked_with_the_reason() {
        const POOLS: &str = "active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n";
        let with = |extra: &str| parse(&format!("{POOLS}{extra}"));
        let d = with("[split]\nweights = { green = 10, blue = 90 }\nsticky_cookie = \"pool\"\n[preview]\nallow = [\"10.0.0.0/8\"]\n[rollback]\nwindow = \"30s\"\nmax_error_rate = 0.1\n").unwrap();
        assert_eq!(d.split, Some(vec![("blue".into(), 90), ("green".into(), 10)]));
        assert_eq!(d.sticky_cookie.as_deref(), Some("pool"));
        let p = d.preview.as_ref().unwrap();
        assert_eq!(
            (p.header.as_str(), p.cookie.as_deref()),
            ("x-switchyard-preview", None)
        );
        let r = d.rollback.unwrap();
        assert_eq!(
            (r.window.as_secs(), r.max_error_ppm, r.min_requests),
            (30, 100_000, 100)
        );
        assert!(r.past(100, 11) && !r.past(100, 10) && !r.past(99, 99));
        for (extra, want) in [
            (
                "[split]\nweights = { blue = 90, green = 20 }\n",
                "split.weights add up to 110, not 100",
            ),
            (
                "[split]\nweights = { blue = 90, purple = 10 }\n",
                "`purple` is not a pool",
            ),
            (
                "[split]\nweights = { blue = 101, green = -1 }\n",
                "split.weights.blue = 101 is not a share",
            ),
            (
                "[split]\nweights = { blue = 0, green = 0 }\n",
                "add up to 0, not 100",
            ),
            ("[split]\nsticky_cookie = \"a b\"\n", "is not a cookie name"),
            ("[preview]\nheader = \"x-p\"\n", "preview.allow is required"),
            (
                "[preview]\nheader = \"bad header\"\nallow = []\n",
                "is not a header name",
            ),
            (
                "[rollback]\nmax_error_rate = 1.5\n",
                "rollback.max_error_rate = 1.5 is not a rate",
            ),
            (
                "[rollback]\nmin_requests = 0\n",
                "rollback.min_requests must be at least 1",
            ),
            (
                "[rollback]\nwindow = \"0s\"\n",
                "rollback.window must be greater than 0",
            ),
            ("[split]\nweight = 1\n", "weight"),
        ] {
            let errs = with(extra).unwrap_err().join("\n");
            assert!(errs.contains(want), "{extra}: {errs}");
            assert!(errs.contains("line "), "the line is named: {errs}");
        }
    }

    static NONE_RESOLVED: std::sync::LazyLock<Resolved> = std::sync::LazyLock::new(Resolved::new);

    #[test]
    fn a_pool_has_endpoints_or_dns_and_health_values_are_checked() {
        let d = parse("active = \"blue\"\n[pools.blue]\ndns = \"blue.default.svc.cluster.local.:8080\"\n[discovery]\nevery = \"1s\"\nnameservers = [\"127.0.0.1:5353\"]\nfamily = \"ipv6\"\n[health]\npath = \"/readyz\"\n").unwrap();
        assert_eq!(d.pools[0].1.sources(), ["blue.default.svc.cluster.local.:8080"]);
        assert_eq!(d.discovery.family, config::Family::Ipv6);
        assert!(d.health.as_ref().is_some_and(|h| h.active()));
        let errs = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\ndns = \"b:1\"\n[pools.green]\ndns = \"127.0.0.1:2\"\n[pools.red]\ndns = \"red\"\n").unwrap_err();
        assert!(errs[0].contains("exclude each other"), "{errs:?}");
        assert!(errs[1].contains("an address, not a name"), "{errs:?}");
        assert!(errs[2].contains("dns `red`"), "{errs:?}");
        let errs = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[health]\npath = \"readyz\"\ninterval = \"0s\"\nhealthy_after = 0\nmax_ejected_percent = 101\n").unwrap_err();
        let all = errs.join("\n");
        for want in [
            "health.path",
            "health.interval",
            "health.healthy_after",
            "max_ejected_percent",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
        let errs = parse(
            "active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[health]\nintervall = \"1s\"\n",
        )
        .unwrap_err();
        assert!(errs[0].contains("intervall"), "{errs:?}");
    }

    #[test]
    fn names_resolve_into_endpoints_and_a_new_address_set_keeps_the_rest() {
        let m = Metrics::new();
        let d = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\", \"api.test.:80\"]\n[pools.green]\ndns = \"green.test.:80\"\n").unwrap();
        let none = Resolved::new();
        let mut s = spec(&d, "blue", 1);
        s.resolved = &none;
        let t1 = RoutingTable::build(&s, None, &m);
        assert_eq!(t1.pools[0].endpoint_names().collect::<Vec<_>>(), ["127.0.0.1:1"]);
        assert!(
            t1.pools[1].endpoints.is_empty(),
            "a name not resolved yet: no endpoint"
        );
        assert_eq!(t1.names(), ["api.test.:80", "green.test.:80"]);
        let resolved = Resolved::from([
            (
                "api.test.:80".to_string(),
                vec!["10.0.0.1:80".parse().unwrap(), "127.0.0.1:1".parse().unwrap()],
            ),
            ("green.test.:80".to_string(), vec!["10.0.0.2:80".parse().unwrap()]),
        ]);
        s.resolved = &resolved;
        let t2 = RoutingTable::build(&s, Some(&t1), &m);
        assert_eq!(
            t2.pools[0].endpoint_names().collect::<Vec<_>>(),
            ["127.0.0.1:1", "10.0.0.1:80"],
            "each address once, in order"
        );
        assert!(
            Arc::ptr_eq(&t1.pools[0].endpoints[0], &t2.pools[0].endpoints[0]),
            "kept"
        );
        assert_eq!(t2.pools[1].endpoint_names().collect::<Vec<_>>(), ["10.0.0.2:80"]);
        assert_eq!(t2.generation, 1);
    }

    #[test]
    fn gate_count_follows_the_design_rule() {
        let m = Metrics::new();
        let passive = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n").unwrap();
        let t = RoutingTable::build(&spec(&passive, "blue", 1), None, &m);
        let p = &t.pools[0];
        assert_eq!(
            p.gate_count(),
            (3, 3),
            "without checks: every endpoint not ejected"
        );
        p.endpoints[0].health.set(EndpointHealth::Ejected);
        assert_eq!(p.gate_count(), (2, 3));
        let checked = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n[health]\npath = \"/readyz\"\n").unwrap();
        let t = RoutingTable::build(&spec(&checked, "blue", 1), None, &m);
        let p = &t.pools[0];
        assert_eq!(
            p.gate_count(),
            (0, 2),
            "with checks: only healthy ones, unknown is not"
        );
        p.endpoints[1].health.record_check(true, 1, 1);
        assert_eq!(p.gate_count(), (1, 2));
        assert!(!p.panic());
        p.endpoints[0].health.record_check(false, 1, 1);
        p.endpoints[1].health.record_check(false, 1, 1);
        assert!(p.panic(), "every endpoint unhealthy");
    }

    fn spec<'a>(file: &'a Desired, active: &'a str, generation: u64) -> Spec<'a> {
        Spec {
            file,
            active,
            generation,
            source: Source::File,
            switched_at: SystemTime::now(),
            pending_since: None,
            facts: ControlFacts::default(),
            resolved: &NONE_RESOLVED,
            split: &[],
        }
    }

    #[test]
    fn readiness_counts_endpoints_against_min_healthy_and_publish_shows_it() {
        let m = Metrics::new();
        let d = parse(
            "active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n\
             [pools.green]\nendpoints = [\"127.0.0.1:2\", \"127.0.0.1:3\"]\nmin_healthy = 3\n\
             [pools.half]\nendpoints = [\"127.0.0.1:4\", \"127.0.0.1:5\", \"127.0.0.1:6\"]\nmin_healthy = \"50%\"\n",
        )
        .unwrap();
        let t = RoutingTable::build(&spec(&d, "blue", 1), None, &m);
        let ready = t.readiness(&d);
        assert_eq!(ready["blue"], Readiness::of(1, 1, MinHealthy::Count(1)));
        assert!(ready["blue"].is_ready());
        assert_eq!(
            ready["green"].reason("green"),
            "green: 2 of 2 endpoints healthy, needs 3"
        );
        assert!(!ready["green"].is_ready());
        assert_eq!(
            (ready["half"].needs, ready["half"].is_ready()),
            (2, true),
            "50% of 3 rounds up"
        );
        let facts = ControlFacts {
            readiness: ready,
            pending: Some(PendingFact {
                active: "green".into(),
                reason: "green: 2 of 2 endpoints healthy, needs 3".into(),
            }),
            ..ControlFacts::default()
        };
        let t = t.with_facts(facts, Some(SystemTime::now()));
        t.publish(None, &m);
        let text = String::from_utf8(m.render()).unwrap();
        for series in [
            "switchyard_pool_ready{pool=\"blue\"} 1",
            "switchyard_pool_ready{pool=\"green\"} 0",
            "switchyard_switch_pending 1",
        ] {
            assert!(text.contains(series), "{series}: {text}");
        }
        // Removing a pool deletes its series.
        let d2 = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n").unwrap();
        let t2 = RoutingTable::build(&spec(&d2, "blue", 2), Some(&t), &m);
        t2.publish(Some(&t), &m);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains("switchyard_pool_ready{pool=\"green\"}"), "{text}");
        assert!(text.contains("switchyard_switch_pending 0"), "{text}");
    }

    #[test]
    fn build_reuses_unchanged_pools_and_endpoints() {
        let m = Metrics::new();
        let d1 = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n").unwrap();
        let t1 = RoutingTable::build(&spec(&d1, "blue", 1), None, &m);
        t1.publish(None, &m);
        let d2 = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\", \"127.0.0.1:3\"]\n").unwrap();
        let t2 = RoutingTable::build(&spec(&d2, "green", 2), Some(&t1), &m);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("switchyard_active_pool{pool=\"blue\"} 1"),
            "build sets no metric: {text}"
        );
        t2.publish(Some(&t1), &m);
        assert!(Arc::ptr_eq(&t1.pools[0], &t2.pools[0]));
        assert!(!Arc::ptr_eq(&t1.pools[1], &t2.pools[1]));
        assert!(Arc::ptr_eq(&t1.pools[1].endpoints[0], &t2.pools[1].endpoints[0]));
        assert_eq!(t2.active_pool().name, "green");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("switchyard_active_pool{pool=\"green\"} 1"),
            "{text}"
        );
        // Removing a pool removes its series.
        let d3 = parse("active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n").unwrap();
        let t3 = RoutingTable::build(&spec(&d3, "blue", 3), Some(&t2), &m);
        t3.publish(Some(&t2), &m);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(!text.contains("pool=\"green\""), "{text}");
    }
}
