//! A pool's endpoints, their health, the choice of an endpoint for a
//! request (least in flight on this core, ties broken by rotation), and the
//! in-flight count that tells when an inactive pool is drained.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::metrics::{Metrics, PoolMetrics};

static NEXT_ENDPOINT_ID: AtomicU64 = AtomicU64::new(1);

/// What routing and the switch gate know of one endpoint (`/status`:
/// `health`). Routing uses `Unknown` and `Healthy` ones; the gate counts
/// `Healthy` ones when active checks run, else every one not `Ejected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointHealth {
    /// Never checked yet (or no active checks): usable.
    Unknown = 0,
    /// Passed `healthy_after` checks in a row.
    Healthy = 1,
    /// Failed `unhealthy_after` checks in a row: skipped (unless the whole
    /// pool is, the panic rule).
    Unhealthy = 2,
    /// Passively ejected after `eject_after` live-traffic failures: skipped.
    Ejected = 3,
}

impl EndpointHealth {
    /// Every state, in discriminant order (the `pool_endpoints` handles).
    pub const ALL: [EndpointHealth; 4] = [
        EndpointHealth::Unknown,
        EndpointHealth::Healthy,
        EndpointHealth::Unhealthy,
        EndpointHealth::Ejected,
    ];

    fn from_u8(v: u8) -> EndpointHealth {
        match v {
            1 => EndpointHealth::Healthy,
            2 => EndpointHealth::Unhealthy,
            3 => EndpointHealth::Ejected,
            _ => EndpointHealth::Unknown,
        }
    }

    /// The label in `/status` and in `pool_endpoints{state}`.
    pub fn label(self) -> &'static str {
        match self {
            EndpointHealth::Unknown => "unknown",
            EndpointHealth::Healthy => "healthy",
            EndpointHealth::Unhealthy => "unhealthy",
            EndpointHealth::Ejected => "ejected",
        }
    }

    /// Whether routing sends requests to it (outside the panic rule).
    pub fn usable(self) -> bool {
        matches!(self, EndpointHealth::Unknown | EndpointHealth::Healthy)
    }
}

/// An endpoint's health as the control runtime's health task keeps it. The
/// atomics are written by that task only (except `failures`, which the
/// cores count) and read lock-free by the cores and `/status`.
#[derive(Default)]
pub struct HealthState {
    /// What routing reads: [`EndpointHealth`] as a byte.
    current: AtomicU8,
    /// The active checks' verdict alone (Unknown, Healthy or Unhealthy):
    /// what the endpoint returns to when an ejection ends.
    checked: AtomicU8,
    /// Checks in a row with the same result: positive passes, negative fails.
    streak: AtomicI64,
    /// Live-traffic failures in a row (connect failures, resets, timeouts,
    /// bodies cut or stalled); counted by the cores, reset by an answer
    /// whose body ended whole. Its own cache line: the cores
    /// write it only when something fails.
    failures: Failures,
}

#[repr(align(128))]
#[derive(Default)]
struct Failures(AtomicU32);

impl HealthState {
    /// The endpoint's health now.
    pub fn get(&self) -> EndpointHealth {
        EndpointHealth::from_u8(self.current.load(Ordering::Relaxed))
    }

    /// The active checks' verdict, ignoring an ejection.
    pub fn checked(&self) -> EndpointHealth {
        EndpointHealth::from_u8(self.checked.load(Ordering::Relaxed))
    }

    /// Sets the current health (the health task only). Returns whether it changed.
    pub fn set(&self, h: EndpointHealth) -> bool {
        self.current.swap(h as u8, Ordering::Relaxed) != h as u8
    }

    /// Records one active check: the threshold rule ([`step`]) moves the
    /// checked verdict; an ejection ends at a passed check. Returns the new
    /// current health.
    pub fn record_check(&self, pass: bool, healthy_after: u32, unhealthy_after: u32) -> EndpointHealth {
        let (verdict, streak) = step(
            self.checked(),
            self.streak.load(Ordering::Relaxed),
            pass,
            healthy_after,
            unhealthy_after,
        );
        self.streak.store(streak, Ordering::Relaxed);
        self.checked.store(verdict as u8, Ordering::Relaxed);
        let current = if self.get() == EndpointHealth::Ejected && !pass {
            EndpointHealth::Ejected
        } else {
            verdict
        };
        self.set(current);
        current
    }

    /// Active checks were turned off: the checked verdict goes back to
    /// unknown (an ejection stays). Returns whether the health changed.
    pub fn forget_checks(&self) -> bool {
        if self.checked() == EndpointHealth::Unknown {
            return false;
        }
        self.checked
            .store(EndpointHealth::Unknown as u8, Ordering::Relaxed);
        self.streak.store(0, Ordering::Relaxed);
        self.get() != EndpointHealth::Ejected && self.set(EndpointHealth::Unknown)
    }

    /// Ends an ejection: back to the checked verdict.
    pub fn readmit(&self) {
        self.set(self.checked());
        self.failures.0.store(0, Ordering::Relaxed);
    }

    /// Counts one live-traffic failure; returns the failures in a row.
    pub fn failed(&self) -> u32 {
        self.failures.0.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// A live request got an answer: the run of failures ends. Writes only
    /// when there was one, so a healthy endpoint's line stays shared-clean.
    pub fn succeeded(&self) {
        if self.failures.0.load(Ordering::Relaxed) != 0 {
            self.failures.0.store(0, Ordering::Relaxed);
        }
    }
}

/// The threshold rule of active checks, pure: the verdict and the streak
/// (positive: passes in a row, negative: fails in a row) after one check.
/// `healthy_after` passes in a row make an endpoint healthy,
/// `unhealthy_after` fails in a row unhealthy; anything shorter keeps the
/// verdict it had (an endpoint never checked stays unknown, and usable).
pub fn step(
    verdict: EndpointHealth,
    streak: i64,
    pass: bool,
    healthy_after: u32,
    unhealthy_after: u32,
) -> (EndpointHealth, i64) {
    let streak = match (pass, streak) {
        (true, s) if s > 0 => s.saturating_add(1),
        (true, _) => 1,
        (false, s) if s < 0 => s.saturating_sub(1),
        (false, _) => -1,
    };
    let verdict = if pass && streak >= i64::from(healthy_after.max(1)) {
        EndpointHealth::Healthy
    } else if !pass && -streak >= i64::from(unhealthy_after.max(1)) {
        EndpointHealth::Unhealthy
    } else {
        verdict
    };
    (verdict, streak)
}

/// One upstream address of one pool. Its `id` keys the per-core connection
/// pools, so a connection opened for one pool is never used for another.
/// Shared (`Arc`) by every table that holds this address in this pool, so
/// its health carries over when a table is rebuilt.
pub struct Endpoint {
    /// Unique in the process; kept while the endpoint stays in the tables.
    pub id: u64,
    /// `ip:port` (an address from the file, or one a DNS name resolved to).
    pub addr: String,
    /// The address itself.
    pub socket: SocketAddr,
    /// `upstream_healthy{pool,endpoint}`: 1 while routing uses it.
    pub healthy: IntGauge,
    /// Its open upstream connections, all cores together, for
    /// `limits.upstream_max_connections`.
    pub conns: Arc<OpenConns>,
    /// Its health (see [`HealthState`]).
    pub health: HealthState,
}

/// The open upstream connections of one endpoint (idle and busy, every
/// core): counted when one is opened and uncounted when it closes (never
/// per request), on a cache line of their own. A request that finds the
/// endpoint at its limit waits for one to close ([`OpenConns::freed`]);
/// while one waits, the cores close their idle connections to it rather
/// than keep them (see `client.rs`).
#[repr(align(128))]
#[derive(Default)]
pub struct OpenConns {
    open: AtomicUsize,
    waiting: AtomicUsize,
    /// Notified when a connection closes while a request waits.
    pub freed: tokio::sync::Notify,
}

impl OpenConns {
    /// Counts one more open connection unless `max` are open.
    pub fn try_open(self: &Arc<Self>, max: usize) -> Option<OpenConn> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenConn(Arc::clone(self)))
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Requests waiting for a connection to come free.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Counts a request as waiting until the guard is dropped.
    pub fn wait(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(Arc::clone(self))
    }
}

/// One open upstream connection of an endpoint, uncounted when dropped
/// (with the task that drives the connection).
pub struct OpenConn(Arc<OpenConns>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if self.0.waiting.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_waiters();
        }
    }
}

/// A request waiting for an upstream connection to come free.
pub struct Waiting(Arc<OpenConns>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Endpoint {
    /// A new endpoint of pool `pool`.
    pub fn new(pool: &str, socket: SocketAddr, metrics: &Metrics) -> Endpoint {
        let addr = socket.to_string();
        Endpoint {
            id: NEXT_ENDPOINT_ID.fetch_add(1, Ordering::Relaxed),
            healthy: metrics.endpoint_healthy(pool, &addr),
            addr,
            socket,
            health: HealthState::default(),
            conns: Arc::new(OpenConns::default()),
        }
    }

    /// Opens a TCP connection.
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        tokio::net::TcpStream::connect(self.socket).await
    }
}

/// A live-traffic failure that reached `eject_after` in a row: a core tells
/// the health task, which decides the ejection (one owner of every
/// transition, so `max_ejected_percent` holds).
pub struct Failure {
    /// The pool the request went to.
    pub pool: Arc<Pool>,
    /// The endpoint that failed.
    pub endpoint: Arc<Endpoint>,
}

/// Where the cores report [`Failure`]s.
pub type FailureTx = mpsc::UnboundedSender<Failure>;

/// Chooses an endpoint among `n`: the usable one with the fewest requests
/// in flight (`load`), ties broken by rotation — the scan starts at
/// `start` and keeps the first minimum. `None` when none is usable.
pub fn least_loaded(
    n: usize,
    start: usize,
    usable: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> u32,
) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    for k in 0..n {
        let i = (start.wrapping_add(k)) % n;
        if !usable(i) {
            continue;
        }
        let l = load(i);
        if best.is_none_or(|(_, b)| l < b) {
            best = Some((i, l));
            if l == 0 {
                break;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// One core's share of an in-flight count (and of the tunnels among it),
/// alone on its cache line so that cores never write the same line.
#[repr(align(128))]
#[derive(Default)]
struct Slot {
    inflight: AtomicI64,
    tunnels: AtomicI64,
    /// Requests the upstream answered or failed (the automatic rollback's
    /// denominator); the proxy's own answers are not counted.
    answered: AtomicU64,
    /// Of those: 5xx answers and upstream errors.
    errors: AtomicU64,
}

/// Requests of a pool in flight (an open tunnel is one until it closes),
/// and the tunnels among them, counted per core: each core adds to its own
/// slot (no cache line shared between cores on the request path) and a
/// reader sums the slots. Exact, not sampled: `/status` says `drained` only
/// when the sum is 0.
pub struct Inflight {
    slots: Box<[Slot]>,
    /// When the pool last became drained (inactive with nothing in flight),
    /// in Unix milliseconds; 0 while active or not drained yet. Written only
    /// by the control plane's writer, read by `/status`; never on the
    /// request path.
    drained_at_ms: AtomicU64,
}

impl Inflight {
    /// A count with one slot per CPU (a core index wraps onto them).
    pub fn new() -> Inflight {
        let n = std::thread::available_parallelism().map_or(1, usize::from);
        Inflight {
            slots: (0..n).map(|_| Slot::default()).collect(),
            drained_at_ms: AtomicU64::new(0),
        }
    }

    /// When the pool last became drained, as the writer recorded it (None
    /// while it is active or still has requests in flight since a switch).
    pub fn drained_at(&self) -> Option<SystemTime> {
        match self.drained_at_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Records when the pool became drained (None: it is active, or a switch
    /// away from it has just begun its drain). Called by the writer only.
    pub fn set_drained_at(&self, at: Option<SystemTime>) {
        let ms = at.map_or(0, |t| {
            let ms = t
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            u64::try_from(ms).unwrap_or(u64::MAX).max(1)
        });
        self.drained_at_ms.store(ms, Ordering::Release);
    }

    /// Adds `delta` on core `core`.
    pub fn add(&self, core: usize, delta: i64) {
        self.slots[core % self.slots.len()]
            .inflight
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// The total over every core.
    pub fn get(&self) -> i64 {
        self.slots
            .iter()
            .map(|s| s.inflight.load(Ordering::Relaxed))
            .sum()
    }

    /// Adds `delta` open tunnels on core `core` (each is also in flight).
    pub fn add_tunnels(&self, core: usize, delta: i64) {
        self.slots[core % self.slots.len()]
            .tunnels
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Open tunnels over every core.
    pub fn tunnels(&self) -> i64 {
        self.slots.iter().map(|s| s.tunnels.load(Ordering::Relaxed)).sum()
    }

    /// On core `core`: a request the upstream answered (`error`: with a
    /// 5xx) or failed (`error` true). Two relaxed adds on this core's own
    /// cache line; never called for the proxy's own answers.
    pub fn outcome(&self, core: usize, error: bool) {
        let slot = &self.slots[core % self.slots.len()];
        slot.answered.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(answered, errors)` since the pool was first built, over every core:
    /// the writer takes differences of these.
    pub fn outcomes(&self) -> (u64, u64) {
        self.slots.iter().fold((0, 0), |(a, e), s| {
            (
                a + s.answered.load(Ordering::Relaxed),
                e + s.errors.load(Ordering::Relaxed),
            )
        })
    }
}

impl Default for Inflight {
    fn default() -> Self {
        Inflight::new()
    }
}

/// A named set of endpoints.
pub struct Pool {
    /// The pool's name (`blue`, `green`, …).
    pub name: String,
    /// Its endpoints: the file's addresses and what its names resolved to,
    /// in that order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Where its endpoints come from (the file's `endpoints` or `dns`).
    pub sources: Vec<String>,
    /// Whether active checks run (`[health] path`): the gate then counts
    /// healthy endpoints only.
    pub checked: bool,
    /// `[health] eject_after` (0: no passive ejection).
    pub eject_after: u32,
    /// The last failed resolution of its names, until one succeeds;
    /// shared with the pool of the same name a rebuild replaces. Read by
    /// `/status` only, never by a request.
    pub discovery_error: Arc<Mutex<Option<String>>>,
    /// `x-switchyard-pool`, pre-built.
    pub header: HeaderValue,
    /// The pool's metric handles.
    pub metrics: PoolMetrics,
    /// Requests in flight; shared with the pool of the same name that a
    /// table change rebuilt (new endpoints), so the count carries over.
    pub inflight: Arc<Inflight>,
}

impl Pool {
    /// A pool; `name` is validated by the table (a-z, 0-9, `-`, `_`).
    /// `old` is the pool of the same name it replaces, if any: its
    /// in-flight count and discovery error carry over.
    pub fn new(name: &str, endpoints: Vec<Arc<Endpoint>>, metrics: &Metrics, old: Option<&Pool>) -> Pool {
        Pool {
            name: name.to_string(),
            endpoints,
            sources: Vec::new(),
            checked: false,
            eject_after: 0,
            discovery_error: old.map(|p| Arc::clone(&p.discovery_error)).unwrap_or_default(),
            header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            metrics: metrics.pool(name),
            inflight: old.map(|p| Arc::clone(&p.inflight)).unwrap_or_default(),
        }
    }

    /// `(endpoints that count for the switch gate, all endpoints)`: what
    /// the pool's readiness is computed from. With active checks the
    /// healthy endpoints count, without them every endpoint not ejected.
    pub fn gate_count(&self) -> (usize, usize) {
        let counting = self
            .endpoints
            .iter()
            .filter(|e| match e.health.get() {
                EndpointHealth::Healthy => true,
                EndpointHealth::Unknown | EndpointHealth::Unhealthy => !self.checked,
                EndpointHealth::Ejected => false,
            })
            .count();
        (counting, self.endpoints.len())
    }

    /// The panic rule: the pool has endpoints but none is usable, so
    /// routing uses them all anyway.
    pub fn panic(&self) -> bool {
        !self.endpoints.is_empty() && !self.endpoints.iter().any(|e| e.health.get().usable())
    }

    /// Endpoints per state, in [`EndpointHealth::ALL`] order.
    pub fn census(&self) -> [usize; 4] {
        let mut n = [0; 4];
        for e in &self.endpoints {
            n[e.health.get() as usize] += 1;
        }
        n
    }

    /// The current discovery error, if any.
    pub fn discovery_error(&self) -> Option<String> {
        self.discovery_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The endpoint addresses, in order.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.addr.as_str())
    }

    /// Requests of this pool in flight (across every table that holds it).
    pub fn inflight(&self) -> i64 {
        self.inflight.get()
    }

    /// Open tunnels of this pool (across every table that holds it); each
    /// also counts in [`Pool::inflight`].
    pub fn tunnels(&self) -> i64 {
        self.inflight.tunnels()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndpointHealth::*;

    #[test]
    fn thresholds_move_the_verdict_only_after_enough_checks_in_a_row() {
        // (verdict, streak, pass) → (verdict, streak), healthy_after 2, unhealthy_after 3.
        let rows = [
            ((Unknown, 0, true), (Unknown, 1)),
            ((Unknown, 1, true), (Healthy, 2)),
            ((Unknown, 0, false), (Unknown, -1)),
            ((Unknown, -2, false), (Unhealthy, -3)),
            ((Healthy, 5, false), (Healthy, -1)),
            ((Healthy, -2, false), (Unhealthy, -3)),
            ((Unhealthy, -7, true), (Unhealthy, 1)),
            ((Unhealthy, 1, true), (Healthy, 2)),
            ((Unhealthy, 1, false), (Unhealthy, -1)),
        ];
        for ((v, s, pass), want) in rows {
            assert_eq!(step(v, s, pass, 2, 3), want, "{v:?} streak {s} pass {pass}");
        }
        assert_eq!(step(Unknown, 0, true, 1, 1), (Healthy, 1), "thresholds of 1");
    }

    #[test]
    fn an_ejection_ends_at_a_passed_check() {
        let h = HealthState::default();
        assert_eq!(h.record_check(true, 1, 1), Healthy);
        h.set(Ejected);
        assert_eq!(
            h.record_check(false, 1, 2),
            Ejected,
            "a failed check keeps it out"
        );
        assert_eq!(h.record_check(true, 1, 2), Healthy, "a passed one readmits it");
        h.set(Ejected);
        h.readmit();
        assert_eq!(h.get(), Healthy, "readmitted to the checked verdict");
    }

    #[test]
    fn least_loaded_with_rotation_tie_break() {
        let loads = [0u32, 0, 0];
        // All equal: the scan's start wins, so consecutive starts rotate.
        let picks: Vec<_> = (0..6)
            .map(|s| least_loaded(3, s, |_| true, |i| loads[i]).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // The least loaded wins wherever the scan starts.
        let loads = [2u32, 1, 3];
        for s in 0..3 {
            assert_eq!(least_loaded(3, s, |_| true, |i| loads[i]), Some(1));
        }
        // Ties among the least loaded only: rotation among 0 and 2.
        let loads = [1u32, 4, 1];
        assert_eq!(least_loaded(3, 0, |_| true, |i| loads[i]), Some(0));
        assert_eq!(least_loaded(3, 1, |_| true, |i| loads[i]), Some(2));
        // Unusable endpoints are skipped, even when idle.
        let loads = [0u32, 5, 0];
        assert_eq!(least_loaded(3, 0, |i| i == 1, |i| loads[i]), Some(1));
        assert_eq!(least_loaded(3, 0, |_| false, |i| loads[i]), None);
        assert_eq!(least_loaded(0, 0, |_| true, |_| 0), None);
    }
}
