//! Coarse deadlines of one core: the request timeout of every in-flight
//! request, the one inactivity deadline of every client connection (idle
//! between requests, `send` and `upstream_read` while a response body
//! streams) and that of every tunnel, checked by one ticking task per core
//! instead of one timer per request.
//!
//! A tokio timer per request (and hyper's header-read timer, re-armed for
//! every request of a keep-alive connection) costs allocations, timer wheel
//! inserts and removes under the driver's lock, and clock reads on every
//! request. Here arming a deadline is a slab insert on this core (no lock,
//! no allocation once the slab has grown) and the ticker fires what is due;
//! what that saves per request is measured in docs/performance.md. The
//! price is precision: a deadline fires up to one tick late, and the tick
//! is a fraction of the shortest timeout, bounded below and above (see
//! `tick_for`).
//!
//! An inactivity timeout is re-armed on every sign of progress (a body
//! frame passed on, a tunnel read) with [`Deadline::arm_in`], which reads
//! no clock: it counts from the core's coarse clock, the time of the last
//! tick, plus one tick (so it never fires early), at the cost of a slab
//! write.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// Longest tick.
const MAX_TICK: Duration = Duration::from_millis(250);
/// Shortest tick.
const MIN_TICK: Duration = Duration::from_millis(5);

/// The tick for the shortest of `timeouts`: a twentieth of it, within
/// 5..=250 ms.
pub fn tick_for(timeouts: &[Duration]) -> Duration {
    let shortest = timeouts.iter().copied().min().unwrap_or(MAX_TICK);
    (shortest / 20).clamp(MIN_TICK, MAX_TICK)
}

struct Entry {
    /// When it fires; `None` while disarmed.
    at: Option<Instant>,
    fired: bool,
    waker: Option<Waker>,
}

/// One core's deadlines; see the module doc.
pub struct Deadlines {
    entries: RefCell<Slab<Entry>>,
    /// The coarse clock: when the ticker last ran (see [`Deadline::arm_in`]).
    now: Cell<Instant>,
    /// The ticker's period (until it runs: the longest tick).
    tick: Cell<Duration>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            entries: RefCell::default(),
            now: Cell::new(Instant::now()),
            tick: Cell::new(MAX_TICK),
        }
    }
}

impl Deadlines {
    /// A deadline at `at` (`None`: disarmed until [`Deadline::arm`]).
    pub fn add(self: &Rc<Self>, at: Option<Instant>) -> Deadline {
        let key = self.entries.borrow_mut().insert(Entry {
            at,
            fired: false,
            waker: None,
        });
        Deadline {
            deadlines: Rc::clone(self),
            key,
        }
    }

    /// Fires every armed deadline that is due at `now`. Returns how many.
    pub fn fire(&self, now: Instant) -> usize {
        self.now.set(self.now.get().max(now));
        let mut wake = Vec::new();
        let mut n = 0;
        for (_, e) in self.entries.borrow_mut().iter_mut() {
            if !e.fired && e.at.is_some_and(|at| at <= now) {
                e.fired = true;
                n += 1;
                if let Some(w) = e.waker.take() {
                    wake.push(w);
                }
            }
        }
        // Woken outside the borrow: waking may run code that adds or drops
        // deadlines.
        for w in wake {
            w.wake();
        }
        n
    }

    /// Deadlines currently registered (armed or not).
    #[cfg(test)]
    fn registered(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Runs the core's ticker: fires due deadlines every `tick`, forever.
    pub async fn run(self: Rc<Self>, tick: Duration) {
        self.tick.set(tick);
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.fire(Instant::now());
        }
    }
}

/// One deadline of a core; removed when dropped.
pub struct Deadline {
    deadlines: Rc<Deadlines>,
    key: usize,
}

impl Deadline {
    /// Arms it to fire at `at` (`None`: never), clearing an earlier firing.
    pub fn arm(&self, at: Option<Instant>) {
        if let Some(e) = self.deadlines.entries.borrow_mut().get_mut(self.key) {
            e.at = at;
            e.fired = false;
        }
    }

    /// Arms it to fire once `d` has passed, counted on the core's coarse
    /// clock (the last tick) plus one tick: no clock read, never early, up
    /// to two ticks late. What inactivity timeouts re-arm with on progress.
    pub fn arm_in(&self, d: Duration) {
        let dl = &self.deadlines;
        self.arm(dl.now.get().checked_add(d.saturating_add(dl.tick.get())));
    }

    /// Whether it has fired (and was not re-armed since).
    pub fn has_fired(&self) -> bool {
        self.deadlines
            .entries
            .borrow()
            .get(self.key)
            .is_some_and(|e| e.fired)
    }

    /// Disarms it: it will not fire until armed again.
    pub fn disarm(&self) {
        self.arm(None);
    }

    /// Ready once it has fired.
    pub fn poll_fired(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut entries = self.deadlines.entries.borrow_mut();
        let Some(e) = entries.get_mut(self.key) else {
            return Poll::Pending;
        };
        if e.fired {
            return Poll::Ready(());
        }
        match &e.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => e.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A future that is ready once the deadline has fired.
    pub fn fired(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_fired(cx))
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // The waker is dropped after the borrow ends: dropping a waker can
        // run arbitrary code.
        let removed = self.deadlines.entries.borrow_mut().try_remove(self.key);
        drop(removed);
    }
}

/// `fut`, or `Err(Elapsed)` once `deadline` fired.
pub async fn timeout<F: Future>(deadline: &Deadline, fut: F) -> Result<F::Output, Elapsed> {
    tokio::select! {
        biased;
        out = fut => Ok(out),
        () = deadline.fired() => Err(Elapsed),
    }
}

/// The deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// `now + d`, or `None` (never) if that is past what `Instant` can hold.
pub fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn fires_only_what_is_due_and_only_once() {
        let d = Rc::new(Deadlines::default());
        let t0 = Instant::now();
        let soon = d.add(Some(t0 + Duration::from_secs(1)));
        let later = d.add(Some(t0 + Duration::from_secs(10)));
        let never = d.add(None);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        for x in [&soon, &later, &never] {
            assert!(x.poll_fired(&mut cx).is_pending());
        }
        assert_eq!(d.fire(t0), 0);
        assert_eq!(d.fire(t0 + Duration::from_secs(2)), 1);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(soon.poll_fired(&mut cx).is_ready());
        assert!(later.poll_fired(&mut cx).is_pending());
        // Fired once: a later tick does not fire it again.
        assert_eq!(d.fire(t0 + Duration::from_secs(3)), 0);
        assert_eq!(d.fire(t0 + Duration::from_secs(3600)), 1);
        assert!(never.poll_fired(&mut cx).is_pending());
    }

    #[test]
    fn rearming_clears_a_firing_and_disarming_stops_it() {
        let d = Rc::new(Deadlines::default());
        let t0 = Instant::now();
        let x = d.add(Some(t0));
        assert_eq!(d.fire(t0), 1);
        x.arm(Some(t0 + Duration::from_secs(5)));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(x.poll_fired(&mut cx).is_pending());
        x.disarm();
        assert_eq!(d.fire(t0 + Duration::from_secs(60)), 0);
        assert!(x.poll_fired(&mut cx).is_pending());
    }

    #[test]
    fn arm_in_counts_from_the_last_tick_plus_one_tick() {
        let d = Rc::new(Deadlines::default());
        d.tick.set(Duration::from_millis(10));
        let t0 = Instant::now();
        d.fire(t0);
        let x = d.add(None);
        x.arm_in(Duration::from_secs(1));
        assert_eq!(d.fire(t0 + Duration::from_millis(1009)), 0);
        assert!(!x.has_fired());
        assert_eq!(d.fire(t0 + Duration::from_millis(1010)), 1);
        assert!(x.has_fired());
        // Re-armed (progress) after a later tick: counted from that tick.
        x.arm_in(Duration::from_secs(1));
        assert!(!x.has_fired());
        assert_eq!(d.fire(t0 + Duration::from_millis(2019)), 0);
        assert_eq!(d.fire(t0 + Duration::from_millis(2020)), 1);
    }

    #[test]
    fn dropping_removes_the_entry() {
        let d = Rc::new(Deadlines::default());
        let a = d.add(None);
        let b = d.add(None);
        assert_eq!(d.registered(), 2);
        drop(a);
        drop(b);
        assert_eq!(d.registered(), 0);
    }

    #[test]
    fn tick_is_a_twentieth_of_the_shortest_timeout_within_bounds() {
        assert_eq!(
            tick_for(&[Duration::from_secs(30), Duration::from_secs(60)]),
            MAX_TICK
        );
        assert_eq!(
            tick_for(&[Duration::from_millis(200), Duration::from_secs(60)]),
            Duration::from_millis(10)
        );
        assert_eq!(tick_for(&[Duration::from_micros(1)]), MIN_TICK);
    }
}
