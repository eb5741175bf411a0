//! The `/status` document as a type: the admin listener serializes it from
//! one load of the routing table, and `switchyard status` reads it back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::table::RoutingTable;

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
    /// Whether it gets new requests.
    pub active: bool,
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
}

/// One endpoint in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `host:port` as configured.
    pub address: String,
    /// The `upstream_healthy` gauge.
    pub healthy: bool,
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
                        healthy: e.healthy.get() == 1,
                    })
                    .collect();
                let status = PoolStatus {
                    active: i == table.active,
                    endpoints,
                    inflight,
                    tunnels: p.tunnels().max(0),
                    drained: i != table.active && inflight == 0,
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
            pools,
            tls: Vec::new(),
        }
    }
}
