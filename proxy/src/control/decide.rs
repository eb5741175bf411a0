//! The switching rules as one pure function: [`decide`] takes the control
//! state and one event and returns the next state, what to store, what to
//! persist and what to answer. No I/O, no clock, no metrics: the writer
//! does those, exactly as the [`Decision`] says, so every rule can be
//! tested as a row of the design's decision table (see the tests below).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::table::{ControlFacts, Desired, PendingFact, Readiness, Source};

/// What is routed: one active pool, or a split with weights.
///
/// A split holds every pool with a weight above 0 (sorted by name, the
/// weights summing to 100, at least two pools); `active` is then the pool
/// with the largest weight (ties: the one active before the split). Two
/// routes are equal when they send the same shares to the same pools.
#[derive(Debug, Clone, Eq)]
pub struct Route {
    /// The pool that gets new requests (of a split: the largest share).
    pub active: String,
    /// The weights of a split; empty: all requests to `active`.
    pub split: Vec<(String, u8)>,
}

impl PartialEq for Route {
    fn eq(&self, other: &Route) -> bool {
        if self.split.is_empty() && other.split.is_empty() {
            self.active == other.active
        } else {
            self.split == other.split
        }
    }
}

impl Route {
    /// All traffic to `pool`.
    pub fn to(pool: impl Into<String>) -> Route {
        Route {
            active: pool.into(),
            split: Vec::new(),
        }
    }

    /// The route that gives each pool its weight (validated by the caller:
    /// integers 0-100 summing to 100; a pool not named gets 0). Pools with
    /// weight 0 are dropped; one pool left is no split. `before` is the
    /// pool active before: it breaks a tie for `active`.
    pub fn split(weights: impl IntoIterator<Item = (String, u8)>, before: &str) -> Route {
        let mut split: Vec<(String, u8)> = weights.into_iter().filter(|(_, w)| *w > 0).collect();
        split.sort();
        match split.len() {
            0 => Route::to(before),
            1 => Route::to(split.remove(0).0),
            _ => {
                let max = split.iter().map(|(_, w)| *w).max().unwrap_or(0);
                let active = if split.iter().any(|(p, w)| p == before && *w == max) {
                    before.to_string()
                } else {
                    split
                        .iter()
                        .find(|(_, w)| *w == max)
                        .map(|(p, _)| p.clone())
                        .unwrap_or_else(|| before.to_string())
                };
                Route { active, split }
            }
        }
    }

    /// Whether it is a split.
    pub fn is_split(&self) -> bool {
        !self.split.is_empty()
    }

    /// The share (0-100) of requests `pool` gets.
    pub fn weight(&self, pool: &str) -> u8 {
        if self.split.is_empty() {
            if self.active == pool {
                100
            } else {
                0
            }
        } else {
            self.split.iter().find(|(p, _)| p == pool).map_or(0, |(_, w)| *w)
        }
    }

    /// The pools that get requests (weight above 0).
    pub fn pools(&self) -> Vec<&str> {
        if self.split.is_empty() {
            vec![self.active.as_str()]
        } else {
            self.split.iter().map(|(p, _)| p.as_str()).collect()
        }
    }

    /// For logs and reasons: `green`, or `blue 90, green 10`.
    pub fn describe(&self) -> String {
        if self.split.is_empty() {
            self.active.clone()
        } else {
            self.split
                .iter()
                .map(|(p, w)| format!("{p} {w}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

impl Desired {
    /// The file's route: its `[split] weights` (`active` breaks a tie), or
    /// all to `active`. (Here, not in `table`, so that `table` does not
    /// import the control plane.)
    pub fn route(&self) -> Route {
        match &self.split {
            Some(w) => Route::split(w.iter().cloned(), &self.active),
            None => Route::to(self.active.clone()),
        }
    }
}

/// An open automatic-rollback watch: opened by a forward switch (when the
/// file has `[rollback]`), closed by a rollback, an automatic one, or when
/// the writer says its time (`[rollback] window`) is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The pools whose share the switch raised: whose errors count.
    pub pools: Vec<String>,
    /// The generation of the table that opened it: the writer's counts and
    /// its end name it, so a stale count never judges a newer window.
    pub generation: u64,
}

/// An admin switch or rollback in force on top of the file's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The route it set.
    pub route: Route,
    /// `admin`, `rollback` or `auto`.
    pub source: Source,
    /// Why it was made, when the proxy made it (`auto`): `/status`'s
    /// `override_reason`.
    pub reason: Option<String>,
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
    /// The open automatic-rollback watch, if any.
    pub window: Option<Window>,
    /// Why the automatic rollback is due but cannot switch (the previous
    /// route's pool is not ready), until the window closes.
    pub rollback_blocked: Option<String>,
}

impl ControlState {
    /// The state at start, from the valid upstreams file: its route applies,
    /// with no override and nothing to roll back to.
    pub fn start(file: Desired, file_hash: u64, file_text: Arc<str>, persist: bool) -> ControlState {
        ControlState {
            route: file.route(),
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
            window: None,
            rollback_blocked: None,
        }
    }

    /// What the stored table shows of this state (`/status`).
    pub fn facts(&self) -> ControlFacts {
        ControlFacts {
            previous: self.previous.as_ref().map(|r| r.active.clone()),
            overridden: self.overridden.is_some(),
            override_reason: self.overridden.as_ref().and_then(|o| o.reason.clone()),
            rollback_blocked: self.rollback_blocked.clone(),
            last_reload_error: self.last_reload_error.clone(),
            persist_error: self.persist_error.clone(),
            file_active: self.file.route().active,
            pending: self.pending.as_ref().map(|p| PendingFact {
                active: p.active.clone(),
                reason: self.gate_route(&self.route, p).err().unwrap_or_default(),
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

    /// The switch gate for a change of route from `from` to `to`: every
    /// pool that `to` gives a share and `from` gave none must be ready.
    pub fn gate_route(&self, from: &Route, to: &Route) -> Result<(), String> {
        for pool in to.pools() {
            if from.weight(pool) == 0 {
                self.gate(pool)?;
            }
        }
        Ok(())
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
        /// A split: the share (0-100) of `to`; the rest goes to the pool
        /// that had the largest share of the others (see [`split_route`]).
        weight: Option<u8>,
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
    /// The automatic rollback's bookkeeping: since the window of
    /// `generation` opened, its pools were answered `requests` times by
    /// their upstreams, `errors` of them 5xx answers or upstream errors.
    Outcomes {
        /// The window counted.
        generation: u64,
        /// Requests answered by the upstreams (or failed by them).
        requests: u64,
        /// Of those, 5xx answers and upstream errors.
        errors: u64,
    },
    /// The window of `generation` is over (`[rollback] window` passed).
    WindowOver {
        /// The window that ends.
        generation: u64,
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
    /// The weights now, when a split is in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<BTreeMap<String, u8>>,
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
    /// A `weight` that cannot be applied (over 100, or no other pool to
    /// give the rest to).
    #[error("{0}")]
    BadWeight(String),
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
            weight,
        } => {
            // The compare-and-swap comes first, as for every switch.
            if let Some(conflict) = stale(state, if_generation) {
                return conflict;
            }
            if !state.file.has_pool(&to) {
                return refuse(state, unknown_pool(state, to));
            }
            match weight.map(|w| split_route(state, &to, w)) {
                None => switch(state, Route::to(to), if_generation, Source::Admin, force),
                Some(Ok(route)) => switch(state, route, if_generation, Source::Admin, force),
                Some(Err(e)) => refuse(state, e),
            }
        }
        Event::Outcomes {
            generation,
            requests,
            errors,
        } => outcomes(state, generation, requests, errors),
        Event::WindowOver { generation } => {
            let mut next = state.clone();
            if next.window.as_ref().is_some_and(|w| w.generation == generation) {
                next.window = None;
                next.rollback_blocked = None;
            }
            settle(state, next, None, Reply::Nothing)
        }
        Event::Rollback { if_generation, force } => match &state.previous {
            None => refuse(state, SwitchError::NothingToRollBack),
            Some(previous) => switch(state, previous.clone(), if_generation, Source::Rollback, force),
        },
        Event::Persisted { route, result } => persisted(state, route, result),
        Event::Readiness(ready) => readiness(state, ready),
    }
}

fn unknown_pool(state: &ControlState, pool: String) -> SwitchError {
    let known = state.file.pools.iter().map(|(n, _)| n.clone()).collect();
    SwitchError::UnknownPool { pool, known }
}

/// The route of `POST /switch {"to": to, "weight": w}`: `to` gets `w`, the
/// rest goes to the pool with the largest share of the route in force other
/// than `to` (ties: the active one); when the route in force sends
/// everything to `to`, the rest goes back to `previous`'s active pool.
/// `w = 100` ends the split on `to`, `w = 0` sends everything to the other.
pub fn split_route(state: &ControlState, to: &str, w: u8) -> Result<Route, SwitchError> {
    if w > 100 {
        return Err(SwitchError::BadWeight(format!(
            "weight {w} is not a share (0-100)"
        )));
    }
    let route = &state.route;
    let mut others: Vec<(&str, u8)> = route
        .pools()
        .into_iter()
        .filter(|p| *p != to)
        .map(|p| (p, route.weight(p)))
        .collect();
    // The largest share first; the active pool wins a tie.
    others.sort_by_key(|(p, w)| (std::cmp::Reverse(*w), *p != route.active));
    let rest = match others.first() {
        Some((p, _)) => (*p).to_string(),
        None => match state.previous.as_ref().filter(|p| p.active != to) {
            Some(p) => p.active.clone(),
            None => {
                return Err(SwitchError::BadWeight(format!(
                    "weight {w}: `{to}` already gets every request and there is no other pool to give the rest to \
                     (switch to the other pool with the share it keeps, e.g. {{\"to\":\"blue\",\"weight\":{}}})",
                    100 - w
                )))
            }
        },
    };
    Ok(Route::split(
        [(to.to_string(), w), (rest, 100 - w)],
        &route.active,
    ))
}

/// The outcome of a switch as the admin API answers it.
fn outcome(changed: bool, from: &Route, to: &Route, generation: u64, source: Source) -> SwitchOutcome {
    SwitchOutcome {
        changed,
        active: to.active.clone(),
        previous: from.active.clone(),
        generation,
        source: source.as_str(),
        split: to.is_split().then(|| to.split.iter().cloned().collect()),
    }
}

/// A forward switch from `from` opens the automatic-rollback window (when
/// the file has `[rollback]`) on the pools whose share it raised. Call it
/// once `next.generation` is the new table's.
fn open_window(next: &mut ControlState, from: &Route) {
    next.rollback_blocked = None;
    let pools: Vec<String> = next
        .route
        .pools()
        .into_iter()
        .filter(|p| next.route.weight(p) > from.weight(p))
        .map(str::to_string)
        .collect();
    next.window = (next.file.rollback.is_some() && !pools.is_empty()).then_some(Window {
        pools,
        generation: next.generation,
    });
}

/// The error-rate rows: past `max_error_rate` with at least `min_requests`
/// in an open window, the previous route comes back as an `auto` override
/// (if its pools are ready; else nothing switches and `/status` says why).
fn outcomes(state: &ControlState, generation: u64, requests: u64, errors: u64) -> Decision {
    let nothing = || settle(state, state.clone(), None, Reply::Nothing);
    let (Some(window), Some(rules)) = (state.window.as_ref(), state.file.rollback.as_ref()) else {
        return nothing();
    };
    if window.generation != generation || !rules.past(requests, errors) {
        return nothing();
    }
    let mut reason = format!(
        "automatic rollback: {} answered {errors} errors in {requests} requests ({:.1} %, max_error_rate {} %) \
         within the window of generation {generation}",
        window.pools.join(", "),
        errors as f64 * 100.0 / requests.max(1) as f64,
        rules.max_error_percent()
    );
    let mut next = state.clone();
    let Some(previous) = state.previous.clone() else {
        reason.push_str("; nothing to roll back to: no switch");
        next.rollback_blocked = Some(reason);
        return settle(state, next, None, Reply::Nothing);
    };
    if let Err(why) = state.gate_route(&state.route, &previous) {
        reason.push_str(&format!("; no switch to {}: {why}", previous.describe()));
        next.rollback_blocked = Some(reason);
        return settle(state, next, None, Reply::Nothing);
    }
    reason.push_str(&format!(" -> back to {}", previous.describe()));
    next.overridden = Some(Override {
        route: previous.clone(),
        source: Source::Auto,
        reason: Some(reason),
    });
    next.previous = None;
    next.route = previous;
    next.pending = None;
    next.window = None;
    next.rollback_blocked = None;
    next.generation = state.generation + 1;
    next.source = Source::Auto;
    settle(state, next, None, Reply::Nothing)
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
    // `next` is a clone of the state decided on: its generation is the old one.
    next.generation += 1;
    next.source = Source::File;
    open_window(next, from);
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
    let file_route = file.route();
    let target = file_route.clone();
    let new_route = file_route != state.file.route();
    if !new_route {
        if let Some((o, pool)) = state.overridden.as_ref().and_then(|o| {
            o.route
                .pools()
                .into_iter()
                .find(|p| !file.has_pool(p))
                .map(|p| (o, p))
        }) {
            return reject(
                state,
                format!(
                    "the file no longer defines pool `{pool}`, where the override ({}) sends traffic; \
                     switch away from it first, or change `active` in the file",
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
    // Set first: a switch below opens its window with this file's `[rollback]`.
    next.file = file.clone();
    if new_route {
        // A new route in the file is a newer intent than an override or a
        // pending switch.
        if target == state.route {
            // The route in force already (an override made it, or the file
            // goes back while its switch was pending): the file now says it.
            next.overridden = None;
            next.persist_error = None;
            next.pending = None;
        } else if file.force || state.gate_route(&state.route, &target).is_ok() {
            file_switch(&mut next, &state.route, target);
        } else if let Some(gone) = state.route.pools().into_iter().find(|p| !file.has_pool(p)) {
            // Pending would leave traffic on a pool the file removes.
            let reason = state.gate_route(&state.route, &target).err().unwrap_or_default();
            return reject(
                state,
                format!(
                    "the file no longer defines pool `{gone}`, which serves the traffic, and the switch to `{}` \
                     cannot apply yet ({reason}); keep `{gone}` until the switch is done, or set force = true",
                    target.describe()
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
    if next.route != state.route || pools_changed {
        next.generation = state.generation + 1;
        next.source = Source::File;
    }
    let generation = next.generation;
    let outcome = match &next.pending {
        Some(p) => ReloadOutcome::Pending {
            generation,
            reason: next.gate_route(&next.route, p).err().unwrap_or_default(),
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

/// The compare-and-swap: a switch that names a generation other than the
/// current one is refused (409) before anything else is looked at.
fn stale(state: &ControlState, if_generation: Option<u64>) -> Option<Decision> {
    let expected = if_generation.filter(|g| *g != state.generation)?;
    Some(refuse(
        state,
        SwitchError::Conflict {
            expected,
            current: state.generation,
        },
    ))
}

fn switch(
    state: &ControlState,
    to: Route,
    if_generation: Option<u64>,
    source: Source,
    force: bool,
) -> Decision {
    if let Some(conflict) = stale(state, if_generation) {
        return conflict;
    }
    if let Some(pool) = to.pools().into_iter().find(|p| !state.file.has_pool(p)) {
        let pool = pool.to_string();
        return refuse(state, unknown_pool(state, pool));
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
                reason: None,
            });
            persist = state.persist.then(|| to.clone());
        }
        let outcome = outcome(false, &to, &to, state.generation, state.source);
        return settle(state, next, persist, Reply::Switch(Ok(outcome)));
    }
    if !force {
        if let Err(reason) = state.gate_route(&state.route, &to) {
            return refuse(state, SwitchError::NotReady(reason));
        }
    }
    let mut next = state.clone();
    next.overridden = Some(Override {
        route: to.clone(),
        source,
        reason: None,
    });
    // A rollback consumes `previous`: a second one has nothing to go back to.
    next.previous = (source != Source::Rollback).then(|| state.route.clone());
    next.route = to.clone();
    next.pending = None;
    next.generation = state.generation + 1;
    next.source = source;
    // An admin switch opens the automatic-rollback window; a rollback
    // closes it (so traffic cannot flip back and forth by itself).
    if source == Source::Rollback {
        next.window = None;
        next.rollback_blocked = None;
    } else {
        open_window(&mut next, &state.route);
    }
    let outcome = outcome(true, &state.route, &to, next.generation, source);
    let persist = state.persist.then_some(to);
    settle(state, next, persist, Reply::Switch(Ok(outcome)))
}

/// New readiness facts: shown in `/status`, and a pending file switch
/// whose pool is now ready applies (as the file switch it is).
fn readiness(state: &ControlState, ready: BTreeMap<String, Readiness>) -> Decision {
    let mut next = state.clone();
    next.ready = ready;
    if let Some(pending) = state.pending.clone() {
        if next.gate_route(&state.route, &pending).is_ok() {
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
            next.file.active = route.active.clone();
            next.file.split = route.is_split().then(|| route.split.clone());
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
