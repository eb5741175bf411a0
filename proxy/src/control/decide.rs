//! The switching rules as one pure function: [`decide`] takes the control
//! state and one event and returns the next state, what to store, what to
//! persist and what to answer. No I/O, no clock, no metrics: the writer
//! does those, exactly as the [`Decision`] says, so every rule can be
//! tested as a row of the design's decision table (see the tests below).

use std::sync::Arc;

use serde::Serialize;

use crate::table::{ControlFacts, Desired, Source};

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
    },
    /// `POST /rollback`.
    Rollback {
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
    },
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
    /// The file's content was already applied (or changed nothing).
    Unchanged,
    /// The file is invalid; the old table stays.
    Rejected(String),
}

impl ReloadOutcome {
    /// The `result` label of `config_reloads_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied { .. } => "ok",
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
    /// Nobody waits (a persist result).
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
        Event::Switch { to, if_generation } => switch(state, Route::to(to), if_generation, Source::Admin),
        Event::Rollback { if_generation } => match &state.previous {
            None => refuse(state, SwitchError::NothingToRollBack),
            Some(previous) => switch(state, previous.clone(), if_generation, Source::Rollback),
        },
        Event::Persisted { route, result } => persisted(state, route, result),
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
    // A new route in the file is a newer intent than an override: it clears
    // the override, and with it what persist could not write.
    if file.active != state.file.active {
        next.overridden = None;
        next.persist_error = None;
    }
    let route = match &next.overridden {
        Some(o) => o.route.clone(),
        None => Route::to(file.active.clone()),
    };
    if route != state.route {
        next.previous = Some(state.route.clone());
    }
    next.route = route;
    next.file = file;
    next.generation = state.generation + 1;
    next.source = Source::File;
    let generation = next.generation;
    reload(state, next, ReloadOutcome::Applied { generation })
}

fn reject(state: &ControlState, error: String) -> Decision {
    let mut next = state.clone();
    next.last_reload_error = Some(error.clone());
    reload(state, next, ReloadOutcome::Rejected(error))
}

fn refuse(state: &ControlState, error: SwitchError) -> Decision {
    settle(state, state.clone(), None, Reply::Switch(Err(error)))
}

fn switch(state: &ControlState, to: Route, if_generation: Option<u64>, source: Source) -> Decision {
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
    if to == state.route {
        let outcome = SwitchOutcome {
            changed: false,
            active: to.active.clone(),
            previous: to.active,
            generation: state.generation,
            source: state.source.as_str(),
        };
        return settle(state, state.clone(), None, Reply::Switch(Ok(outcome)));
    }
    let mut next = state.clone();
    next.overridden = Some(Override {
        route: to.clone(),
        source,
    });
    // A rollback consumes `previous`: a second one has nothing to go back to.
    next.previous = (source != Source::Rollback).then(|| state.route.clone());
    next.route = to.clone();
    next.generation = state.generation + 1;
    next.source = source;
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
