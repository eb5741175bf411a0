//! Spreading client connections evenly over the cores.
//!
//! Each core accepts on its own `SO_REUSEPORT` listener, and the kernel
//! picks the listener by a hash of the connection's addresses, which can
//! split a few dozen connections unevenly. A core with more connections
//! than another has that much more to do in each turn of its loop, so its
//! connections wait longer whenever it cannot get more CPU than the other.
//! So a core that accepts a connection while it serves more than the least
//! loaded core hands it over to that core, whose accept loop serves it: the
//! open connections of any two cores then differ by at most one (HAProxy
//! balances its threads' connections this way, Envoy calls it
//! `exact_balance`). What was measured, and why this stays although the
//! benchmark machine shows no difference in the tail, is in
//! docs/performance.md.
//!
//! The decision is taken under a lock, once per accepted connection (never
//! per request), so that two cores accepting at the same time cannot both
//! act on the same counts. A connection is counted on its core from the
//! decision until its [`Slot`] is dropped with the connection.
//!
//! The same counts, summed under that lock, are the process's open client
//! connections: beyond `limits.max_connections` [`Balancer::place`] gives
//! no slot, and the accepting core closes the connection at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// One core's count of open client connections, on a cache line of its own.
#[repr(align(64))]
#[derive(Default)]
struct Count(AtomicUsize);

/// The per-core connection counts and the cores' inboxes.
pub struct Balancer {
    open: Box<[Count]>,
    inboxes: Box<[mpsc::UnboundedSender<Handoff>]>,
    place: Mutex<()>,
    /// `limits.max_connections`: most connections counted at once, all
    /// cores together.
    max: usize,
}

/// A connection accepted by one core, to be served by another.
pub struct Handoff {
    /// The accepted socket, out of the accepting core's reactor.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The connection, already counted on the receiving core.
    pub slot: Slot,
    /// Accepted on the HTTPS listener: the receiving core makes the TLS
    /// handshake (none has started yet).
    pub tls: bool,
}

/// Where a core receives the connections handed to it.
pub type Inbox = mpsc::UnboundedReceiver<Handoff>;

/// One open connection counted on one core; dropping it uncounts it.
pub struct Slot {
    balancer: Arc<Balancer>,
    core: usize,
}

impl Slot {
    /// The core this connection is counted on.
    pub fn core(&self) -> usize {
        self.core
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.balancer.open[self.core].0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// A balancer for `cores` cores that counts at most `max` connections
    /// at once, and each core's inbox (in core order).
    pub fn new(cores: usize, max: usize) -> (Arc<Balancer>, Vec<Inbox>) {
        let cores = cores.max(1);
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..cores).map(|_| mpsc::unbounded_channel()).unzip();
        let balancer = Balancer {
            open: (0..cores).map(|_| Count::default()).collect(),
            inboxes: senders.into_boxed_slice(),
            place: Mutex::new(()),
            max,
        };
        (Arc::new(balancer), inboxes)
    }

    /// Chooses the core that serves a connection just accepted by `core`:
    /// `core` itself unless another core serves fewer connections, in which
    /// case the least loaded one. The connection is counted there from now.
    /// `None` when `max` connections are open already: the caller closes it.
    pub fn place(self: &Arc<Self>, core: usize) -> Option<Slot> {
        // The lock only orders placements (a poisoned one is still usable:
        // it guards no data); closing connections uncount without it, so
        // the sum can only be lower than read, never higher.
        let _order = self.place.lock().unwrap_or_else(|p| p.into_inner());
        let mut chosen = core;
        let mut least = self.open(core);
        let mut total = 0;
        for (c, n) in self.open.iter().enumerate() {
            let n = n.0.load(Ordering::Relaxed);
            total += n;
            if n < least {
                chosen = c;
                least = n;
            }
        }
        (total < self.max).then(|| self.here(chosen))
    }

    /// A slot on `core` itself, with no balancing (a handed-over connection
    /// that has to be served where it is after all).
    pub fn here(self: &Arc<Self>, core: usize) -> Slot {
        self.open[core].0.fetch_add(1, Ordering::Relaxed);
        Slot {
            balancer: Arc::clone(self),
            core,
        }
    }

    /// Sends a connection to the core its slot is on. Gives it back when
    /// that core no longer takes connections (it is stopping).
    pub fn hand_over(&self, handoff: Handoff) -> Result<(), Handoff> {
        let to = handoff.slot.core;
        self.inboxes[to].send(handoff).map_err(|e| e.0)
    }

    /// Open client connections counted on `core`.
    pub fn open(&self, core: usize) -> usize {
        self.open.get(core).map_or(0, |n| n.0.load(Ordering::Relaxed))
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_core_keeps_a_connection_unless_another_serves_fewer() {
        let (b, _inboxes) = Balancer::new(3, 100);
        let first = b.place(1).unwrap();
        assert_eq!(first.core(), 1, "all even: the accepting core keeps it");
        let second = b.place(1).unwrap();
        assert_ne!(second.core(), 1, "core 1 now serves more than the others");
        let third = b.place(1).unwrap();
        assert_eq!(
            [first.core(), second.core(), third.core()]
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3,
            "each core got one"
        );
        drop(third);
        let again = b.place(2).unwrap();
        assert_eq!(b.open(again.core()), 1);
        assert_eq!((0..3).map(|c| b.open(c)).sum::<usize>(), 3);
        drop((first, second, again));
        assert_eq!(
            (0..3).map(|c| b.open(c)).sum::<usize>(),
            0,
            "slots uncount when dropped"
        );
    }

    #[test]
    fn no_slot_beyond_the_process_limit_until_one_closes() {
        let (b, _inboxes) = Balancer::new(2, 3);
        let open: Vec<Slot> = (0..3).map(|i| b.place(i % 2).unwrap()).collect();
        assert!(
            b.place(0).is_none() && b.place(1).is_none(),
            "3 open: the 4th gets none"
        );
        drop(open.into_iter().next());
        assert!(b.place(1).is_some(), "one closed: room for one more");
    }

    #[test]
    fn a_handoff_to_a_stopped_core_comes_back() {
        let (b, mut inboxes) = Balancer::new(2, 100);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(peer).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        let _busy = b.place(0).unwrap();
        let slot = b.place(0).unwrap();
        assert_eq!(slot.core(), 1);
        drop(inboxes.pop());
        let back = b
            .hand_over(Handoff {
                stream,
                peer,
                slot,
                tls: false,
            })
            .err()
            .unwrap();
        assert_eq!(back.slot.core(), 1);
        drop(back);
        assert_eq!(b.open(1), 0);
    }
}
