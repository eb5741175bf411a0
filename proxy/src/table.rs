//! The routing table: one immutable value that decides where every request
//! goes, built and validated completely before it is stored in the
//! `ArcSwap` that the data plane loads once per request.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderValue;

use crate::config::ConfigError;
use crate::config::{self, MinHealthy, PoolFile};
use crate::metrics::Metrics;
use crate::pool::{Endpoint, Pool};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The file's `active`.
    pub active: String,
    /// The file's `force`: a change of `active` skips the switch gate.
    pub force: bool,
    /// `(pool name, endpoints)` in file order.
    pub pools: Vec<(String, Vec<String>)>,
    /// Each pool's `min_healthy` (the default filled in), by pool name.
    pub min_healthy: BTreeMap<String, MinHealthy>,
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
                min_healthy: min,
                ..
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
            if endpoints.is_empty() {
                errors.push(err(format!("pools.{name}: a pool needs at least one endpoint")));
            }
            let mut seen = std::collections::HashSet::new();
            for ep in &endpoints {
                if let Err(reason) = check_endpoint(ep) {
                    errors.push(err(format!("pools.{name}: endpoint `{ep}`: {reason}")));
                } else if !seen.insert(ep.as_str()) {
                    errors.push(err(format!("pools.{name}: endpoint `{ep}` is listed twice")));
                }
            }
            out.push((name, endpoints));
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
        if errors.is_empty() {
            Ok(Desired {
                active,
                force: file.force,
                pools: out,
                min_healthy,
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
        let pools: Vec<Arc<Pool>> = spec
            .file
            .pools
            .iter()
            .map(|(name, endpoints)| {
                let old_pool = old.and_then(|t| t.pool(name));
                match old_pool {
                    Some(p) if p.endpoint_names().eq(endpoints.iter().map(String::as_str)) => Arc::clone(p),
                    _ => {
                        let eps = endpoints
                            .iter()
                            .map(|addr| {
                                old_pool
                                    .and_then(|p| p.endpoints.iter().find(|e| e.addr == *addr))
                                    .cloned()
                                    .unwrap_or_else(|| Arc::new(Endpoint::new(name, addr, metrics)))
                            })
                            .collect();
                        Arc::new(Pool::new(
                            name,
                            eps,
                            metrics,
                            old_pool.map(|p| Arc::clone(&p.inflight)),
                        ))
                    }
                }
            })
            .collect();
        let active = pools.iter().position(|p| p.name == spec.active).unwrap_or(0);
        RoutingTable {
            generation: spec.generation,
            source: spec.source,
            pools,
            active,
            generation_header: HeaderValue::from(spec.generation),
            switched_at: spec.switched_at,
            pending_since: spec.pending_since,
            facts: spec.facts.clone(),
        }
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
    }
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

    fn spec<'a>(file: &'a Desired, active: &'a str, generation: u64) -> Spec<'a> {
        Spec {
            file,
            active,
            generation,
            source: Source::File,
            switched_at: SystemTime::now(),
            pending_since: None,
            facts: ControlFacts::default(),
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
