//! The switching rules as one pure function: [`decide`] takes the control
//! state and one event and returns the next state, what to store, what to
//! persist and what to answer. No I/O, no clock, no metrics: the writer
//! does those, exactly as the [`Decision`] says, so every rule can be
//! tested as a row of the design's decision table (see the tests below).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::table::{ControlFacts, Desired, PendingFact, Readiness, Source};

/// What is routed: the active pool (weights of a split come later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The pool that gets new requests.
    pub active: String,
}

impl Route {
    /// All traffic to `pool`.
    pub fn to(pool: impl Into<String>) -> Route {
        Route { active: pool.into() }
    }
}

/// An admin switch or rollback in force on top of the file's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The route it set.
    pub route: Route,
    /// `admin` or `rollback`.
    pub source: Source,
}

/// Everything the rules look at. The writer owns the only copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlState {
    /// The last accepted upstreams file (its route is `file.active`).
    pub file: Desired,
    /// Hash of the accepted file's bytes (or of what persist wrote there).
    pub file_hash: u64,
    /// The accepted file's text: what persist edits (never a re-read).
    pub file_text: Arc<str>,
    /// The route in force.
    pub route: Route,
    /// An override of the file's route, if any.
    pub overridden: Option<Override>,
    /// The route before the last forward switch; consumed by a rollback.
    pub previous: Option<Route>,
    /// The file's route, waiting for its pool to be ready (the switch gate).
    /// Invariant: when set, it is `file.active` and differs from `route`.
    pub pending: Option<Route>,
    /// Each pool's readiness, as the writer last computed it from the
    /// stored table (data, never computed here). A pool not in it (new in
    /// a file not yet stored) is not ready.
    pub ready: BTreeMap<String, Readiness>,
    /// The stored table's generation.
    pub generation: u64,
    /// Who made the stored table.
    pub source: Source,
    /// The last rejected file's errors, until a read finds a valid file.
    pub last_reload_error: Option<String>,
    /// Why the override in force could not be written to the file.
    pub persist_error: Option<String>,
    /// `[admin] persist`: an admin switch also rewrites the file's route.
    pub persist: bool,
}

impl ControlState {
    /// The state at start, from the valid upstreams file: its route applies,
    /// with no override and nothing to roll back to.
    pub fn start(file: Desired, file_hash: u64, file_text: Arc<str>, persist: bool) -> ControlState {
        ControlState {
            route: Route::to(file.active.clone()),
            file,
            file_hash,
            file_text,
            overridden: None,
            previous: None,
            pending: None,
            ready: BTreeMap::new(),
            generation: 1,
            source: Source::File,
            last_reload_error: None,
            persist_error: None,
            persist,
        }
    }

    /// What the stored table shows of this state (`/status`).
    pub fn facts(&self) -> ControlFacts {
        ControlFacts {
            previous: self.previous.as_ref().map(|r| r.active.clone()),
            overridden: self.overridden.is_some(),
            last_reload_error: self.last_reload_error.clone(),
            persist_error: self.persist_error.clone(),
            file_active: self.file.active.clone(),
            pending: self.pending.as_ref().map(|p| PendingFact {
                active: p.active.clone(),
                reason: self.gate(&p.active).err().unwrap_or_default(),
            }),
            readiness: self.ready.clone(),
        }
    }

    /// The switch gate: `Ok` when `pool` is ready, else why not
    /// (`green: 0 of 3 endpoints healthy, needs 1`).
    pub fn gate(&self, pool: &str) -> Result<(), String> {
        match self.ready.get(pool) {
            Some(r) if r.is_ready() => Ok(()),
            Some(r) => Err(r.reason(pool)),
            None => Err(format!(
                "{pool}: not in the routing table yet (its readiness is not known)"
            )),
        }
    }
}

/// What happened to the upstreams file when the writer read it.
#[derive(Debug, Clone)]
pub enum FileRead {
    /// It could not be read (the message names the file and why).
    Unreadable(String),
    /// It was read: the hash of its bytes, its text, and the file parsed and
    /// validated (or every error, one message).
    Read {
        /// Hash of the bytes read.
        hash: u64,
        /// The text read (kept if the file is accepted).
        text: Arc<str>,
        /// The validated file, or why it is invalid.
        parsed: Result<Desired, String>,
    },
}

/// One input of the control plane.
#[derive(Debug, Clone)]
pub enum Event {
    /// The upstreams file was read (a file event, the periodic re-read, SIGHUP).
    FileRead(FileRead),
    /// `POST /switch`.
    Switch {
        /// The target pool.
        to: String,
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
        /// Switch even if the target pool is not ready.
        force: bool,
    },
    /// `POST /rollback`.
    Rollback {
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
        /// Roll back even if the previous pool is not ready.
        force: bool,
    },
    /// Readiness may have changed (the stored table changed, or endpoint
    /// health or addresses did): each pool's readiness, as the writer
    /// computed it from the stored table.
    Readiness(BTreeMap<String, Readiness>),
    /// The writer tried to persist `route` into the file: what it wrote,
    /// or why it could not.
    Persisted {
        /// The route written.
        route: Route,
        /// The file's new content, or why nothing was written.
        result: Result<Written, String>,
    },
}

/// What persist wrote to the upstreams file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Hash of the new content.
    pub hash: u64,
    /// The new content.
    pub text: Arc<str>,
}

/// What the writer stores after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Nothing changed that a reader can see.
    Nothing,
    /// Only the control facts changed: the same table with new facts.
    Facts,
    /// A new table (new generation) built from the next state.
    Table,
}

/// The answer to a switch or rollback (the JSON body of a 200).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SwitchOutcome {
    /// Whether the active pool changed.
    pub changed: bool,
    /// The active pool now.
    pub active: String,
    /// The active pool before.
    pub previous: String,
    /// The table's generation now.
    pub generation: u64,
    /// Who made the current table.
    pub source: &'static str,
}

/// Why a switch or rollback was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SwitchError {
    /// The target is not a pool.
    #[error("unknown pool `{pool}` (pools: {})", known.join(", "))]
    UnknownPool {
        /// What was asked.
        pool: String,
        /// The pools there are.
        known: Vec<String>,
    },
    /// `if_generation` did not match.
    #[error("if_generation is {expected}, but the current generation is {current}")]
    Conflict {
        /// What the caller expected.
        expected: u64,
        /// The current generation.
        current: u64,
    },
    /// No switch since the last rollback (or since start).
    #[error("nothing to roll back to: no switch since start or since the last rollback")]
    NothingToRollBack,
    /// The target pool is not ready and `force` was not given: the reason,
    /// e.g. `green: 0 of 3 endpoints healthy, needs 1`.
    #[error("{0}")]
    NotReady(String),
    /// The writer is gone (shutting down).
    #[error("the proxy is shutting down")]
    Unavailable,
}

/// The result of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new table is live.
    Applied {
        /// Its generation.
        generation: u64,
    },
    /// The file was accepted, except its change of `active`: that pool is
    /// not ready, so the switch is pending (applied once the pool is ready).
    Pending {
        /// The table's generation (the file's other changes are applied).
        generation: u64,
        /// Why the switch waits.
        reason: String,
    },
    /// The file's content was already applied (or changed nothing).
    Unchanged,
    /// The file is invalid; the old table stays.
    Rejected(String),
}

impl ReloadOutcome {
    /// The `result` label of `config_reloads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied { .. } | ReloadOutcome::Pending { .. } => "ok",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Rejected(_) => "error",
        }
    }
}

/// The answer a decision carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// To a file read.
    Reload(ReloadOutcome),
    /// To a switch or rollback.
    Switch(Result<SwitchOutcome, SwitchError>),
    /// Nobody waits (a persist result, a readiness change).
    Nothing,
}

/// What to do about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The state from now on.
    pub next: ControlState,
    /// What to store (derived from the old and next state).
    pub store: Store,
    /// Rewrite the file's route to this one after the store (`[admin] persist`).
    pub persist: Option<Route>,
    /// What to answer.
    pub reply: Reply,
}

/// The rules: what `event` does to `state`.
pub fn decide(state: &ControlState, event: Event) -> Decision {
    match event {
        Event::FileRead(read) => file_read(state, read),
        Event::Switch {
            to,
            if_generation,
            force,
        } => switch(state, Route::to(to), if_generation, Source::Admin, force),
        Event::Rollback { if_generation, force } => match &state.previous {
            None => refuse(state, SwitchError::NothingToRollBack),
            Some(previous) => switch(state, previous.clone(), if_generation, Source::Rollback, force),
        },
        Event::Persisted { route, result } => persisted(state, route, result),
        Event::Readiness(ready) => readiness(state, ready),
    }
}

/// A decision whose `store` follows from what changed between the states.
fn settle(state: &ControlState, next: ControlState, persist: Option<Route>, reply: Reply) -> Decision {
    let store = if next.generation != state.generation {
        Store::Table
    } else if next.facts() != state.facts() {
        Store::Facts
    } else {
        Store::Nothing
    };
    Decision {
        next,
        store,
        persist,
        reply,
    }
}

fn reload(state: &ControlState, next: ControlState, outcome: ReloadOutcome) -> Decision {
    settle(state, next, None, Reply::Reload(outcome))
}

/// A forward switch made by the file (a file's new route, or a pending
/// one applied): the route changes, the file now says it (no override,
/// nothing pending), and the old route is what a rollback returns to.
fn file_switch(next: &mut ControlState, from: &Route, to: Route) {
    next.previous = Some(from.clone());
    next.route = to;
    next.overridden = None;
    next.persist_error = None;
    next.pending = None;
    // Issue 19 (automatic rollback): a forward switch opens the window here.
}

fn file_read(state: &ControlState, read: FileRead) -> Decision {
    let mut next = state.clone();
    let (hash, text, parsed) = match read {
        FileRead::Unreadable(error) => return reject(state, error),
        FileRead::Read { hash, text, parsed } => (hash, text, parsed),
    };
    // Only the hash of an accepted file is remembered, so a rejected file
    // is read and judged again at the next event.
    if hash == state.file_hash {
        next.last_reload_error = None;
        return reload(state, next, ReloadOutcome::Unchanged);
    }
    let file = match parsed {
        Ok(file) => file,
        Err(error) => return reject(state, error),
    };
    // A file that keeps the route but no longer defines the override's pool
    // is rejected: a half-written file (or an edit made before switching
    // away) must never drop an operator's switch.
    if file.active == state.file.active {
        if let Some(o) = state
            .overridden
            .as_ref()
            .filter(|o| !file.has_pool(&o.route.active))
        {
            return reject(
                state,
                format!(
                    "the file no longer defines pool `{}`, where the override ({}) sends traffic; \
                     switch away from it first, or change `active` in the file",
                    o.route.active,
                    o.source.as_str()
                ),
            );
        }
    }
    next.file_hash = hash;
    next.file_text = text;
    next.last_reload_error = None;
    if file == state.file {
        return reload(state, next, ReloadOutcome::Unchanged);
    }
    let pools_changed = file.pools != state.file.pools;
    let target = Route::to(file.active.clone());
    if file.active != state.file.active {
        // A new route in the file is a newer intent than an override or a
        // pending switch.
        if target == state.route {
            // The route in force already (an override made it, or the file
            // goes back while its switch was pending): the file now says it.
            next.overridden = None;
            next.persist_error = None;
            next.pending = None;
        } else if file.force || state.gate(&target.active).is_ok() {
            file_switch(&mut next, &state.route, target);
        } else if !file.has_pool(&state.route.active) {
            // Pending would leave traffic on a pool the file removes.
            let reason = state.gate(&target.active).err().unwrap_or_default();
            return reject(
                state,
                format!(
                    "the file no longer defines pool `{}`, which serves the traffic, and the switch to `{}` \
                     cannot apply yet ({reason}); keep `{}` until the switch is done, or set force = true",
                    state.route.active, target.active, state.route.active
                ),
            );
        } else {
            // Not ready: the rest of the file applies, the switch waits.
            next.pending = Some(target);
        }
    } else if let Some(pending) = state.pending.clone().filter(|_| file.force) {
        // Same route, now with `force`: the pending switch applies.
        file_switch(&mut next, &state.route, pending);
    }
    next.file = file;
    if next.route != state.route || pools_changed {
        next.generation = state.generation + 1;
        next.source = Source::File;
    }
    let generation = next.generation;
    let outcome = match &next.pending {
        Some(p) => ReloadOutcome::Pending {
            generation,
            reason: next.gate(&p.active).err().unwrap_or_default(),
        },
        None => ReloadOutcome::Applied { generation },
    };
    reload(state, next, outcome)
}

fn reject(state: &ControlState, error: String) -> Decision {
    let mut next = state.clone();
    next.last_reload_error = Some(error.clone());
    reload(state, next, ReloadOutcome::Rejected(error))
}

fn refuse(state: &ControlState, error: SwitchError) -> Decision {
    settle(state, state.clone(), None, Reply::Switch(Err(error)))
}

fn switch(
    state: &ControlState,
    to: Route,
    if_generation: Option<u64>,
    source: Source,
    force: bool,
) -> Decision {
    if let Some(expected) = if_generation.filter(|g| *g != state.generation) {
        return refuse(
            state,
            SwitchError::Conflict {
                expected,
                current: state.generation,
            },
        );
    }
    if !state.file.has_pool(&to.active) {
        let known = state.file.pools.iter().map(|(n, _)| n.clone()).collect();
        return refuse(
            state,
            SwitchError::UnknownPool {
                pool: to.active,
                known,
            },
        );
    }
    // "Already active" comes before the gate: asking for what is in force
    // never fails because that pool is not ready.
    if to == state.route {
        let mut next = state.clone();
        let mut persist = None;
        // A later intent cancels a pending file switch. The route in force
        // then differs from the file's: it is held as an override.
        if next.pending.take().is_some() && next.overridden.is_none() {
            next.overridden = Some(Override {
                route: to.clone(),
                source,
            });
            persist = state.persist.then(|| to.clone());
        }
        let outcome = SwitchOutcome {
            changed: false,
            active: to.active.clone(),
            previous: to.active,
            generation: state.generation,
            source: state.source.as_str(),
        };
        return settle(state, next, persist, Reply::Switch(Ok(outcome)));
    }
    if !force {
        if let Err(reason) = state.gate(&to.active) {
            return refuse(state, SwitchError::NotReady(reason));
        }
    }
    let mut next = state.clone();
    next.overridden = Some(Override {
        route: to.clone(),
        source,
    });
    // A rollback consumes `previous`: a second one has nothing to go back to.
    next.previous = (source != Source::Rollback).then(|| state.route.clone());
    next.route = to.clone();
    next.pending = None;
    next.generation = state.generation + 1;
    next.source = source;
    // Issue 19 (automatic rollback): an admin switch opens the window here,
    // a rollback closes it.
    let outcome = SwitchOutcome {
        changed: true,
        active: to.active.clone(),
        previous: state.route.active.clone(),
        generation: next.generation,
        source: source.as_str(),
    };
    let persist = state.persist.then_some(to);
    settle(state, next, persist, Reply::Switch(Ok(outcome)))
}

/// New readiness facts: shown in `/status`, and a pending file switch
/// whose pool is now ready applies (as the file switch it is).
fn readiness(state: &ControlState, ready: BTreeMap<String, Readiness>) -> Decision {
    let mut next = state.clone();
    next.ready = ready;
    if let Some(pending) = state.pending.clone() {
        if next.gate(&pending.active).is_ok() {
            file_switch(&mut next, &state.route, pending);
            next.generation = state.generation + 1;
            next.source = Source::File;
        }
    }
    settle(state, next, None, Reply::Nothing)
}

fn persisted(state: &ControlState, route: Route, result: Result<Written, String>) -> Decision {
    let mut next = state.clone();
    match result {
        // Written: the file now says what the table does, so there is no
        // override, and the watcher finds this content already applied.
        Ok(written) => {
            next.file_hash = written.hash;
            next.file_text = written.text;
            next.file.active = route.active;
            next.overridden = None;
            next.persist_error = None;
        }
        // Not written: the switch stays an override, and `/status` says why.
        Err(error) => next.persist_error = Some(error),
    }
    settle(state, next, None, Reply::Nothing)
}

#[cfg(test)]
mod tests;
