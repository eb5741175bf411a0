//! Start-up and shutdown: [`Checked`] reads and validates the files,
//! [`Listeners`] binds the sockets, [`Proxy::spawn`] starts the cores and
//! the control runtime, [`run`] runs them until a shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

use crate::config::{self, Settings};
use crate::config::{ConfigError, ConfigErrors};
use crate::control::{self, Cause, Command, ControlState, ReloadOutcome, Routes, Writer};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::shared::{DataOpts, Shared};
use crate::table::{Desired, RoutingTable, Source, Spec};
use crate::tls::Tls;
use crate::{admin, balance, discovery, health, listener, local, watch};

/// The configuration a proxy starts from, read and validated completely:
/// what `switchyard check` checks and what [`Proxy::spawn`] runs.
pub struct Checked {
    /// `proxy.toml`.
    pub settings: Settings,
    /// The upstreams file, validated.
    pub upstreams: Desired,
    /// Hash of the upstreams file's bytes as read.
    pub upstreams_hash: u64,
    /// The upstreams file's text as read (what persist edits).
    pub upstreams_text: Arc<str>,
    /// The admin token (none when `token_file` is unset or `offline`).
    pub token: Option<String>,
    /// `[tls]`'s certificates, loaded and checked (none without `[tls]`, or
    /// `offline`).
    pub tls: Option<Arc<Tls>>,
}

impl Checked {
    /// Reads and validates `proxy.toml` and its upstreams file. `offline`
    /// skips what needs the machine it will run on (the token file, the
    /// certificate and key files).
    pub fn load(config: &Path, offline: bool) -> Result<Checked, ConfigErrors> {
        Checked::from_settings(Settings::load(config).map_err(ConfigErrors)?, offline)
    }

    /// Like [`Checked::load`], from loaded settings; every error is listed.
    pub fn from_settings(settings: Settings, offline: bool) -> Result<Checked, ConfigErrors> {
        let mut errors = Vec::new();
        let path = &settings.upstreams_path;
        let upstreams = match config::read_upstreams(path) {
            Err(e) => {
                errors.push(e);
                None
            }
            Ok(bytes) => match Desired::parse(path, &bytes) {
                Err(es) => {
                    errors.extend(es);
                    None
                }
                Ok(d) => Some((
                    d,
                    control::content_hash(&bytes),
                    String::from_utf8_lossy(&bytes).into(),
                )),
            },
        };
        if settings.file.admin.persist
            && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        {
            errors.push(ConfigError::Invalid {
                file: settings.path.clone(),
                line: None,
                reason: format!(
                    "[admin] persist = true, but the upstreams file {} is a symlink (a ConfigMap mount?): \
                     persist would break it; turn persist off and make switches durable in the ConfigMap instead",
                    path.display()
                ),
            });
        }
        if let Some(reason) = settings.file.admin.refusal() {
            errors.push(ConfigError::Invalid {
                file: settings.path.clone(),
                line: None,
                reason,
            });
        }
        let token = if offline {
            None
        } else {
            settings.read_token().unwrap_or_else(|e| {
                errors.push(e);
                None
            })
        };
        let tls = if offline || settings.certs.is_empty() {
            None
        } else {
            Tls::load(&settings.certs)
                .map(Arc::new)
                .map_err(|es| errors.extend(es))
                .ok()
        };
        match upstreams {
            Some((upstreams, upstreams_hash, upstreams_text)) if errors.is_empty() => Ok(Checked {
                settings,
                upstreams,
                upstreams_hash,
                upstreams_text,
                token,
                tls,
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The pools' DNS names (`dns`, and names in `endpoints`) that do not
    /// resolve on this machine now, resolved as the proxy resolves them
    /// (`switchyard check` without `--offline`). A `dns` name with no
    /// address is valid (a pool not deployed yet); a name in `endpoints`
    /// with none, or any name without an answer, is not.
    pub fn unresolvable_endpoints(&self) -> Vec<ConfigError> {
        let names = discovery::names_of(&self.upstreams);
        let list: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        let (resolved, failed) =
            discovery::resolve_now(&list, &self.upstreams.discovery, discovery::START_TIMEOUT);
        let error = |pool: &str, reason: String| ConfigError::Invalid {
            file: self.settings.upstreams_path.clone(),
            line: None,
            reason: format!("pools.{pool}: {reason}"),
        };
        let mut errors = Vec::new();
        for (name, why) in failed {
            for (n, pools) in &names {
                if *n == name {
                    errors.push(error(
                        &pools.join(", "),
                        format!("cannot resolve `{name}`: {why}"),
                    ));
                }
            }
        }
        for (pool, def) in &self.upstreams.pools {
            for ep in &def.endpoints {
                if resolved.get(ep).is_some_and(Vec::is_empty) {
                    errors.push(error(pool, format!("`{ep}` has no address")));
                }
            }
        }
        errors
    }
}

/// The bound sockets of a proxy: one `SO_REUSEPORT` data listener per core
/// (and one HTTPS listener per core with `[tls]`) and the admin listener.
/// Binding comes first so that every error is returned before anything
/// starts.
pub struct Listeners {
    http: Vec<std::net::TcpListener>,
    https: Vec<std::net::TcpListener>,
    admin: std::net::TcpListener,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
}

/// Binds `wanted` once per core (`cores` at least 1): with port 0 the other
/// cores bind the port the first one got.
fn bind_per_core(
    wanted: SocketAddr,
    cores: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), Error> {
    let bind_error = |addr| move |source| Error::Bind { addr, source };
    let first = listener::bind_reuseport(wanted).map_err(bind_error(wanted))?;
    let addr = first.local_addr().map_err(bind_error(wanted))?;
    let mut all = vec![first];
    for _ in 1..cores.max(1) {
        all.push(listener::bind_reuseport(addr).map_err(bind_error(addr))?);
    }
    Ok((all, addr))
}

impl Listeners {
    /// Binds `[listen] http` (and `https`) once per core (`cores` at least
    /// 1) and `[admin] listen`.
    pub fn bind(settings: &Settings, cores: usize) -> Result<Listeners, Error> {
        let bind_error = |addr| move |source| Error::Bind { addr, source };
        let (http, http_addr) = bind_per_core(settings.file.listen.http, cores)?;
        let (https, https_addr) = match settings.file.listen.https {
            Some(wanted) => {
                let (https, addr) = bind_per_core(wanted, cores)?;
                (https, Some(addr))
            }
            None => (Vec::new(), None),
        };
        let wanted = settings.file.admin.listen;
        let admin = std::net::TcpListener::bind(wanted).map_err(bind_error(wanted))?;
        let admin_addr = admin.local_addr().map_err(bind_error(wanted))?;
        admin.set_nonblocking(true).map_err(bind_error(admin_addr))?;
        Ok(Listeners {
            http,
            https,
            admin,
            http_addr,
            https_addr,
            admin_addr,
        })
    }

    /// The data listener's address (the real port when configured with 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS listener's address, with `[tls]`.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
}

/// Runs a proxy on `listeners` until `shutdown` completes, then stops it
/// gracefully ([`Proxy::shutdown`]): the entry point of the binary.
pub async fn run(
    checked: Checked,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let proxy = Proxy::spawn(checked, listeners)?;
    shutdown.await;
    tracing::info!("shutting down");
    tokio::task::spawn_blocking(move || proxy.shutdown())
        .await
        .map_err(|e| Error::Runtime {
            what: "the shutdown",
            source: std::io::Error::other(e),
        })
}

/// Starts a thread named `name` that builds its runtime with `build` and
/// runs `body` on it; returns once the runtime is built (or failed to be).
fn start_thread<R: 'static>(
    name: String,
    what: &'static str,
    build: impl FnOnce() -> std::io::Result<R> + Send + 'static,
    body: impl FnOnce(R) + Send + 'static,
) -> Result<JoinHandle<()>, Error> {
    let (built_tx, built_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(move || match build() {
            Ok(rt) => {
                let _ = built_tx.send(Ok(()));
                drop(built_tx);
                body(rt);
            }
            Err(e) => {
                let _ = built_tx.send(Err(e));
            }
        })
        .map_err(|source| Error::Runtime { what, source })?;
    match built_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(source)) => Err(Error::Runtime { what, source }),
        Err(_) => Err(Error::Runtime {
            what,
            source: std::io::Error::other("the thread ended early"),
        }),
    }
}

/// A running proxy: its cores, its control runtime, and how to stop them.
pub struct Proxy {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    writer: mpsc::Sender<Command>,
    stop_cores: tokio_watch::Sender<bool>,
    stop_control: tokio_watch::Sender<bool>,
    cores: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
    shutdown_delay: Duration,
    watch_events: Arc<AtomicU64>,
}

/// The process's open-file limit (`RLIMIT_NOFILE`) raised to its hard
/// limit: every client connection, upstream connection and listener is a
/// file descriptor, and the soft limit is often 1024. Returns the soft and
/// hard limits found, and the soft limit now. Called once at start (by
/// `main`, which logs it).
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    let (now, _) = rlimit::Resource::NOFILE.get()?;
    Ok((soft, hard, now))
}

impl Proxy {
    /// Loads `proxy.toml` (and its upstreams file), binds the listeners and
    /// starts `[runtime] cores` data-plane cores (by default one per CPU
    /// this process may use) plus the control runtime. Returns once every
    /// listener is up and the table is loaded.
    pub fn start(config_path: &Path) -> Result<Proxy, Error> {
        let checked = Checked::load(config_path, false)?;
        let listeners = Listeners::bind(&checked.settings, checked.settings.file.runtime.cores())?;
        Proxy::spawn(checked, listeners)
    }

    /// Like [`Proxy::start`], from loaded settings and with `cores` cores.
    pub fn start_with(settings: Settings, cores: usize) -> Result<Proxy, Error> {
        let checked = Checked::from_settings(settings, false)?;
        let listeners = Listeners::bind(&checked.settings, cores)?;
        Proxy::spawn(checked, listeners)
    }

    /// Starts the proxy `checked` describes on `listeners`: one data-plane
    /// core per data listener and the control runtime (writer, admin API,
    /// watcher). Returns once all of them run and `/readyz` is 200.
    pub fn spawn(checked: Checked, listeners: Listeners) -> Result<Proxy, Error> {
        let Checked {
            settings,
            upstreams,
            upstreams_hash,
            upstreams_text,
            token,
            tls,
        } = checked;
        let Listeners {
            http,
            https,
            admin: admin_listener,
            http_addr,
            https_addr,
            admin_addr,
        } = listeners;
        if https_addr.is_some() != tls.is_some() {
            return Err(Error::Refused(
                "the HTTPS listener needs [tls]'s certificates loaded (a check with --offline does not load them)"
                    .into(),
            ));
        }
        let cores = http.len();
        let file = &settings.file;
        let path = settings.upstreams_path.clone();
        let watch = watch::Watch::arm(&path);
        // DNS names are resolved before serving, bounded by
        // `discovery::START_TIMEOUT`: a name that fails starts with no
        // address (logged, counted), and discovery keeps trying.
        let names: Vec<String> = discovery::names_of(&upstreams)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let (resolved, unresolved) =
            discovery::resolve_now(&names, &upstreams.discovery, discovery::START_TIMEOUT);
        let (stop_cores, stop_cores_rx) = tokio_watch::channel(false);
        let (stop_control, stop_control_rx) = tokio_watch::channel(false);
        let stop_control_rx_for_tls = stop_control_rx.clone();
        let state = ControlState::start(upstreams, upstreams_hash, upstreams_text, file.admin.persist);
        let metrics = Metrics::new();
        let table = RoutingTable::build(
            &Spec {
                file: &state.file,
                active: &state.route.active,
                split: &state.route.split,
                generation: state.generation,
                source: Source::File,
                switched_at: SystemTime::now(),
                pending_since: None,
                facts: state.facts(),
                resolved: &resolved,
            },
            None,
            &metrics,
        );
        for (name, why) in &unresolved {
            tracing::error!(%name, error = %why, "discovery: cannot resolve at start; its pools start without its addresses");
            discovery::record_error(&table, name, why);
        }
        table.publish(None, &metrics);
        metrics.reload("ok");
        let (failures_tx, failures_rx) = mpsc::unbounded_channel();
        if let Some(tls) = &tls {
            tls.publish(&metrics);
        }
        let (balance, inboxes) = balance::Balancer::new(cores, file.limits.max_connections);
        let mut opts = DataOpts::of(file);
        // The 308 answers name the port the HTTPS listener really got.
        if let (Some(port), Some(addr)) = (&mut opts.redirect_https, https_addr) {
            *port = addr.port();
        }
        let shared = Arc::new(Shared {
            table: Arc::new(Routes::new(table)),
            metrics: Arc::new(metrics),
            opts,
            ready: AtomicBool::new(false),
            flush: local::FlushRequests::new(cores),
            balance,
            upstream_shed: Arc::new(tokio::sync::Notify::new()),
            failures: failures_tx,
            tls: tls.clone(),
        });
        // The certificates are watched like the upstreams file (armed before
        // anything is served; a pair changed since the check is read at once).
        let tls_watcher = tls.map(|tls| {
            let watch = watch::Watch::arm_all(&tls.files());
            tls.reload(&shared.metrics);
            let metrics = Arc::clone(&shared.metrics);
            watch::run_with(
                watch,
                file.upstreams.reread,
                Arc::new(AtomicU64::new(0)),
                stop_control_rx_for_tls.clone(),
                move |_| {
                    tls.reload(&metrics);
                    std::future::ready(true)
                },
            )
        });

        let (writer_tx, writer_rx) = mpsc::channel(64);
        // The file may have changed between its check and the watch: then
        // the writer reads it first.
        if config::read_upstreams(&path).is_ok_and(|b| control::content_hash(&b) != upstreams_hash) {
            let _ = writer_tx.try_send(Command::Reload {
                cause: Cause::Event,
                reply: None,
            });
        }
        let watch_events = Arc::new(AtomicU64::new(0));

        // The control runtime: writer, admin API, watcher.
        let writer = Writer::new(
            Arc::clone(&shared.table),
            Arc::clone(&shared.metrics),
            path.clone(),
            state,
        )
        .with_resolved(resolved.clone());
        let admin = Arc::new(admin::Admin {
            shared: Arc::clone(&shared),
            writer: writer_tx.clone(),
            token,
            body_timeout: file.timeouts.admin_body,
        });
        let watcher = watch::run(
            watch,
            file.upstreams.reread,
            writer_tx.clone(),
            Arc::clone(&watch_events),
            stop_control_rx.clone(),
        );
        let discoverer = discovery::run(
            Arc::clone(&shared.table),
            writer_tx.clone(),
            resolved,
            stop_control_rx.clone(),
        );
        let health = health::run(
            Arc::clone(&shared.table),
            writer_tx.clone(),
            failures_rx,
            stop_control_rx.clone(),
        );
        let control = start_thread(
            "switchyard-control".into(),
            "the control runtime",
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let admin_listener = {
                    let _entered = rt.enter();
                    tokio::net::TcpListener::from_std(admin_listener)?
                };
                Ok((rt, admin_listener))
            },
            move |(rt, admin_listener)| {
                rt.block_on(async move {
                    let writer_task = tokio::spawn(writer.run(writer_rx));
                    let watcher_task = tokio::spawn(watcher);
                    let discovery_task = tokio::spawn(discoverer);
                    let health_task = tokio::spawn(health);
                    let tls_task = tls_watcher.map(tokio::spawn);
                    listener::run_admin(admin_listener, admin, stop_control_rx).await;
                    let _ = watcher_task.await;
                    if let Some(t) = tls_task {
                        let _ = t.await;
                    }
                    let _ = discovery_task.await;
                    let _ = health_task.await;
                    // The writer ends once every sender (the Proxy's too) is gone.
                    writer_task.abort();
                });
            },
        )?;

        let mut core_threads = Vec::with_capacity(cores);
        let mut https = https.into_iter();
        for (core, (l, inbox)) in http.into_iter().zip(inboxes).enumerate() {
            let l = listener::CoreListeners {
                http: l,
                https: https.next(),
            };
            let shared = Arc::clone(&shared);
            let stop = stop_cores_rx.clone();
            // A local runtime (built on its thread, which it never leaves)
            // runs `!Send` tasks on its own run queue: an I/O wake-up is
            // queued there like any other, where a `LocalSet` on a
            // `current_thread` runtime would take its locked remote queue.
            let handle = start_thread(
                format!("switchyard-core-{core}"),
                "a core runtime",
                || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build_local(tokio::runtime::LocalOptions::default())
                },
                move |rt| {
                    // The core's work is a task of its own, like every
                    // connection's; `block_on` only waits for it.
                    let main = rt.spawn_local(listener::run_core(core, l, inbox, shared, stop));
                    if let Err(e) = rt.block_on(main) {
                        tracing::error!(core, error = %e, "core task failed");
                    }
                },
            )?;
            core_threads.push(handle);
        }
        shared.ready.store(true, Ordering::Release);
        let https = https_addr.map_or_else(|| "none".to_string(), |a| a.to_string());
        tracing::info!(%http_addr, https_addr = %https, %admin_addr, cores, upstreams = %path.display(), "switchyard listening");
        Ok(Proxy {
            shared,
            http_addr,
            https_addr,
            admin_addr,
            writer: writer_tx,
            stop_cores,
            stop_control,
            cores: core_threads,
            control: Some(control),
            shutdown_delay: file.timeouts.shutdown_delay,
            watch_events,
        })
    }

    /// The data listener's address (the real port when configured with 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The HTTPS listener's address, with `[tls]`.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// State shared with the cores (table, metrics), for embedding and tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Relevant file-system events the watcher has seen.
    pub fn watch_events(&self) -> u64 {
        self.watch_events.load(Ordering::Relaxed)
    }

    /// A handle to ask the writer for a reload (SIGHUP) from any thread.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.writer.clone())
    }

    /// First step of a shutdown: `/readyz` answers 503 from now on.
    pub fn begin_shutdown(&self) {
        self.shared.ready.store(false, Ordering::Release);
    }

    /// Graceful stop: `/readyz` 503, keep serving for `shutdown_delay`, then
    /// stop accepting, let in-flight requests finish within `shutdown`, and
    /// stop the control runtime. Blocks until done.
    pub fn shutdown(mut self) {
        self.begin_shutdown();
        if !self.shutdown_delay.is_zero() {
            tracing::info!(delay = ?self.shutdown_delay, "shutdown: still serving while the load balancers catch up");
            std::thread::sleep(self.shutdown_delay);
        }
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.shared.ready.store(false, Ordering::Release);
        let _ = self.stop_cores.send(true);
        for core in self.cores.drain(..) {
            let _ = core.join();
        }
        let _ = self.stop_control.send(true);
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Asks the writer to re-read the upstreams file.
#[derive(Clone)]
pub struct Reloader(mpsc::Sender<Command>);

impl Reloader {
    /// Re-reads the upstreams file and returns what happened.
    pub async fn reload(&self) -> ReloadOutcome {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Reload {
            cause: Cause::Signal,
            reply: Some(reply),
        };
        if self.0.send(cmd).await.is_err() {
            return ReloadOutcome::Rejected("the proxy is shutting down".into());
        }
        rx.await
            .unwrap_or(ReloadOutcome::Rejected("the proxy is shutting down".into()))
    }
}
