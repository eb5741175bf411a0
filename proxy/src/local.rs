//! One core's view of the shared routing table: what a request needs from
//! it, kept so that the request path writes no cache line that another core
//! writes too. Per request a core still loads the shared table once (so a
//! switch is seen by the very next request), but when that table is the one
//! it saw last it reuses its own copies: reference counts that are not
//! atomic, header values that only this core touches, its own round-robin
//! cursor and its own buffer of the per-request metrics.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::watch;

use crate::metrics::LocalPoolMetrics;
use crate::pool::Pool;
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
}

impl CorePool {
    fn new(pool: &Arc<Pool>, core: usize) -> CorePool {
        CorePool {
            pool: Arc::clone(pool),
            header: copy(&pool.header),
            metrics: pool.metrics.local(),
            core,
            // Cores start their round-robin at different endpoints.
            next: Cell::new(core),
        }
    }

    /// Where round-robin starts for the next request of this core.
    pub fn next_start(&self) -> usize {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        n
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
}

/// One core's view; see the module doc.
pub struct View {
    core: usize,
    seen: RefCell<Option<Seen>>,
    /// Every pool this core has used and that is still in the table, for
    /// the periodic flush of their metrics.
    pools: RefCell<Vec<Rc<CorePool>>>,
}

impl View {
    /// An empty view for core `core`.
    pub fn new(core: usize) -> View {
        View {
            core,
            seen: RefCell::new(None),
            pools: RefCell::new(Vec::new()),
        }
    }

    /// The active pool of `table` (the table just loaded) and its
    /// `x-switchyard-generation` value.
    pub fn route(&self, table: &Arc<RoutingTable>) -> (Rc<CorePool>, HeaderValue) {
        let mut seen = self.seen.borrow_mut();
        match &*seen {
            Some(s) if Arc::ptr_eq(&s.table, table) => (Rc::clone(&s.active), s.generation.clone()),
            _ => {
                let s = self.refresh(table);
                let out = (Rc::clone(&s.active), s.generation.clone());
                *seen = Some(s);
                out
            }
        }
    }

    /// A new table: keep the pools it still has, make the active one's.
    fn refresh(&self, table: &Arc<RoutingTable>) -> Seen {
        let mut pools = self.pools.borrow_mut();
        // Pools the table no longer holds are flushed (on drop) once their
        // last request ends.
        pools.retain(|c| table.pools.iter().any(|p| Arc::ptr_eq(p, &c.pool)));
        let active = table.active_pool();
        let core_pool = match pools.iter().find(|c| Arc::ptr_eq(&c.pool, active)) {
            Some(c) => Rc::clone(c),
            None => {
                let c = Rc::new(CorePool::new(active, self.core));
                pools.push(Rc::clone(&c));
                c
            }
        };
        Seen {
            table: Arc::clone(table),
            active: core_pool,
            generation: copy(&table.generation_header),
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
