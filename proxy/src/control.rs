//! The control plane: every change of the routing table goes through one
//! writer task, and every rule of *which wins* is one pure function.
//!
//! - [`mod@decide`]: `decide(&ControlState, Event) -> Decision`, the switching
//!   rules (file reloads, admin switches, rollbacks, persist, and the
//!   switch gate: readiness handed in as data, pending file switches) with
//!   no I/O, no clock and no metrics. Its unit tests are the design's
//!   decision table, one row per case.
//! - [`writer`]: the task that owns the [`ControlState`], turns requests
//!   ([`Command`]) into events, and carries out each [`Decision`]: reads
//!   the file, builds and stores the table, publishes metrics after the
//!   store, writes the audit line, persists, recomputes the pools'
//!   readiness, answers the caller.
//! - [`Routes`]: the one `ArcSwap` the data plane loads; only the writer can
//!   store into it. The stored table carries the control facts `/status`
//!   shows (previous, override, last reload error, pending switch, readiness),
//!   so one load answers it.

pub mod decide;
pub mod writer;

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::table::RoutingTable;

pub use decide::{
    decide, ControlState, Decision, Event, FileRead, Override, ReloadOutcome, Route, SwitchError,
    SwitchOutcome,
};
pub use writer::{content_hash, Cause, Command, Writer};

/// The routing table as the data plane sees it: a request loads it once.
/// Only the control plane's writer stores a new one (the store method is
/// private to this module and its children).
pub struct Routes(ArcSwap<RoutingTable>);

impl Routes {
    /// The cell, holding the table built at start.
    pub(crate) fn new(first: RoutingTable) -> Routes {
        Routes(ArcSwap::from_pointee(first))
    }

    /// The current table, for one unit of work (do not hold it across an `.await`).
    pub fn load(&self) -> Guard<Arc<RoutingTable>> {
        self.0.load()
    }

    /// The current table, owned.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }

    /// Makes `table` the one every new request routes on.
    fn store(&self, table: Arc<RoutingTable>) {
        self.0.store(table);
    }
}
