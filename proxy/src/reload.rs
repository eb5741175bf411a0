//! The single writer: every change of the routing table — a file reload, an
//! admin switch, a rollback — is a [`Command`] to the one task that builds
//! the new table, stores it, and answers with a typed outcome. With one
//! writer a plain `store()` is enough, and an answer is sent only once the
//! new table is live.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config;
use crate::error::ConfigError;
use crate::table::{Desired, RoutingTable, Source};
use crate::Shared;

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
        /// Who asked (for the audit line).
        who: String,
        /// The answer, once the new table is live.
        reply: oneshot::Sender<Result<SwitchOutcome, SwitchError>>,
    },
    /// `POST /rollback`.
    Rollback {
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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

/// What `/status` shows beyond the table; written by the writer only.
#[derive(Debug, Clone, Default)]
pub struct ControlStatus {
    /// The pool active before the last switch, until a rollback consumes it.
    pub previous: Option<String>,
    /// Whether an admin switch overrides the file's `active`.
    pub overridden: bool,
    /// The last rejected reload's errors, cleared by the next applied one.
    pub last_reload_error: Option<String>,
}

/// Hash of an upstreams file's bytes, to tell an applied content from a new one.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The writer task's state.
pub struct Writer {
    shared: Arc<Shared>,
    path: PathBuf,
    /// The last applied file.
    desired: Desired,
    /// Hash of the last applied (or persisted) file content.
    applied_hash: u64,
    /// An admin switch on top of the file's `active`.
    override_active: Option<String>,
    /// The pool active before the last switch; consumed by a rollback.
    previous: Option<String>,
    persist: bool,
}

impl Writer {
    /// The writer for a table already stored in `shared` from `desired`.
    pub fn new(
        shared: Arc<Shared>,
        path: PathBuf,
        desired: Desired,
        applied_hash: u64,
        persist: bool,
    ) -> Writer {
        Writer {
            shared,
            path,
            desired,
            applied_hash,
            override_active: None,
            previous: None,
            persist,
        }
    }

    /// Runs until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Switch {
                    to,
                    if_generation,
                    who,
                    reply,
                } => {
                    let r = self.switch(&to, if_generation, Source::Admin, &who);
                    let _ = reply.send(r);
                }
                Command::Rollback {
                    if_generation,
                    who,
                    reply,
                } => {
                    let r = match self.previous.clone() {
                        None => {
                            tracing::info!(target: "switchyard::audit", client = %who, action = "rollback", result = "409", "nothing to roll back to");
                            Err(SwitchError::NothingToRollBack)
                        }
                        Some(to) => self.switch(&to, if_generation, Source::Rollback, &who),
                    };
                    let _ = reply.send(r);
                }
                Command::Reload { cause, reply } => {
                    let r = self.reload(cause);
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                }
            }
        }
    }

    fn publish_status(&self, last_reload_error: Option<Option<String>>) {
        let mut s = self
            .shared
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.previous = self.previous.clone();
        s.overridden = self.override_active.is_some();
        if let Some(e) = last_reload_error {
            s.last_reload_error = e;
        }
    }

    /// Builds and stores a table for `self.desired` with `active`.
    fn store(&self, active: &str, source: Source) -> u64 {
        let began = Instant::now();
        let old = self.shared.table.load_full();
        let from = old.active_pool().name.clone();
        let changed_active = from != active;
        let generation = old.generation + 1;
        let switched_at = if changed_active {
            SystemTime::now()
        } else {
            old.switched_at
        };
        let table = RoutingTable::build(
            &self.desired,
            active,
            generation,
            source,
            switched_at,
            Some(&old),
            &self.shared.metrics,
        );
        self.shared.table.store(Arc::new(table));
        let took = began.elapsed();
        if changed_active {
            let m = &self.shared.metrics;
            m.switched(source.as_str());
            let secs = switched_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            m.last_switch.set(secs as i64);
        }
        tracing::info!(
            from = %from,
            to = %active,
            source = source.as_str(),
            generation,
            swap_us = took.as_micros() as u64,
            "routing table stored"
        );
        generation
    }

    fn switch(
        &mut self,
        to: &str,
        if_generation: Option<u64>,
        source: Source,
        who: &str,
    ) -> Result<SwitchOutcome, SwitchError> {
        let action = if source == Source::Rollback {
            "rollback"
        } else {
            "switch"
        };
        let current = self.shared.table.load_full();
        let before = current.active_pool().name.clone();
        let refuse = |e: SwitchError| {
            tracing::info!(target: "switchyard::audit", client = %who, action, to, active = %before, generation = current.generation, error = %e, "refused");
            Err(e)
        };
        if let Some(expected) = if_generation {
            if expected != current.generation {
                return refuse(SwitchError::Conflict {
                    expected,
                    current: current.generation,
                });
            }
        }
        if !self.desired.has_pool(to) {
            let known = self.desired.pools.iter().map(|(n, _)| n.clone()).collect();
            return refuse(SwitchError::UnknownPool {
                pool: to.to_string(),
                known,
            });
        }
        if before == to {
            tracing::info!(target: "switchyard::audit", client = %who, action, to, active = %before, generation = current.generation, "already active");
            return Ok(SwitchOutcome {
                changed: false,
                active: before.clone(),
                previous: before,
                generation: current.generation,
                source: current.source.as_str(),
            });
        }
        self.override_active = Some(to.to_string());
        self.previous = if source == Source::Rollback {
            None
        } else {
            Some(before.clone())
        };
        let generation = self.store(to, source);
        if self.persist {
            match persist_active(&self.path, to) {
                Ok(hash) => {
                    // The file now says what the table does: no override, and
                    // the watcher will find this content already applied.
                    self.applied_hash = hash;
                    self.desired.active = to.to_string();
                    self.override_active = None;
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, "could not persist the switch; it stays an override")
                }
            }
        }
        self.publish_status(None);
        tracing::info!(target: "switchyard::audit", client = %who, action, from = %before, to, generation, "applied");
        Ok(SwitchOutcome {
            changed: true,
            active: to.to_string(),
            previous: before,
            generation,
            source: source.as_str(),
        })
    }

    fn reload(&mut self, cause: Cause) -> ReloadOutcome {
        let m = &self.shared.metrics;
        let bytes = match config::read_upstreams(&self.path) {
            Ok(b) => b,
            Err(e) => return self.reject(cause, vec![e]),
        };
        let hash = content_hash(&bytes);
        if hash == self.applied_hash {
            m.reload("unchanged");
            self.publish_status(Some(None));
            return ReloadOutcome::Unchanged;
        }
        let desired = match Desired::parse(&self.path, &bytes) {
            Ok(d) => d,
            Err(errors) => return self.reject(cause, errors),
        };
        self.applied_hash = hash;
        if desired == self.desired {
            m.reload("unchanged");
            self.publish_status(Some(None));
            return ReloadOutcome::Unchanged;
        }
        // A new `active` in the file is a newer intent than an admin override.
        if desired.active != self.desired.active {
            self.override_active = None;
        }
        if let Some(o) = &self.override_active {
            if !desired.has_pool(o) {
                tracing::warn!(pool = %o, "the file removed the overriding pool; the file's active applies");
                self.override_active = None;
            }
        }
        let active = self
            .override_active
            .clone()
            .unwrap_or_else(|| desired.active.clone());
        self.desired = desired;
        let before = self.shared.table.load().active_pool().name.clone();
        if before != active {
            self.previous = Some(before);
        }
        let generation = self.store(&active, Source::File);
        m.reload("ok");
        self.publish_status(Some(None));
        tracing::info!(file = %self.path.display(), ?cause, generation, "upstreams file applied");
        ReloadOutcome::Applied { generation }
    }

    fn reject(&mut self, cause: Cause, errors: Vec<ConfigError>) -> ReloadOutcome {
        let msg = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        self.shared.metrics.reload("error");
        tracing::error!(?cause, error = %msg, "upstreams file rejected; the current table stays");
        self.publish_status(Some(Some(msg.clone())));
        ReloadOutcome::Rejected(msg)
    }
}

/// Rewrites `active = "<to>"` in the upstreams file, keeping comments and
/// layout (toml_edit), through a temp file renamed over it. Returns the hash
/// of what was written.
pub fn persist_active(path: &Path, to: &str) -> Result<u64, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}")))?;
    let decor = doc
        .get("active")
        .and_then(|i| i.as_value())
        .map(|v| v.decor().clone());
    let mut value = toml_edit::Value::from(to);
    if let Some(d) = decor {
        *value.decor_mut() = d;
    }
    doc["active"] = toml_edit::Item::Value(value);
    let out = doc.to_string();
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.switchyard-tmp"));
    std::fs::write(&tmp, out.as_bytes())?;
    std::fs::rename(&tmp, path)?;
    Ok(content_hash(out.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persist_keeps_comments_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("upstreams.toml");
        let text = "# the cut-over file\nactive = \"blue\"   # flip me\n\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"] # b\n";
        std::fs::write(&p, text).unwrap();
        let hash = persist_active(&p, "green").unwrap();
        let after = std::fs::read_to_string(&p).unwrap();
        assert_eq!(after, text.replace("\"blue\"   #", "\"green\"   #"));
        assert_eq!(hash, content_hash(after.as_bytes()));
    }
}
