//! One core's view of the shared routing table: what a request needs from
//! it, kept so that the request path writes no cache line that another core
//! writes too. Per request a core still loads the shared table once (so a
//! switch is seen by the very next request), but when that table is the one
//! it saw last it reuses its own copies: reference counts that are not
//! atomic, header values that only this core touches, its own rotation
//! cursor, its own in-flight count per endpoint (what spreading compares)
//! and its own buffer of the per-request metrics.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::watch;

use crate::client::LocalClient;
use crate::metrics::LocalPoolMetrics;
use crate::pool::{self, Failure, FailureTx, Pool};
use crate::table::RoutingTable;

/// One pool as one core uses it.
pub struct CorePool {
    /// The shared pool.
    pub pool: Arc<Pool>,
    /// `x-switchyard-pool`, this core's copy.
    pub header: HeaderValue,
    /// This core's buffer of the pool's per-request series.
    pub metrics: LocalPoolMetrics,
    /// This core's index (its slot in the pool's in-flight count).
    pub core: usize,
    next: Cell<usize>,
    /// Requests in flight on this core per endpoint (index in the pool):
    /// what spreading compares. This core's alone, so never contended.
    loads: Box<[Cell<u32>]>,
    /// Where a run of `eject_after` failures is reported.
    failures: FailureTx,
    /// The endpoint the last dropped sending was trying, if any: how a
    /// request timeout (which drops the sending) is counted against it.
    abandoned: Cell<Option<usize>>,
}

impl CorePool {
    fn new(pool: &Arc<Pool>, core: usize, failures: FailureTx) -> CorePool {
        CorePool {
            pool: Arc::clone(pool),
            header: copy(&pool.header),
            metrics: pool.metrics.local(),
            core,
            // Cores start their rotation at different endpoints.
            next: Cell::new(core),
            loads: (0..pool.endpoints.len()).map(|_| Cell::new(0)).collect(),
            failures,
            abandoned: Cell::new(None),
        }
    }

    /// The endpoint for a request's first try: the usable one with the
    /// fewest requests in flight on this core, ties broken by rotation
    /// (each call starts the scan one further). With no usable endpoint
    /// (the panic rule) every endpoint not ejected is a candidate, and
    /// then any. `None` only for a pool without endpoints.
    pub fn choose(&self) -> Option<usize> {
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let eps = &self.pool.endpoints;
        let load = |i: usize| self.loads[i].get();
        pool::least_loaded(eps.len(), start, |i| eps[i].health.get().usable(), load)
            .or_else(|| {
                pool::least_loaded(
                    eps.len(),
                    start,
                    |i| eps[i].health.get() != pool::EndpointHealth::Ejected,
                    load,
                )
            })
            .or_else(|| pool::least_loaded(eps.len(), start, |_| true, load))
    }

    /// Whether a retry may go to endpoint `i`: usable, or the pool panics.
    pub fn usable(&self, i: usize) -> bool {
        self.pool.endpoints[i].health.get().usable() || self.pool.panic()
    }

    /// One more request in flight to endpoint `i` on this core.
    pub fn load(&self, i: usize) {
        if let Some(c) = self.loads.get(i) {
            c.set(c.get().saturating_add(1));
        }
    }

    /// One request fewer in flight to endpoint `i` on this core.
    pub fn unload(&self, i: usize) {
        if let Some(c) = self.loads.get(i) {
            c.set(c.get().saturating_sub(1));
        }
    }

    /// A live request to endpoint `i` failed to connect, its connection
    /// was reset before an answer, it timed out waiting on the endpoint, or
    /// the endpoint cut or stalled (`timeouts.upstream_read`) its answer's
    /// body: counted, and every `eject_after` in a row reported to the
    /// health task.
    pub fn failed(&self, i: usize) {
        let (Some(ep), after) = (self.pool.endpoints.get(i), self.pool.eject_after) else {
            return;
        };
        let n = ep.health.failed();
        if after > 0 && n >= after && (n - after) % after == 0 {
            let _ = self.failures.send(Failure {
                pool: Arc::clone(&self.pool),
                endpoint: Arc::clone(ep),
            });
        }
    }

    /// A sending ended; `at` is the endpoint it was still trying when it
    /// was dropped (none when it ended by itself).
    pub fn abandon(&self, at: Option<usize>) {
        self.abandoned.set(at);
    }

    /// The request whose sending was just dropped timed out: a failure of
    /// the endpoint it was trying.
    pub fn timed_out(&self) {
        if let Some(i) = self.abandoned.take() {
            self.failed(i);
        }
    }

    /// A live request to endpoint `i` got an answer, and its body was not
    /// cut by the endpoint: the endpoint's run of failures ends.
    pub fn succeeded(&self, i: usize) {
        if let Some(ep) = self.pool.endpoints.get(i) {
            ep.health.succeeded();
        }
    }
}

/// A header value in storage of its own, so that cloning it touches no
/// reference count that another core also touches.
fn copy(v: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| v.clone())
}

struct Seen {
    table: Arc<RoutingTable>,
    active: Rc<CorePool>,
    generation: HeaderValue,
    /// The other pools of the table as this core uses them (a split, a
    /// preview), by index; made at their first request.
    others: Vec<Option<Rc<CorePool>>>,
}

/// One core's view; see the module doc.
pub struct View {
    core: usize,
    /// This core's upstream connections: a new table closes the idle ones
    /// of endpoints it no longer has.
    client: Rc<LocalClient>,
    failures: FailureTx,
    seen: RefCell<Option<Seen>>,
    /// Every pool this core has used and that is still in the table, for
    /// the periodic flush of their metrics.
    pools: RefCell<Vec<Rc<CorePool>>>,
    /// This core's random state for the draw of a split.
    pub rng: Cell<u64>,
}

impl View {
    /// An empty view for core `core`, whose upstream connections are
    /// `client` and which reports failures to `failures`.
    pub fn new(core: usize, client: Rc<LocalClient>, failures: FailureTx) -> View {
        View {
            core,
            client,
            failures,
            seen: RefCell::new(None),
            pools: RefCell::new(Vec::new()),
            rng: Cell::new(crate::progressive::seed(core)),
        }
    }

    /// The active pool of `table` (the table just loaded) and its
    /// `x-switchyard-generation` value.
    pub fn route(&self, table: &Arc<RoutingTable>) -> (Rc<CorePool>, HeaderValue) {
        self.route_to(table, table.active)
    }

    /// Pool `i` of `table` (the table just loaded) as this core uses it,
    /// and the table's `x-switchyard-generation` value.
    pub fn route_to(&self, table: &Arc<RoutingTable>, i: usize) -> (Rc<CorePool>, HeaderValue) {
        let mut seen = self.seen.borrow_mut();
        let s = match &mut *seen {
            Some(s) if Arc::ptr_eq(&s.table, table) => s,
            other => other.insert(self.refresh(table)),
        };
        if i == table.active {
            return (Rc::clone(&s.active), s.generation.clone());
        }
        let Some(slot) = s.others.get_mut(i) else {
            return (Rc::clone(&s.active), s.generation.clone());
        };
        let pool = slot.get_or_insert_with(|| self.core_pool(&table.pools[i]));
        (Rc::clone(pool), s.generation.clone())
    }

    /// `pool` as this core uses it: the one it already has, or a new one.
    fn core_pool(&self, pool: &Arc<Pool>) -> Rc<CorePool> {
        let mut pools = self.pools.borrow_mut();
        match pools.iter().find(|c| Arc::ptr_eq(&c.pool, pool)) {
            Some(c) => Rc::clone(c),
            None => {
                let c = Rc::new(CorePool::new(pool, self.core, self.failures.clone()));
                pools.push(Rc::clone(&c));
                c
            }
        }
    }

    /// A new table: keep the pools it still has, make the active one's.
    fn refresh(&self, table: &Arc<RoutingTable>) -> Seen {
        // Pools the table no longer holds are flushed (on drop) once their
        // last request ends.
        self.pools
            .borrow_mut()
            .retain(|c| table.pools.iter().any(|p| Arc::ptr_eq(p, &c.pool)));
        self.client.retain_endpoints_of(table);
        Seen {
            table: Arc::clone(table),
            active: self.core_pool(table.active_pool()),
            generation: copy(&table.generation_header),
            others: vec![None; table.pools.len()],
        }
    }

    /// Adds every buffered metric of this core to the shared series.
    pub fn flush(&self) {
        for p in self.pools.borrow().iter() {
            p.metrics.flush();
        }
    }
}

/// How a scrape gets every core's buffered metrics: it asks every core to
/// flush and waits (bounded) until each did, so the series it renders count
/// every request that ended before it.
pub struct FlushRequests {
    asked: watch::Sender<u64>,
    done: watch::Sender<Vec<u64>>,
}

impl FlushRequests {
    /// For `cores` cores.
    pub fn new(cores: usize) -> FlushRequests {
        FlushRequests {
            asked: watch::Sender::new(0),
            done: watch::Sender::new(vec![0; cores]),
        }
    }

    /// What a core waits on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.asked.subscribe()
    }

    /// Core `core` flushed after it saw request `asked`.
    pub fn done(&self, core: usize, asked: u64) {
        self.done.send_modify(|d| {
            if let Some(e) = d.get_mut(core) {
                *e = (*e).max(asked);
            }
        });
    }

    /// Asks every core to flush and waits until each did, or `within`
    /// passed (a core that is stopping does not answer).
    pub async fn flush_all(&self, within: Duration) {
        let mut asked = 0;
        self.asked.send_modify(|a| {
            *a += 1;
            asked = *a;
        });
        let mut done = self.done.subscribe();
        let _ = tokio::time::timeout(within, done.wait_for(|d| d.iter().all(|e| *e >= asked))).await;
    }
}
