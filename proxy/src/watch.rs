//! The watcher only signals: it watches the upstreams file's *directory*
//! (and, with the same loop, [`run_with`], the directories of `[tls]`'s
//! certificate and key files)
//! with `notify` (so editor renames and the kubelet's `..data` swap are seen,
//! where a watch on the file itself dies silently), debounces, and asks the
//! writer to re-read. It ignores `Access` events other than `Close(Write)`:
//! the writer's own reads open the file, and reloading on those loops.
//! SIGHUP asks for a re-read too. A periodic re-read backs the events up; a
//! watcher error is logged and the watch re-established, never a panic.
//!
//! An in-place write settles before it is read: once the file itself is
//! modified (not replaced), the re-read waits for the writer to close it
//! (`Close(Write)`), at most [`IN_PLACE_SETTLE`] after its last
//! modification, and the periodic re-read waits as well. So a file written
//! in pieces is read whole. A rename over the file and the kubelet's
//! `..data` swap are atomic: they are read after the usual debounce, with no
//! wait. (A prefix that is read anyway — a writer pausing longer than the
//! bound — is judged like any file: the decision table rejects one that
//! drops the pool an override routes to.)

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
/// Longest wait for an in-place writer to close the file after its last
/// modification, before the file is read anyway.
pub const IN_PLACE_SETTLE: Duration = Duration::from_secs(2);
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
    /// Something changed in the directory.
    Event(Change),
    Failed(String),
}

/// What an event says about the upstreams file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// The file itself was modified in place: a writer may still be writing.
    Writing,
    /// A writer closed the file after writing: the write is complete.
    Closed,
    /// Anything else (a rename, a new or removed entry, a `..data` swap).
    Other,
}

/// How `kind`, on `paths`, bears on the files named `names`.
fn change_of(kind: &EventKind, paths: &[PathBuf], names: &[std::ffi::OsString]) -> Change {
    let on_file = paths
        .iter()
        .any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)));
    match kind {
        EventKind::Modify(notify::event::ModifyKind::Data(_)) if on_file => Change::Writing,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) if on_file => Change::Closed,
        _ => Change::Other,
    }
}

/// The directory watched for a file.
fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The distinct directories of `files`, in order.
fn dirs_of(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in files.iter().map(|f| dir_of(f)) {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

fn start_watch(files: &[PathBuf], tx: mpsc::UnboundedSender<Signal>) -> notify::Result<RecommendedWatcher> {
    let names: Vec<std::ffi::OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(ToOwned::to_owned))
        .collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
        let signal = match res {
            Ok(ev) if is_relevant(&ev.kind) => Signal::Event(change_of(&ev.kind, &ev.paths, &names)),
            Ok(_) => return,
            Err(e) => Signal::Failed(e.to_string()),
        };
        let _ = tx.send(signal);
    })?;
    for dir in dirs_of(files) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// A watch on the directories of some files (the upstreams file; the
/// certificate and key files of `[tls]`), armed before the files are first
/// read (so no change between that read and the watch is missed).
pub struct Watch {
    files: Vec<PathBuf>,
    watcher: Option<RecommendedWatcher>,
    tx: mpsc::UnboundedSender<Signal>,
    rx: mpsc::UnboundedReceiver<Signal>,
}

impl Watch {
    /// Arms the watch of `file` now. A failure is logged and retried by
    /// [`run`]; the periodic re-read covers the gap.
    pub fn arm(file: &Path) -> Watch {
        Watch::arm_all(&[file.to_path_buf()])
    }

    /// Arms one watch of the directories of every file of `files`.
    pub fn arm_all(files: &[PathBuf]) -> Watch {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = match start_watch(files, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(dirs = ?dirs_of(files), error = %e, "cannot watch; will retry (the periodic re-read still runs)");
                None
            }
        };
        Watch {
            files: files.to_vec(),
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
    stop: watch::Receiver<bool>,
) {
    run_with(watch, reread, events, stop, move |cause| {
        let writer = writer.clone();
        async move {
            if cause != Cause::Signal {
                return writer.send(Command::Reload { cause, reply: None }).await.is_ok();
            }
            let (reply, outcome) = tokio::sync::oneshot::channel();
            if writer
                .send(Command::Reload {
                    cause,
                    reply: Some(reply),
                })
                .await
                .is_err()
            {
                return false;
            }
            if let Ok(outcome) = outcome.await {
                tracing::info!(?outcome, "SIGHUP: upstreams file re-read");
            }
            true
        }
    })
    .await;
}

/// The watch loop: watches the directories of `watch`'s files, and calls
/// `reread` (with why) after a debounced burst of events, at every
/// `period`, and at SIGHUP, until `stop` or until `reread` answers false.
/// `events` counts the relevant events seen (for tests).
pub async fn run_with<F, Fut>(
    watch: Watch,
    period: Duration,
    events: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    mut reread: F,
) where
    F: FnMut(Cause) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Watch {
        files,
        mut watcher,
        tx,
        mut rx,
    } = watch;
    let dirs = dirs_of(&files);
    let mut rewatch_at = if watcher.is_none() {
        Some(Instant::now() + REWATCH_PAUSE)
    } else {
        None
    };
    // (first, last) event of a burst, read after DEBOUNCE_QUIET.
    let mut burst: Option<(Instant, Instant)> = None;
    // The last in-place modification of a file not yet followed by its close.
    let mut writing: Option<Instant> = None;
    // SIGHUP asks for a re-read as well (`kill -HUP`, the operator's nudge).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::error!(error = %e, "cannot listen for SIGHUP; file events and the periodic re-read still work"))
        .ok();
    let mut periodic = tokio::time::interval_at(Instant::now() + period, period);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(at) = rewatch_at {
            if at <= Instant::now() {
                match start_watch(&files, tx.clone()) {
                    Ok(w) => {
                        tracing::info!(dirs = ?dirs, "watch re-established");
                        // Anything may have changed while the watch was down.
                        burst.get_or_insert((Instant::now(), Instant::now()));
                        watcher = Some(w);
                        rewatch_at = None;
                    }
                    Err(e) => {
                        tracing::error!(dirs = ?dirs, error = %e, "cannot watch; retrying (the periodic re-read still runs)");
                        rewatch_at = Some(Instant::now() + REWATCH_PAUSE);
                    }
                }
            }
        }
        let settled = writing.map(|last| last + IN_PLACE_SETTLE);
        let fire_at = burst
            .map(|(first, last)| (last + DEBOUNCE_QUIET).min(first + DEBOUNCE_MAX))
            .map(|at| settled.map_or(at, |s| s.max(at)));
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            biased;
            _ = crate::listener::stopped(&mut stop) => break,
            signal = rx.recv() => match signal {
                Some(Signal::Event(change)) => {
                    events.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    burst = Some(burst.map_or((now, now), |(first, _)| (first, now)));
                    match change {
                        Change::Writing => writing = Some(now),
                        Change::Closed => writing = None,
                        Change::Other => {}
                    }
                }
                Some(Signal::Failed(e)) => {
                    tracing::error!(dirs = ?dirs, error = %e, "watch error; re-establishing");
                    watcher = None;
                    rewatch_at = Some(Instant::now() + REWATCH_PAUSE);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(fire_at.unwrap_or(far)), if fire_at.is_some() => {
                burst = None;
                if writing.take().is_some() {
                    tracing::warn!(files = ?files, bound = ?IN_PLACE_SETTLE, "an in-place write was not closed in time; reading the file as it is");
                }
                if !reread(Cause::Event).await {
                    break;
                }
            }
            _ = tokio::time::sleep_until(rewatch_at.unwrap_or(far)), if rewatch_at.is_some() => {}
            Some(()) = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => {
                if !reread(Cause::Signal).await {
                    break;
                }
            }
            _ = periodic.tick() => {
                // An in-place write still under way is read once it settles.
                if settled.is_some_and(|s| Instant::now() < s) {
                    continue;
                }
                if !reread(Cause::Periodic).await {
                    break;
                }
            }
        }
    }
    drop(watcher);
}
