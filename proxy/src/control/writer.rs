//! The single writer: every change of the routing table — a file reload,
//! an admin switch, a rollback — is a [`Command`] to the one task that
//! turns it into an [`Event`], asks [`decide`] what to do, and does it:
//! builds and stores the table, publishes the metrics after the store,
//! writes the audit line, persists, and answers. With one writer a plain
//! `store()` is enough, and an answer is sent only once the new table is
//! live. This module holds no rule of its own.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::decide::{
    decide, ControlState, Decision, Event, FileRead, ReloadOutcome, Reply, Route, Store, SwitchError,
    SwitchOutcome, Written,
};
use super::Routes;
use crate::config;
use crate::metrics::Metrics;
use crate::pool::Inflight;
use crate::table::{Desired, Resolved, RoutingTable, Spec};

/// Why the upstreams file is being re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A file-system event in its directory.
    Event,
    /// The periodic re-read.
    Periodic,
    /// SIGHUP or [`crate::Reloader::reload`].
    Signal,
}

/// A request to the writer.
#[derive(Debug)]
pub enum Command {
    /// `POST /switch`.
    Switch {
        /// Target pool.
        to: String,
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
        /// Switch even if the pool is not ready.
        force: bool,
        /// A split: the share (0-100) of `to`.
        weight: Option<u8>,
        /// Who asked (for the audit line).
        who: String,
        /// The answer, once the new table is live.
        reply: oneshot::Sender<Result<SwitchOutcome, SwitchError>>,
    },
    /// `POST /rollback`.
    Rollback {
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
        /// Roll back even if the previous pool is not ready.
        force: bool,
        /// Who asked (for the audit line).
        who: String,
        /// The answer.
        reply: oneshot::Sender<Result<SwitchOutcome, SwitchError>>,
    },
    /// Re-read the upstreams file.
    Reload {
        /// Why.
        cause: Cause,
        /// The answer, when someone waits for it.
        reply: Option<oneshot::Sender<ReloadOutcome>>,
    },
    /// Discovery: the DNS name `name` (`name:port`, as written) now
    /// resolves to `addrs` (empty: no address). The pools that use it get
    /// a new table with the same generation.
    Resolved {
        /// The name, as written in the file.
        name: String,
        /// Its addresses, sorted.
        addrs: Vec<std::net::SocketAddr>,
    },
    /// Endpoint health changed (sent by the health task; discovery's
    /// address changes do the same inside the writer): the health series
    /// are published again and each pool's readiness recomputed, which may
    /// apply a pending file switch. Not intent: the generation stays.
    HealthChanged,
}

/// Hash of an upstreams file's bytes, to tell an applied content from a new one.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The writer task: the control state, and where to carry out decisions.
pub struct Writer {
    /// Where the tables go (shared with the data plane, which only loads).
    routes: Arc<Routes>,
    /// The proxy's metrics, published after each store.
    metrics: Arc<Metrics>,
    path: PathBuf,
    state: ControlState,
    /// What the pools' DNS names last resolved to (discovery's results).
    resolved: Resolved,
    /// Pools switched away from that still have requests in flight, with
    /// when the switch was stored: checked every [`drain_pause`] until each
    /// is drained (its `drained_at` set, `drain_seconds` observed).
    draining: Vec<(Arc<Inflight>, Instant)>,
    /// The open automatic-rollback window as the writer counts it.
    watch: Option<Watch>,
}

/// The writer's side of an open automatic-rollback window: the counts of
/// its pools when it opened, and when it ends. Evaluated every
/// [`EVALUATE_EVERY`] (see [`Writer::evaluate`]).
struct Watch {
    /// The window's generation (as in [`super::decide::Window`]).
    generation: u64,
    /// The in-flight records of its pools: they carry the outcome counts.
    pools: Vec<Arc<Inflight>>,
    /// `(answered, errors)` summed over `pools` when it opened.
    baseline: (u64, u64),
    /// When `[rollback] window` has passed.
    until: Instant,
    /// When it was last evaluated (the drain checks also wake the writer:
    /// the window is evaluated at most every [`EVALUATE_EVERY`]).
    evaluated: Instant,
}

/// How often the writer evaluates an open automatic-rollback window: the
/// bound on how late the rollback comes once the threshold is passed.
pub const EVALUATE_EVERY: Duration = Duration::from_millis(100);

/// How long the writer waits before it checks the draining pools again:
/// 2 ms at first, then a fiftieth of the drain so far (at most 250 ms), so
/// `drain_seconds` and `drained_at` are within about 2 % of the truth
/// without waking every 2 ms through an hour-long tunnel.
fn drain_pause(since: Instant) -> Duration {
    (since.elapsed() / 50).clamp(Duration::from_millis(2), Duration::from_millis(250))
}

impl Writer {
    /// The writer for the table already stored in `routes` from `state`
    /// (the start: the file's route applies without the gate). It computes
    /// each pool's readiness from that table at once, so `/status` and
    /// `pool_ready` show it from the first answer.
    pub fn new(routes: Arc<Routes>, metrics: Arc<Metrics>, path: PathBuf, state: ControlState) -> Writer {
        let mut writer = Writer {
            routes,
            metrics,
            path,
            state,
            resolved: Resolved::new(),
            draining: Vec::new(),
            watch: None,
        };
        writer.recheck_readiness();
        writer.check_drains();
        writer
    }

    /// The same, with what the DNS names resolved to at start.
    pub fn with_resolved(mut self, resolved: Resolved) -> Writer {
        self.resolved = resolved;
        self
    }

    /// Marks the pools that a stored table switched away from as draining
    /// and the one it made active as not drained.
    fn track_drains(&mut self, old: &RoutingTable, new: &RoutingTable) {
        let now = Instant::now();
        let serving: Vec<&Arc<Inflight>> = (0..new.pools.len())
            .filter(|i| new.serves(*i))
            .map(|i| &new.pools[i].inflight)
            .collect();
        for s in &serving {
            s.set_drained_at(None);
        }
        self.draining
            .retain(|(i, _)| !serving.iter().any(|s| Arc::ptr_eq(i, s)));
        for (j, left) in old.pools.iter().enumerate() {
            if !old.serves(j) || serving.iter().any(|s| Arc::ptr_eq(s, &left.inflight)) {
                continue;
            }
            left.inflight.set_drained_at(None);
            if !self.draining.iter().any(|(i, _)| Arc::ptr_eq(i, &left.inflight)) {
                self.draining.push((Arc::clone(&left.inflight), now));
            }
        }
    }

    /// Records each draining pool that now has nothing in flight (tunnels
    /// included) as drained, and gives every inactive pool that never was
    /// active (at start, or new in a file) its `drained_at`.
    fn check_drains(&mut self) {
        let now = SystemTime::now();
        let metrics = &self.metrics;
        self.draining.retain(|(inflight, since)| {
            if inflight.get() > 0 {
                return true;
            }
            inflight.set_drained_at(Some(now));
            metrics.drain_seconds.observe(since.elapsed().as_secs_f64());
            false
        });
        let table = self.routes.load();
        for (i, p) in table.pools.iter().enumerate() {
            if !table.serves(i)
                && p.inflight.drained_at().is_none()
                && p.inflight() <= 0
                && !self.draining.iter().any(|(d, _)| Arc::ptr_eq(d, &p.inflight))
            {
                p.inflight.set_drained_at(Some(now));
            }
        }
    }

    /// The next command; while a pool drains, the drains are checked every
    /// [`drain_pause`] in between. None once every sender is gone.
    async fn next(&mut self, rx: &mut mpsc::Receiver<Command>) -> Option<Command> {
        loop {
            let drain = self.draining.iter().map(|(_, t)| drain_pause(*t)).min();
            let evaluate = self
                .watch
                .as_ref()
                .map(|w| EVALUATE_EVERY.saturating_sub(w.evaluated.elapsed()));
            let Some(pause) = drain.into_iter().chain(evaluate).min() else {
                return rx.recv().await;
            };
            tokio::select! {
                cmd = rx.recv() => return cmd,
                () = tokio::time::sleep(pause) => {
                    self.check_drains();
                    self.evaluate();
                }
            }
        }
    }

    /// Runs until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = self.next(&mut rx).await {
            match cmd {
                Command::Switch {
                    to,
                    if_generation,
                    force,
                    weight,
                    who,
                    reply,
                } => {
                    let asked = match weight {
                        Some(w) => format!("switch to {to} with weight {w}"),
                        None => format!("switch to {to}"),
                    };
                    let event = Event::Switch {
                        to,
                        if_generation,
                        force,
                        weight,
                    };
                    let r = self.switch(event, &who, &asked, force);
                    self.recheck_readiness();
                    let _ = reply.send(r);
                }
                Command::Rollback {
                    if_generation,
                    force,
                    who,
                    reply,
                } => {
                    let event = Event::Rollback { if_generation, force };
                    let r = self.switch(event, &who, "rollback", force);
                    self.recheck_readiness();
                    let _ = reply.send(r);
                }
                Command::Reload { cause, reply } => {
                    let r = self.reload(cause);
                    // A file that made a pool ready has its pending switch
                    // applied before the answer.
                    self.recheck_readiness();
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                }
                Command::Resolved { name, addrs } => self.resolved(name, addrs),
                Command::HealthChanged => self.health_changed(),
            }
            self.check_drains();
        }
    }

    /// Recomputes each pool's readiness from the stored table and, when it
    /// changed, decides it (which may apply a pending file switch). Runs
    /// after every command, before its answer, so a file that changes a
    /// pool's endpoints or `min_healthy` is followed by the readiness of the
    /// table it stored.
    fn recheck_readiness(&mut self) {
        // A pending switch applied stores a table with the same pools, so
        // the second round finds nothing new; the bound is a guard.
        for _ in 0..4 {
            let ready = self.routes.load().readiness(&self.state.file);
            if ready == self.state.ready {
                return;
            }
            let before = self.state.route.clone();
            let pending = self.state.pending.clone();
            self.execute(Event::Readiness(ready));
            if self.state.route != before {
                if let Some(p) = pending {
                    tracing::info!(
                        from = %before.active,
                        to = %p.active,
                        generation = self.state.generation,
                        "pool ready: the pending file switch is applied"
                    );
                }
            }
        }
    }

    /// A DNS name resolved to another address set: the same table (route,
    /// generation, source, facts) with the pools that use it rebuilt;
    /// endpoints that stay keep their state and connections.
    fn resolved(&mut self, name: String, addrs: Vec<std::net::SocketAddr>) {
        if self.resolved.get(&name) == Some(&addrs) {
            return;
        }
        self.resolved.insert(name.clone(), addrs.clone());
        let old = self.routes.load_full();
        let table = RoutingTable::build(
            &Spec {
                file: &self.state.file,
                active: &self.state.route.active,
                split: &self.state.route.split,
                generation: old.generation,
                source: old.source,
                switched_at: old.switched_at,
                pending_since: old.pending_since,
                facts: old.facts.clone(),
                resolved: &self.resolved,
            },
            Some(&old),
            &self.metrics,
        );
        let table = Arc::new(table);
        self.routes.store(Arc::clone(&table));
        table.publish(Some(&old), &self.metrics);
        tracing::info!(%name, ?addrs, generation = table.generation, "discovered addresses applied");
        self.health_changed();
    }

    /// Health or an address set changed: the health series are published
    /// from the stored table, and readiness is recomputed (a pool turning
    /// ready applies a pending file switch).
    fn health_changed(&mut self) {
        self.routes.load().publish_health();
        self.recheck_readiness();
    }

    fn switch(
        &mut self,
        event: Event,
        who: &str,
        asked: &str,
        force: bool,
    ) -> Result<SwitchOutcome, SwitchError> {
        let before = self.state.route.describe();
        let generation = self.state.generation;
        let cancels = self.state.pending.as_ref().map(|p| p.active.clone());
        let r = match self.execute(event) {
            Reply::Switch(r) => r,
            other => unreachable!("a switch is answered with a switch outcome, not {other:?}"),
        };
        let cancelled = match (&cancels, &self.state.pending) {
            (Some(p), None) => p.as_str(),
            _ => "",
        };
        match &r {
            Ok(o) if o.changed => {
                let to = self.state.route.describe();
                tracing::info!(target: "switchyard::audit", client = %who, action = asked, forced = force, from = %before, to = %to, generation = o.generation, cancelled_pending = cancelled, "applied")
            }
            Ok(_) => {
                tracing::info!(target: "switchyard::audit", client = %who, action = asked, forced = force, active = %before, generation, cancelled_pending = cancelled, "already active")
            }
            Err(e) => {
                tracing::info!(target: "switchyard::audit", client = %who, action = asked, forced = force, active = %before, generation, error = %e, "refused")
            }
        }
        r
    }

    fn reload(&mut self, cause: Cause) -> ReloadOutcome {
        let read = match config::read_upstreams(&self.path) {
            Err(e) => FileRead::Unreadable(e.to_string()),
            Ok(bytes) => FileRead::Read {
                hash: content_hash(&bytes),
                text: String::from_utf8_lossy(&bytes).into(),
                parsed: Desired::parse(&self.path, &bytes).map_err(|errors| config::one_line(&errors)),
            },
        };
        let outcome = match self.execute(Event::FileRead(read)) {
            Reply::Reload(o) => o,
            other => unreachable!("a file read is answered with a reload outcome, not {other:?}"),
        };
        self.metrics.reload(outcome.label());
        match &outcome {
            ReloadOutcome::Applied { generation } => {
                tracing::info!(file = %self.path.display(), ?cause, generation, "upstreams file applied")
            }
            ReloadOutcome::Pending { generation, reason } => {
                tracing::warn!(
                    file = %self.path.display(), ?cause, generation, active = %self.state.file.active, %reason,
                    "upstreams file applied, but its switch is pending until the pool is ready (force = true skips the gate)"
                )
            }
            ReloadOutcome::Rejected(error) => {
                tracing::error!(?cause, %error, "upstreams file rejected; the current table stays")
            }
            ReloadOutcome::Unchanged => {}
        }
        outcome
    }

    /// Decides `event` and carries the decision out; a persist it asks for
    /// is done, and its result decided, before the answer is returned.
    fn execute(&mut self, event: Event) -> Reply {
        let decision = decide(&self.state, event);
        let persist = decision.persist.clone();
        let reply = decision.reply.clone();
        self.carry_out(decision);
        if let Some(route) = persist {
            let result = persist_route(&self.path, self.state.file_hash, &self.state.file_text, &route)
                .map_err(|e| {
                    tracing::error!(file = %self.path.display(), error = %e, "could not persist the switch; it stays an override");
                    e.to_string()
                });
            let decision = decide(&self.state, Event::Persisted { route, result });
            self.carry_out(decision);
        }
        reply
    }

    /// Stores what the decision says, publishes the metrics after the store,
    /// and takes the next state.
    fn carry_out(&mut self, decision: Decision) {
        let Decision { next, store, .. } = decision;
        let routes = &self.routes;
        let pending_since = match (&self.state.pending, &next.pending) {
            (_, None) => None,
            (Some(a), Some(b)) if a == b => routes.load().pending_since,
            (_, Some(_)) => Some(SystemTime::now()),
        };
        match store {
            Store::Nothing => {}
            Store::Facts => {
                let old = routes.load_full();
                let table = Arc::new(old.with_facts(next.facts(), pending_since));
                routes.store(Arc::clone(&table));
                table.publish(Some(&old), &self.metrics);
            }
            Store::Table => {
                let began = Instant::now();
                let old = routes.load_full();
                let moved = next.route != self.state.route;
                let switched_at = if moved { SystemTime::now() } else { old.switched_at };
                let table = RoutingTable::build(
                    &Spec {
                        file: &next.file,
                        active: &next.route.active,
                        split: &next.route.split,
                        generation: next.generation,
                        source: next.source,
                        switched_at,
                        pending_since,
                        facts: next.facts(),
                        resolved: &self.resolved,
                    },
                    Some(&old),
                    &self.metrics,
                );
                let table = Arc::new(table);
                routes.store(Arc::clone(&table));
                let took = began.elapsed();
                table.publish(Some(&old), &self.metrics);
                self.track_drains(&old, &table);
                if moved {
                    let m = &self.metrics;
                    m.switched(next.source.as_str());
                    let secs = switched_at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    m.last_switch.set(i64::try_from(secs).unwrap_or(i64::MAX));
                }
                tracing::info!(
                    from = %self.state.route.describe(),
                    to = %next.route.describe(),
                    source = next.source.as_str(),
                    generation = next.generation,
                    swap_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                    "routing table stored"
                );
            }
        }
        self.state = next;
        self.follow_window();
    }

    /// Starts counting a window the state just opened (the counts of its
    /// pools now are its baseline), or stops counting one it closed.
    fn follow_window(&mut self) {
        let Some(window) = &self.state.window else {
            self.watch = None;
            return;
        };
        if self
            .watch
            .as_ref()
            .is_some_and(|w| w.generation == window.generation)
        {
            return;
        }
        let table = self.routes.load();
        let pools: Vec<Arc<Inflight>> = window
            .pools
            .iter()
            .filter_map(|name| table.pool(name))
            .map(|p| Arc::clone(&p.inflight))
            .collect();
        let length = self.state.file.rollback.map(|r| r.window).unwrap_or_default();
        self.watch = Some(Watch {
            generation: window.generation,
            baseline: sum_outcomes(&pools),
            pools,
            until: Instant::now() + length,
            evaluated: Instant::now(),
        });
        tracing::info!(
            pools = %window.pools.join(", "),
            generation = window.generation,
            window = ?length,
            "automatic rollback: watching the new pool's error rate"
        );
    }

    /// Evaluates the open window: its end once `[rollback] window` passed,
    /// else the counts since it opened go to `decide` (which switches back
    /// past the threshold). Runs every [`EVALUATE_EVERY`] while a window is
    /// open, so a rollback comes at most that long after the count that
    /// passed the threshold.
    fn evaluate(&mut self) {
        let Some(watch) = &mut self.watch else {
            return;
        };
        if watch.evaluated.elapsed() < EVALUATE_EVERY {
            return;
        }
        watch.evaluated = Instant::now();
        let generation = watch.generation;
        if Instant::now() >= watch.until {
            tracing::info!(
                generation,
                "automatic rollback: the window closed without a rollback"
            );
            self.execute(Event::WindowOver { generation });
            return;
        }
        let (answered, errors) = sum_outcomes(&watch.pools);
        let requests = answered.saturating_sub(watch.baseline.0);
        let errors = errors.saturating_sub(watch.baseline.1);
        let before = self.state.route.clone();
        let blocked = self.state.rollback_blocked.clone();
        self.execute(Event::Outcomes {
            generation,
            requests,
            errors,
        });
        if self.state.route != before {
            let reason = self
                .state
                .overridden
                .as_ref()
                .and_then(|o| o.reason.clone())
                .unwrap_or_default();
            tracing::warn!(
                target: "switchyard::audit",
                client = "switchyard",
                action = "automatic rollback",
                from = %before.describe(),
                to = %self.state.route.describe(),
                generation = self.state.generation,
                %reason,
                "applied"
            );
            self.recheck_readiness();
        } else if self.state.rollback_blocked.is_some() && blocked.is_none() {
            tracing::error!(
                reason = self.state.rollback_blocked.as_deref().unwrap_or_default(),
                "automatic rollback due, but it cannot switch"
            );
        }
    }
}

/// `(answered, errors)` summed over `pools`.
fn sum_outcomes(pools: &[Arc<Inflight>]) -> (u64, u64) {
    pools.iter().fold((0, 0), |(a, e), p| {
        let (pa, pe) = p.outcomes();
        (a + pa, e + pe)
    })
}

/// Why persist wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The upstreams file is a symlink (a ConfigMap mount): a rename over it
    /// would break the kubelet's layout, and the mount is read-only anyway.
    #[error("{}: the upstreams file is a symlink (a ConfigMap mount?); not written", .0.display())]
    Symlink(PathBuf),
    /// The file on disk is not the content last accepted: it was edited (or
    /// is invalid) since; writing would launder that content.
    #[error(
        "{}: the file changed since it was last accepted (it is judged at the next read); not written",
        .0.display()
    )]
    Changed(PathBuf),
    /// The accepted content could not be edited (it always parsed as TOML).
    #[error("{}: cannot edit `active`: {reason}", file.display())]
    Edit {
        /// The upstreams file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading, writing, syncing or renaming failed.
    #[error("{}: {source}", file.display())]
    Io {
        /// The upstreams file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// `text` (an accepted upstreams file) with `active = "<pool>"`, comments
/// and layout kept (toml_edit); what [`persist_route`] writes. Pure.
pub fn set_active(text: &str, pool: &str) -> Result<String, toml_edit::TomlError> {
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    let decor = doc
        .get("active")
        .and_then(|i| i.as_value())
        .map(|v| v.decor().clone());
    let mut value = toml_edit::Value::from(pool);
    if let Some(d) = decor {
        *value.decor_mut() = d;
    }
    doc["active"] = toml_edit::Item::Value(value);
    Ok(doc.to_string())
}

/// `text` with the route `route`: `active`, and `[split] weights` set (a
/// split) or removed (none; an empty `[split]` goes with it, a
/// `sticky_cookie` stays). Comments and layout kept. Pure.
pub fn set_route(text: &str, route: &Route) -> Result<String, toml_edit::TomlError> {
    let text = set_active(text, &route.active)?;
    let mut doc: toml_edit::DocumentMut = text.parse()?;
    if route.is_split() {
        let mut weights = toml_edit::InlineTable::new();
        for (pool, w) in &route.split {
            weights.insert(pool, i64::from(*w).into());
        }
        if !doc.contains_table("split") {
            doc["split"] = toml_edit::table();
        }
        doc["split"]["weights"] = toml_edit::value(weights);
    } else if let Some(split) = doc.get_mut("split").and_then(|s| s.as_table_like_mut()) {
        split.remove("weights");
        if split.is_empty() {
            doc.remove("split");
        }
    }
    Ok(doc.to_string())
}

/// Rewrites `active = "<to>"` in the accepted content `accepted` (comments
/// and layout kept, with toml_edit) and writes it over the upstreams file —
/// only if the file on disk still hashes to `accepted_hash`, and never
/// through a symlink. The write is a temp file with the original's
/// permissions, fsync, rename over the file, fsync of the directory, so a
/// crash leaves the old file or the new one. Returns what was written.
pub fn persist_route(
    path: &Path,
    accepted_hash: u64,
    accepted: &str,
    to: &Route,
) -> Result<Written, PersistError> {
    use std::io::Write;
    let io = |source| PersistError::Io {
        file: path.to_path_buf(),
        source,
    };
    let edit = |reason: String| PersistError::Edit {
        file: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.file_type().is_symlink() {
        return Err(PersistError::Symlink(path.to_path_buf()));
    }
    let on_disk = config::read_upstreams(path).map_err(|e| edit(e.to_string()))?;
    if content_hash(&on_disk) != accepted_hash {
        return Err(PersistError::Changed(path.to_path_buf()));
    }
    let out = set_route(accepted, to).map_err(|e| edit(e.to_string()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.switchyard-tmp"));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(meta.permissions())?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(Written {
        hash: content_hash(out.as_bytes()),
        text: out.into(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const TEXT: &str =
        "# the cut-over file\nactive = \"blue\"   # flip me\n\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"] # b\n";

    fn accepted(dir: &Path) -> (PathBuf, u64) {
        let p = dir.join("upstreams.toml");
        std::fs::write(&p, TEXT).unwrap();
        (p, content_hash(TEXT.as_bytes()))
    }

    #[test]
    fn persist_keeps_comments_layout_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (p, hash) = accepted(dir.path());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let written = persist_route(&p, hash, TEXT, &Route::to("green")).unwrap();
        let after = std::fs::read_to_string(&p).unwrap();
        assert_eq!(after, TEXT.replace("\"blue\"   #", "\"green\"   #"));
        assert_eq!(
            (written.hash, &*written.text),
            (content_hash(after.as_bytes()), after.as_str())
        );
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(!dir.path().join(".upstreams.toml.switchyard-tmp").exists());
    }

    #[test]
    fn persist_edits_the_accepted_content_only_if_the_disk_still_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let (p, hash) = accepted(dir.path());
        // An edit since (here: a rejected file on disk) is never laundered.
        let edited = TEXT.replace("127.0.0.1:1", "");
        std::fs::write(&p, &edited).unwrap();
        let e = persist_route(&p, hash, TEXT, &Route::to("green")).unwrap_err();
        assert!(matches!(e, PersistError::Changed(_)), "{e}");
        assert!(
            e.to_string().contains("changed since it was last accepted"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), edited, "nothing written");
    }

    #[test]
    fn set_route_writes_and_removes_the_split() {
        let split = Route::split([("blue".into(), 90), ("green".into(), 10)], "blue");
        let out = set_route(TEXT, &split).unwrap();
        assert!(out.contains("active = \"blue\"   # flip me"), "{out}");
        let d = Desired::parse(
            Path::new("u.toml"),
            out.replace(
                "[pools.blue]",
                "[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n[pools.blue]",
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(d.route(), split, "{out}");
        let back = set_route(&out, &Route::to("green")).unwrap();
        assert!(!back.contains("split"), "{back}");
        assert!(back.contains("active = \"green\""), "{back}");
        let sticky =
            format!("{TEXT}[split]\nsticky_cookie = \"pool\"\nweights = {{ blue = 50, green = 50 }}\n");
        let kept = set_route(&sticky, &Route::to("blue")).unwrap();
        assert!(
            kept.contains("sticky_cookie") && !kept.contains("weights"),
            "{kept}"
        );
    }

    #[test]
    fn persist_never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (real, hash) = accepted(dir.path());
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = persist_route(&link, hash, TEXT, &Route::to("green")).unwrap_err();
        assert!(matches!(e, PersistError::Symlink(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&real).unwrap(), TEXT);
    }
}
