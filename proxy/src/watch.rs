//! The watcher only signals: it watches the upstreams file's *directory*
//! with `notify` (so editor renames and the kubelet's `..data` swap are seen,
//! where a watch on the file itself dies silently), debounces, and asks the
//! writer to re-read. It ignores `Access` events other than `Close(Write)`:
//! the writer's own reads open the file, and reloading on those loops.
//! SIGHUP asks for a re-read too. A periodic re-read backs the events up; a watcher error is logged and
//! the watch re-established, never a panic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::control::{Cause, Command};

/// Quiet time after the last event before re-reading.
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(10);
/// Longest wait after the first event of a burst.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(50);
/// Pause before re-establishing a failed watch.
const REWATCH_PAUSE: Duration = Duration::from_secs(1);

/// Whether an event can mean new content.
pub fn is_relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

enum Signal {
    Event,
    Failed(String),
}

/// The directory watched for a file.
fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn start_watch(dir: &Path, tx: mpsc::UnboundedSender<Signal>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
        let signal = match res {
            Ok(ev) if is_relevant(&ev.kind) => Signal::Event,
            Ok(_) => return,
            Err(e) => Signal::Failed(e.to_string()),
        };
        let _ = tx.send(signal);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// A watch on the upstreams file's directory, armed before the file is
/// first read (so no change between that read and the watch is missed).
pub struct Watch {
    file: PathBuf,
    watcher: Option<RecommendedWatcher>,
    tx: mpsc::UnboundedSender<Signal>,
    rx: mpsc::UnboundedReceiver<Signal>,
}

impl Watch {
    /// Arms the watch now. A failure is logged and retried by [`run`]; the
    /// periodic re-read covers the gap.
    pub fn arm(file: &Path) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let dir = dir_of(file);
        let watcher = match start_watch(&dir, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch; will retry (the periodic re-read still runs)");
                None
            }
        };
        Watch {
            file: file.to_path_buf(),
            watcher,
            tx,
            rx,
        }
    }
}

/// Watches `file`'s directory and sends `Reload` commands to the writer
/// until `stop`. `events` counts the relevant events seen (for tests).
pub async fn run(
    watch: Watch,
    reread: Duration,
    writer: mpsc::Sender<Command>,
    events: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let Watch {
        file,
        mut watcher,
        tx,
        mut rx,
    } = watch;
    let dir = dir_of(&file);
    let mut rewatch_at = if watcher.is_none() {
        Some(Instant::now() + REWATCH_PAUSE)
    } else {
        None
    };
    let mut burst: Option<(Instant, Instant)> = None; // (first, last) event of a burst
                                                      // SIGHUP asks for a re-read as well (`kill -HUP`, the operator's nudge).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGHUP; file events and the periodic re-read still work"))
        .ok();
    let mut periodic = tokio::time::interval_at(Instant::now() + reread, reread);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(at) = rewatch_at {
            if at <= Instant::now() {
                match start_watch(&dir, tx.clone()) {
                    Ok(w) => {
                        tracing::info!(dir = %dir.display(), "watch re-established");
                        // Anything may have changed while the watch was down.
                        burst.get_or_insert((Instant::now(), Instant::now()));
                        watcher = Some(w);
                        rewatch_at = None;
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "cannot watch; retrying (the periodic re-read still runs)");
                        rewatch_at = Some(Instant::now() + REWATCH_PAUSE);
                    }
                }
            }
        }
        let fire_at = burst.map(|(first, last)| (last + DEBOUNCE_QUIET).min(first + DEBOUNCE_MAX));
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            biased;
            _ = crate::listener::stopped(&mut stop) => break,
            signal = rx.recv() => match signal {
                Some(Signal::Event) => {
                    events.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    burst = Some(burst.map_or((now, now), |(first, _)| (first, now)));
                }
                Some(Signal::Failed(e)) => {
                    tracing::error!(dir = %dir.display(), error = %e, "watch error; re-establishing");
                    watcher = None;
                    rewatch_at = Some(Instant::now() + REWATCH_PAUSE);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(fire_at.unwrap_or(far)), if fire_at.is_some() => {
                burst = None;
                if writer.send(Command::Reload { cause: Cause::Event, reply: None }).await.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(rewatch_at.unwrap_or(far)), if rewatch_at.is_some() => {}
            Some(()) = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => {
                let (reply, outcome) = tokio::sync::oneshot::channel();
                if writer.send(Command::Reload { cause: Cause::Signal, reply: Some(reply) }).await.is_err() {
                    break;
                }
                if let Ok(outcome) = outcome.await {
                    tracing::info!(?outcome, "SIGHUP: upstreams file re-read");
                }
            }
            _ = periodic.tick() => {
                if writer.send(Command::Reload { cause: Cause::Periodic, reply: None }).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(watcher);
}
