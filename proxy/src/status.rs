//! The `/status` document as a type: the admin listener serializes it from
//! one load of the routing table, and `switchyard status` reads it back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pool::EndpointHealth;
use crate::table::{Readiness, RoutingTable};

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The pool that gets new requests.
    pub active: String,
    /// The pool active before the last switch, until a rollback consumes it.
    pub previous: Option<String>,
    /// Whether an admin switch or rollback overrides the file's `active`.
    #[serde(rename = "override")]
    pub overridden: bool,
    /// Counts changes of routing intent.
    pub generation: u64,
    /// Who made the current table: `file`, `admin`, `rollback`.
    pub source: String,
    /// When the active pool last changed (RFC 3339).
    pub switched_at: String,
    /// The last rejected reload's errors, until a valid file is read.
    pub last_reload_error: Option<String>,
    /// Why the override in force could not be written to the upstreams file
    /// (`[admin] persist`); the switch stays an override.
    pub persist_error: Option<String>,
    /// What the upstreams file's `active` says (an override or a pending
    /// switch can make it differ from `active`). Absent from the documents
    /// of older proxies: empty.
    #[serde(default)]
    pub file_active: String,
    /// The file switch waiting for its pool to be ready, or null.
    #[serde(default)]
    pub pending: Option<PendingStatus>,
    /// The weights of a split in force (pool → share), or null.
    #[serde(default)]
    pub split: Option<BTreeMap<String, u8>>,
    /// Why the override was made, when the proxy made it (an automatic
    /// rollback), or null.
    #[serde(default)]
    pub override_reason: Option<String>,
    /// Why an automatic rollback that is due cannot switch (the previous
    /// pool is not ready), or null.
    #[serde(default)]
    pub rollback_blocked: Option<String>,
    /// Every pool by name.
    pub pools: BTreeMap<String, PoolStatus>,
    /// Each certificate of `[tls]` (the default first, then the SNI
    /// entries); empty without TLS. Absent from older proxies' documents.
    #[serde(default)]
    pub tls: Vec<TlsStatus>,
}

/// One certificate of `[tls]` in `/status`: the one being served, and why
/// the last new pair read from its files was rejected, if it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    /// `default`, or the first name of its `[[tls.sni]]` entry.
    pub name: String,
    /// The DNS names the served certificate is for (its subject
    /// alternative names, else its common name).
    pub names: Vec<String>,
    /// When the served certificate expires (RFC 3339).
    pub not_after: String,
    /// Why the newest pair in its files was rejected (the old one still
    /// serves); `null` once the files hold the pair being served.
    pub last_error: Option<String>,
}

/// One pool in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Whether it is the active pool (of a split: the largest share).
    pub active: bool,
    /// Its share (0-100) of new requests: 100 for the active pool without
    /// a split. Absent from older proxies' documents: 0.
    #[serde(default)]
    pub split_weight: u8,
    /// Its endpoints, in file order.
    pub endpoints: Vec<EndpointStatus>,
    /// Requests in flight on it, open tunnels included.
    pub inflight: i64,
    /// Open tunnels (upgraded connections) on it; each is also in
    /// `inflight`. Absent from the documents of older proxies: 0.
    #[serde(default)]
    pub tunnels: i64,
    /// Inactive with nothing in flight (no tunnel either): safe to scale down.
    pub drained: bool,
    /// When it last became drained (RFC 3339); null while active or with
    /// requests in flight. Recorded by the writer, which checks a draining
    /// pool every few milliseconds, so it can be null for that long after
    /// `drained` turned true. Absent from the documents of older proxies: null.
    #[serde(default)]
    pub drained_at: Option<String>,
    /// Whether a switch to it passes the gate: at least `min_healthy` of its
    /// endpoints count as healthy, and it has one. Absent from the documents
    /// of older proxies: false.
    #[serde(default)]
    pub ready: bool,
    /// The counts `ready` comes from (null in older proxies' documents).
    #[serde(default)]
    pub readiness: Option<ReadinessStatus>,
    /// None of its endpoints is usable, so routing uses them all anyway
    /// (the panic rule). Absent from older proxies' documents: false.
    #[serde(default)]
    pub panic: bool,
    /// The last failed resolution of its DNS names (the last good
    /// addresses stay), until one succeeds.
    #[serde(default)]
    pub discovery_error: Option<String>,
}

/// A pool's readiness counts in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessStatus {
    /// Endpoints that count as healthy for the gate.
    pub healthy: usize,
    /// All of its endpoints.
    pub endpoints: usize,
    /// Healthy endpoints it needs (`min_healthy`; a percentage rounded up).
    pub needs: usize,
    /// The sentence: `green: 0 of 3 endpoints healthy, needs 1`.
    pub reason: String,
}

/// `pending` in `/status`: a file switch waiting for its pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingStatus {
    /// The pool the file names.
    pub active: String,
    /// Why it waits: the pool's readiness (`green: 0 of 3 endpoints healthy, needs 1`).
    pub reason: String,
    /// Since when (RFC 3339).
    pub since: String,
}

/// One endpoint in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `ip:port`: from the file, or what a DNS name resolved to.
    pub address: String,
    /// `unknown`, `healthy`, `unhealthy` or `ejected`.
    pub health: EndpointHealth,
}

impl Status {
    /// The status of a proxy whose current table is `table`.
    pub fn of(table: &RoutingTable) -> Status {
        let pools = table
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let inflight = p.inflight().max(0);
                let endpoints = p
                    .endpoints
                    .iter()
                    .map(|e| EndpointStatus {
                        address: e.addr.clone(),
                        health: e.health.get(),
                    })
                    .collect();
                let readiness = table.facts.readiness.get(&p.name);
                let serves = table.serves(i);
                let status = PoolStatus {
                    active: i == table.active,
                    split_weight: table.weights.get(i).copied().unwrap_or(0),
                    endpoints,
                    inflight,
                    tunnels: p.tunnels().max(0),
                    drained: !serves && inflight == 0,
                    panic: p.panic(),
                    discovery_error: p.discovery_error(),
                    drained_at: (!serves && inflight == 0)
                        .then(|| p.inflight.drained_at())
                        .flatten()
                        .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                    ready: readiness.is_some_and(Readiness::is_ready),
                    readiness: readiness.map(|r| ReadinessStatus {
                        healthy: r.healthy,
                        endpoints: r.endpoints,
                        needs: r.needs,
                        reason: r.reason(&p.name),
                    }),
                };
                (p.name.clone(), status)
            })
            .collect();
        Status {
            active: table.active_pool().name.clone(),
            previous: table.facts.previous.clone(),
            overridden: table.facts.overridden,
            generation: table.generation,
            source: table.source.as_str().to_string(),
            switched_at: humantime::format_rfc3339_millis(table.switched_at).to_string(),
            last_reload_error: table.facts.last_reload_error.clone(),
            persist_error: table.facts.persist_error.clone(),
            file_active: table.facts.file_active.clone(),
            pending: table.facts.pending.as_ref().map(|p| PendingStatus {
                active: p.active.clone(),
                reason: p.reason.clone(),
                since: table
                    .pending_since
                    .map(|t| humantime::format_rfc3339_millis(t).to_string())
                    .unwrap_or_default(),
            }),
            split: table.split.as_ref().map(|_| {
                table
                    .pools
                    .iter()
                    .zip(&table.weights)
                    .filter(|(_, w)| **w > 0)
                    .map(|(p, w)| (p.name.clone(), *w))
                    .collect()
            }),
            override_reason: table.facts.override_reason.clone(),
            rollback_blocked: table.facts.rollback_blocked.clone(),
            pools,
            tls: Vec::new(),
        }
    }
}
