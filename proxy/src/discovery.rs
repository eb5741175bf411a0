//! DNS discovery: the pools' names (`dns = "name:port"`, and names in
//! fixed `endpoints`) are resolved with `hickory-resolver` at start and
//! again every `[discovery] every`, on the control runtime. A changed
//! address set goes to the writer ([`Command::Resolved`]), which stores a
//! new table with the same generation. A failed resolution (timeout,
//! SERVFAIL, refused) keeps the last good set and is counted
//! (`discovery_errors_total{pool}`) and shown (`discovery_error` in
//! `/status`); an answer with no address (NXDOMAIN, NODATA) empties the
//! set — pod addresses are reused, so stale ones must not linger.
//!
//! The resolver uses the system configuration (`/etc/resolv.conf`: name
//! servers, search domains, `ndots`, and `/etc/hosts`) unless `[discovery]
//! nameservers` is given; it keeps no cache (each round asks again), and
//! only the records of `[discovery] family` count.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioResolver;
use tokio::sync::{mpsc, watch};

use crate::config::{Discovery, Family};
use crate::control::{Command, Routes};
use crate::table::{is_name, Desired, Resolved, RoutingTable};

/// How long start-up (and `switchyard check`) waits for every name at
/// most: a name not resolved by then starts with no address, and the
/// discovery loop keeps trying every `[discovery] every`.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one query waits for an answer (one attempt more after it).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the loop looks for names that are due (or new in the table).
const TICK: Duration = Duration::from_millis(250);

/// Why a resolver could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the system's DNS configuration: {0}")]
pub struct ResolverError(String);

/// A resolver for `d`: its name servers (no hosts file), or the system's.
pub fn resolver(d: &Discovery) -> Result<TokioResolver, ResolverError> {
    let mut builder = if d.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| ResolverError(e.to_string()))?
    } else {
        let servers = d
            .nameservers
            .iter()
            .map(|ns| {
                let mut c = NameServerConfig::udp_and_tcp(ns.ip());
                for conn in &mut c.connections {
                    conn.port = ns.port();
                }
                c
            })
            .collect();
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        b.options_mut().use_hosts_file = ResolveHosts::Never;
        b
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    opts.ip_strategy = match d.family {
        Family::Ipv4 => LookupIpStrategy::Ipv4Only,
        Family::Ipv6 => LookupIpStrategy::Ipv6Only,
    };
    builder.build().map_err(|e| ResolverError(e.to_string()))
}

/// Resolves `name:port`: its addresses, sorted (empty for NXDOMAIN or
/// NODATA), or why it failed.
pub async fn resolve(r: &TokioResolver, source: &str) -> Result<Vec<SocketAddr>, String> {
    let Some((host, port)) = source.rsplit_once(':') else {
        return Err(format!("`{source}` is not name:port"));
    };
    let port: u16 = port.parse().map_err(|_| format!("`{port}` is not a port"))?;
    match r.lookup_ip(host).await {
        Ok(found) => {
            let mut addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        }
        Err(e) if is_empty_answer(&e) => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// NXDOMAIN or NODATA: the name has no address (a Deployment scaled to
/// zero), as opposed to a failure to get an answer.
fn is_empty_answer(e: &hickory_resolver::net::NetError) -> bool {
    use hickory_resolver::net::{DnsError, NetError};
    match e {
        NetError::Dns(DnsError::NoRecordsFound(n)) => {
            matches!(n.response_code, ResponseCode::NXDomain | ResponseCode::NoError)
        }
        _ => false,
    }
}

/// Every DNS name of a file's pools, each once, with the pools using it.
pub fn names_of(file: &Desired) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (pool, def) in &file.pools {
        for s in def.sources().into_iter().filter(|s| is_name(s)) {
            match out.iter_mut().find(|(n, _)| *n == s) {
                Some((_, pools)) => pools.push(pool.clone()),
                None => out.push((s, vec![pool.clone()])),
            }
        }
    }
    out
}

/// Resolves `names` now, waiting at most `within` in all (on a thread and
/// runtime of its own, so it can be called from anywhere): what resolved,
/// and `(name, why)` for each that did not.
pub fn resolve_now(names: &[String], d: &Discovery, within: Duration) -> (Resolved, Vec<(String, String)>) {
    if names.is_empty() {
        return (Resolved::new(), Vec::new());
    }
    let work = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let r = resolver(d).map_err(|e| e.to_string())?;
            let mut done = Resolved::new();
            let mut failed = Vec::new();
            let all = async {
                for n in names {
                    match resolve(&r, n).await {
                        Ok(addrs) => {
                            done.insert(n.clone(), addrs);
                        }
                        Err(e) => failed.push((n.clone(), e)),
                    }
                }
            };
            let _ = tokio::time::timeout(within, all).await;
            Ok::<_, String>((done, failed))
        })
    };
    let outcome = std::thread::scope(|s| {
        s.spawn(work)
            .join()
            .unwrap_or_else(|_| Err("the resolving thread failed".into()))
    });
    match outcome {
        Ok((done, mut failed)) => {
            for n in names {
                if !done.contains_key(n) && !failed.iter().any(|(f, _)| f == n) {
                    failed.push((n.clone(), format!("no answer within {within:?}")));
                }
            }
            (done, failed)
        }
        Err(e) => (
            Resolved::new(),
            names.iter().map(|n| (n.clone(), e.clone())).collect(),
        ),
    }
}

/// Marks a failed resolution of `name` on every pool of `table` that uses
/// it: counted in `discovery_errors_total{pool}`, shown in `/status`.
pub fn record_error(table: &RoutingTable, name: &str, error: &str) {
    for p in table.pools.iter().filter(|p| p.sources.iter().any(|s| s == name)) {
        p.metrics.discovery_errors.inc();
        *p.discovery_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(format!("{name}: {error}"));
    }
}

/// Clears the error a pool shows for `name` once it resolves again.
fn clear_error(table: &RoutingTable, name: &str) {
    let prefix = format!("{name}: ");
    for p in table.pools.iter().filter(|p| p.sources.iter().any(|s| s == name)) {
        let mut e = p
            .discovery_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if e.as_deref().is_some_and(|e| e.starts_with(&prefix)) {
            *e = None;
        }
    }
}

/// The discovery loop on the control runtime: every name of the current
/// table is resolved when it is new there and then every `[discovery]
/// every`; changes go to the writer. `known` is what start-up resolved.
/// Ends when `stop` turns true.
pub async fn run(
    routes: Arc<Routes>,
    writer: mpsc::Sender<Command>,
    known: Resolved,
    mut stop: watch::Receiver<bool>,
) {
    let mut sent = known;
    let mut tried: HashMap<String, Instant> = sent.keys().map(|n| (n.clone(), Instant::now())).collect();
    let mut current: Option<(Discovery, TokioResolver)> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if *stop.borrow() {
            return;
        }
        let table = routes.load_full();
        let names = table.names();
        let wanted: HashSet<&String> = names.iter().collect();
        tried.retain(|n, _| wanted.contains(n));
        sent.retain(|n, _| wanted.contains(n));
        if names.is_empty() {
            continue;
        }
        let settings = &*table.discovery;
        if current.as_ref().is_none_or(|(d, _)| d != settings) {
            current = None;
            tried.clear();
            match resolver(settings) {
                Ok(r) => current = Some((settings.clone(), r)),
                Err(e) => {
                    for n in &names {
                        record_error(&table, n, &e.to_string());
                    }
                    tracing::error!(error = %e, "discovery: no resolver; the pools keep their addresses");
                    tokio::time::sleep(settings.every).await;
                    continue;
                }
            }
        }
        let Some((_, r)) = &current else { continue };
        for name in names {
            let now = Instant::now();
            if tried
                .get(&name)
                .is_some_and(|t| now.duration_since(*t) < settings.every)
            {
                continue;
            }
            tried.insert(name.clone(), now);
            match resolve(r, &name).await {
                Ok(addrs) => {
                    clear_error(&table, &name);
                    if sent.get(&name) != Some(&addrs) && addrs.is_empty() {
                        tracing::warn!(%name, "discovery: the name has no address; its pools are empty");
                    }
                    sent.insert(name.clone(), addrs.clone());
                    // Sent every time: the writer ignores an unchanged set,
                    // and always has the name after a file change re-adds it.
                    if writer.send(Command::Resolved { name, addrs }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(%name, error = %e, "discovery: resolution failed; the last good addresses stay");
                    record_error(&table, &name, &e);
                }
            }
        }
    }
}
