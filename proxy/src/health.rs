//! Health on the control runtime: the one task that changes an endpoint's
//! health (`pool::HealthState`), so every transition is ordered and
//! `max_ejected_percent` holds.
//!
//! - **Active checks** (`[health] path`): every endpoint of every pool, the
//!   inactive one too, gets `GET path` once per `interval`, the checks
//!   spread evenly over it (never a burst); a 2xx answer within `timeout`
//!   passes. The threshold rule is `pool::step`.
//! - **Passive ejection**: a core reports an endpoint whose live requests
//!   failed `eject_after` times in a row (connect failures, resets,
//!   timeouts waiting on it, answers it cut or stalled mid-body); it is
//!   ejected unless that would put more than `max_ejected_percent` of its
//!   pool out, or leave the pool with none. It returns at its next passed
//!   check, or after `eject_for` when no active checks run.
//!
//! Every change is sent to the writer ([`Command::HealthChanged`]), which
//! publishes the health series (and, with the switch gate, re-evaluates
//! readiness). Health is not intent: the generation never moves.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::control::{Command, Routes};
use crate::pool::{Endpoint, EndpointHealth, Failure};
use crate::table::RoutingTable;

/// How often the task looks at ejections and the table when no check is due.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Whether one more of a pool's `total` endpoints may be ejected when
/// `ejected` already are: never beyond `max_percent` of them, and never
/// the last one.
pub fn may_eject(total: usize, ejected: usize, max_percent: u32) -> bool {
    let after = ejected + 1;
    after < total && after.saturating_mul(100) <= total.saturating_mul(max_percent as usize)
}

/// One active check: `GET path` to `ep`, a 2xx answer within `timeout` passes.
pub async fn check(ep: &Endpoint, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(ep.socket).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let driver = tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, ep.addr.as_str())
            .header(http::header::USER_AGENT, "switchyard-health")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let pass = send.send_request(req).await.ok()?.status().is_success();
        drop(send);
        driver.abort();
        Some(pass)
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Every endpoint of every pool of `table`, each once.
fn endpoints(table: &RoutingTable) -> VecDeque<Arc<Endpoint>> {
    let mut seen = HashSet::new();
    table
        .pools
        .iter()
        .flat_map(|p| p.endpoints.iter())
        .filter(|e| seen.insert(e.id))
        .cloned()
        .collect()
}

/// The health task; see the module doc. Ends when `stop` turns true.
pub async fn run(
    routes: Arc<Routes>,
    writer: mpsc::Sender<Command>,
    mut failures: mpsc::UnboundedReceiver<Failure>,
    mut stop: watch::Receiver<bool>,
) {
    let (results_tx, mut results) = mpsc::unbounded_channel::<(Arc<Endpoint>, bool)>();
    // Ejected endpoints by id, and since when.
    let mut ejected: HashMap<u64, (Arc<Endpoint>, Instant)> = HashMap::new();
    let mut queue: VecDeque<Arc<Endpoint>> = VecDeque::new();
    let mut spacing = IDLE_TICK;
    let mut next = Instant::now();
    loop {
        let changed = tokio::select! {
            _ = stop.changed() => return,
            Some(f) = failures.recv() => eject(&routes.load(), &f, &mut ejected),
            Some((ep, pass)) = results.recv() => {
                let h = routes.load().health.clone();
                let before = ep.health.get();
                let after = ep.health.record_check(pass, h.healthy_after, h.unhealthy_after);
                if before != after {
                    tracing::info!(endpoint = %ep.addr, from = before.label(), to = after.label(), "endpoint health changed (active check)");
                    if before == EndpointHealth::Ejected {
                        ejected.remove(&ep.id);
                    }
                }
                before != after
            }
            () = tokio::time::sleep_until(next) => {
                let table = routes.load_full();
                let mut changed = expire(&table, &mut ejected);
                let h = &table.health;
                match &h.path {
                    None => {
                        // Checks turned off (or never on): no verdict of old
                        // checks keeps an endpoint out.
                        queue.clear();
                        for p in &table.pools {
                            for e in &p.endpoints {
                                changed |= e.health.forget_checks();
                            }
                        }
                        next = Instant::now() + IDLE_TICK;
                    }
                    Some(path) => {
                        if queue.is_empty() {
                            queue = endpoints(&table);
                            let n = u32::try_from(queue.len().max(1)).unwrap_or(u32::MAX);
                            spacing = (h.interval / n).max(Duration::from_millis(1));
                        }
                        if let Some(ep) = queue.pop_front() {
                            let (path, timeout, tx) = (path.clone(), h.timeout, results_tx.clone());
                            tokio::spawn(async move {
                                let pass = check(&ep, &path, timeout).await;
                                let _ = tx.send((ep, pass));
                            });
                            next = Instant::now() + spacing;
                        } else {
                            next = Instant::now() + IDLE_TICK;
                        }
                    }
                }
                changed
            }
        };
        if changed && writer.send(Command::HealthChanged).await.is_err() {
            return;
        }
    }
}

/// A reported run of failures: ejects the endpoint if it is still in its
/// pool, not ejected yet, and the pool may lose it. Returns whether it did.
fn eject(table: &RoutingTable, f: &Failure, ejected: &mut HashMap<u64, (Arc<Endpoint>, Instant)>) -> bool {
    let Some(pool) = table.pool(&f.pool.name) else {
        return false;
    };
    let ep = &f.endpoint;
    if !pool.endpoints.iter().any(|e| e.id == ep.id) || ep.health.get() == EndpointHealth::Ejected {
        return false;
    }
    let out = pool.census()[EndpointHealth::Ejected as usize];
    let pct = table.health.max_ejected_percent;
    if !may_eject(pool.endpoints.len(), out, pct) {
        tracing::warn!(pool = %pool.name, endpoint = %ep.addr, ejected = out, max_ejected_percent = pct,
            "endpoint keeps failing but is not ejected: the pool is at max_ejected_percent");
        return false;
    }
    ep.health.set(EndpointHealth::Ejected);
    ejected.insert(ep.id, (Arc::clone(ep), Instant::now()));
    tracing::warn!(pool = %pool.name, endpoint = %ep.addr, after = pool.eject_after,
        "endpoint ejected: live requests failed in a row");
    true
}

/// Ends the ejections of endpoints that left the table, and — when no
/// active check can bring them back — those older than `eject_for`.
fn expire(table: &RoutingTable, ejected: &mut HashMap<u64, (Arc<Endpoint>, Instant)>) -> bool {
    let mut changed = false;
    let present: HashSet<u64> = table
        .pools
        .iter()
        .flat_map(|p| p.endpoints.iter().map(|e| e.id))
        .collect();
    let timed = !table.health.active();
    let eject_for = table.health.eject_for;
    ejected.retain(|id, (ep, since)| {
        if ep.health.get() != EndpointHealth::Ejected {
            return false;
        }
        if !present.contains(id) {
            return false;
        }
        if timed && since.elapsed() >= eject_for {
            ep.health.readmit();
            tracing::info!(endpoint = %ep.addr, "ejection over (eject_for)");
            changed = true;
            return false;
        }
        true
    });
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_keeps_within_the_percentage_and_never_takes_the_last() {
        // (total, already ejected, max %) → may one more go?
        let rows = [
            (3, 0, 50, true),
            (3, 1, 50, false), // 2 of 3 is 67 %
            (4, 1, 50, true),
            (4, 2, 50, false),
            (2, 0, 50, true),
            (1, 0, 100, false), // never the last one
            (2, 1, 100, false),
            (10, 0, 0, false), // 0 %: passive ejection off
            (10, 8, 100, true),
            (10, 9, 100, false),
        ];
        for (total, out, pct, want) in rows {
            assert_eq!(may_eject(total, out, pct), want, "{total} {out} {pct}");
        }
    }
}
