//! switchyard: an HTTP edge proxy that cuts a service over from its blue
//! pool to its green one atomically, by itself.
//!
//! Layout:
//! - [`config`]: serde shapes of `proxy.toml` / `upstreams.toml`;
//! - [`table`]: the immutable [`table::RoutingTable`] and its validation;
//! - [`pool`]: endpoints, round-robin, in-flight counts;
//! - [`client`]: the per-core upstream connection pool;
//! - [`body`]: the bodies of the data plane and the per-request record;
//! - [`forward`]: one request, end to end;
//! - [`listener`]: per-core runtimes, accept loops, graceful drain;
//! - [`balance`]: the cores' open connections, kept even by handing a
//!   newly accepted one to the least loaded core;
//! - [`reload`]: the single writer of the table;
//! - [`watch`]: the upstreams file watcher;
//! - [`admin`]: the admin API; [`metrics`]: Prometheus; [`error`]: errors.
//!
//! Request flow: a core's listener accepts → hyper reads the request →
//! [`forward::handle`] loads the table once and takes its active pool →
//! picks an endpoint round-robin and a pooled connection of this core →
//! streams the request and the answer, recording metrics when it ends.
//!
//! [`Proxy::start`] runs it all from a `proxy.toml` path.

pub mod admin;
pub mod balance;
pub mod body;
pub mod client;
pub mod config;
pub mod conn;
pub mod deadline;
pub mod error;
pub mod forward;
pub mod headers;
pub mod listener;
pub mod local;
pub mod metrics;
pub mod pool;
pub mod reload;
pub mod table;
pub mod watch;
pub mod worker;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch as tokio_watch};

pub use error::{ConfigError, ConfigErrors, Error};
pub use reload::{ReloadOutcome, SwitchError, SwitchOutcome};

use config::Settings;
use metrics::Metrics;
use reload::{Command, ControlStatus, Writer};
use table::{Desired, RoutingTable, Source};

/// The data plane's settings, fixed at start.
#[derive(Debug, Clone)]
pub struct DataOpts {
    /// Add `x-switchyard-pool` / `-generation` to responses.
    pub expose_headers: bool,
    /// Peers whose `X-Forwarded-For` is extended.
    pub trusted_proxies: Vec<IpNet>,
    /// One access-log line per request.
    pub access_log: bool,
    /// Until the upstream's response head.
    pub request_timeout: Duration,
    /// Idle keep-alive client connection.
    pub client_idle: Duration,
    /// Idle pooled upstream connection.
    pub upstream_idle: Duration,
    /// Upstream connect.
    pub connect_timeout: Duration,
    /// Grace for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
}

/// Everything the cores and the control plane share.
pub struct Shared {
    /// The routing table; written only by the writer task.
    pub table: ArcSwap<RoutingTable>,
    /// Every metric, in the proxy's own registry.
    pub metrics: Metrics,
    /// Fixed settings of the data plane.
    pub opts: DataOpts,
    /// `/readyz`: true once listening with a table, false from shutdown on.
    pub ready: AtomicBool,
    /// What `/status` shows beyond the table; the lock is control-plane only.
    pub status: Mutex<ControlStatus>,
    /// How a scrape collects the metrics the cores buffer.
    pub flush: local::FlushRequests,
    /// The cores' open client connections, kept even.
    pub balance: Arc<balance::Balancer>,
}

impl Shared {
    /// The Prometheus text exposition, with every request that ended before
    /// the call counted.
    pub async fn render_metrics(&self) -> Vec<u8> {
        self.flush.flush_all(Duration::from_millis(250)).await;
        // The in-flight gauges are read from the pools' per-core counts.
        for p in &self.table.load().pools {
            p.metrics.inflight.set(p.inflight());
        }
        self.metrics.render()
    }
}

/// A running proxy: its cores, its control runtime, and how to stop them.
pub struct Proxy {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    writer: mpsc::Sender<Command>,
    stop_cores: tokio_watch::Sender<bool>,
    stop_control: tokio_watch::Sender<bool>,
    cores: Vec<JoinHandle<()>>,
    control: Option<JoinHandle<()>>,
    shutdown_delay: Duration,
    watch_events: Arc<AtomicU64>,
}

/// Number of data-plane cores to run: one per CPU.
pub fn default_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

impl Proxy {
    /// Loads `proxy.toml` (and its upstreams file), binds the listeners and
    /// starts one data-plane core per CPU plus the control runtime. Returns
    /// once every listener is up and the table is loaded.
    pub fn start(config_path: &Path) -> Result<Proxy, Error> {
        let settings = Settings::load(config_path).map_err(ConfigErrors)?;
        Proxy::start_with(settings, default_cores())
    }

    /// Like [`Proxy::start`], from loaded settings and with `cores` cores.
    pub fn start_with(settings: Settings, cores: usize) -> Result<Proxy, Error> {
        let cores = cores.max(1);
        let file = &settings.file;
        let path = settings.upstreams_path.clone();
        // Armed before the first read: a change right after it is not missed.
        let watch = watch::Watch::arm(&path);
        let bytes = config::read_upstreams(&path).map_err(|e| ConfigErrors(vec![e]))?;
        let desired = Desired::parse(&path, &bytes).map_err(ConfigErrors)?;
        if file.admin.persist && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Error::Refused(format!(
                "[admin] persist = true, but {} is a symlink (a ConfigMap mount?): persist would break it; \
                 turn persist off and make switches durable in the ConfigMap instead",
                path.display()
            )));
        }
        let token = settings.read_token().map_err(|e| ConfigErrors(vec![e]))?;
        let metrics = Metrics::new();
        let table = RoutingTable::build(
            &desired,
            &desired.active,
            1,
            Source::File,
            SystemTime::now(),
            None,
            &metrics,
        );
        metrics.reload("ok");
        let t = &file.timeouts;
        let (balance, inboxes) = balance::Balancer::new(cores);
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            metrics,
            opts: DataOpts {
                expose_headers: file.headers.expose,
                trusted_proxies: file.headers.trusted_proxies.clone(),
                access_log: file.log.access,
                request_timeout: t.request,
                client_idle: t.client_idle,
                upstream_idle: t.upstream_idle,
                connect_timeout: t.connect,
                shutdown_grace: t.shutdown,
            },
            ready: AtomicBool::new(false),
            status: Mutex::new(ControlStatus::default()),
            flush: local::FlushRequests::new(cores),
            balance,
        });

        // Bind everything before starting anything, so errors come back here.
        let first = listener::bind_reuseport(file.listen.http).map_err(|source| Error::Bind {
            addr: file.listen.http,
            source,
        })?;
        let http_addr = first.local_addr().map_err(|source| Error::Bind {
            addr: file.listen.http,
            source,
        })?;
        let mut listeners = vec![first];
        for _ in 1..cores {
            listeners.push(listener::bind_reuseport(http_addr).map_err(|source| Error::Bind {
                addr: http_addr,
                source,
            })?);
        }
        let admin_listener =
            std::net::TcpListener::bind(file.admin.listen).map_err(|source| Error::Bind {
                addr: file.admin.listen,
                source,
            })?;
        let admin_addr = admin_listener.local_addr().map_err(|source| Error::Bind {
            addr: file.admin.listen,
            source,
        })?;
        admin_listener
            .set_nonblocking(true)
            .map_err(|source| Error::Bind {
                addr: admin_addr,
                source,
            })?;

        let (writer_tx, writer_rx) = mpsc::channel(64);
        let (stop_cores, stop_cores_rx) = tokio_watch::channel(false);
        let (stop_control, stop_control_rx) = tokio_watch::channel(false);
        let watch_events = Arc::new(AtomicU64::new(0));

        // The control runtime: writer, admin API, watcher.
        let control_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime {
                what: "the control runtime",
                source,
            })?;
        let writer = Writer::new(
            Arc::clone(&shared),
            path.clone(),
            desired,
            reload::content_hash(&bytes),
            file.admin.persist,
        );
        let admin = Arc::new(admin::Admin {
            shared: Arc::clone(&shared),
            writer: writer_tx.clone(),
            token,
        });
        let watcher = watch::run(
            watch,
            file.upstreams.reread,
            writer_tx.clone(),
            Arc::clone(&watch_events),
            stop_control_rx.clone(),
        );
        let (started_tx, started_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let control = std::thread::Builder::new()
            .name("switchyard-control".into())
            .spawn(move || {
                control_rt.block_on(async move {
                    let admin_listener = match tokio::net::TcpListener::from_std(admin_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    let writer_task = tokio::spawn(writer.run(writer_rx));
                    let watcher_task = tokio::spawn(watcher);
                    listener::run_admin(admin_listener, admin, stop_control_rx).await;
                    let _ = watcher_task.await;
                    // The writer ends once every sender (the Proxy's too) is gone.
                    writer_task.abort();
                });
            })
            .map_err(|source| Error::Runtime {
                what: "the control thread",
                source,
            })?;
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(Error::Bind {
                    addr: admin_addr,
                    source,
                })
            }
            Err(_) => {
                return Err(Error::Runtime {
                    what: "the control runtime",
                    source: std::io::Error::other("the control thread ended early"),
                })
            }
        }

        let mut core_threads = Vec::with_capacity(cores);
        let (built_tx, built_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        for (core, (l, inbox)) in listeners.into_iter().zip(inboxes).enumerate() {
            let shared = Arc::clone(&shared);
            let stop = stop_cores_rx.clone();
            let built = built_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("switchyard-core-{core}"))
                .spawn(move || {
                    // A local runtime (built on its thread, which it never
                    // leaves) runs `!Send` tasks on its own run queue: an
                    // I/O wake-up is queued there like any other, where a
                    // `LocalSet` on a `current_thread` runtime would take
                    // its locked remote queue.
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build_local(tokio::runtime::LocalOptions::default())
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = built.send(Err(e));
                            return;
                        }
                    };
                    let _ = built.send(Ok(()));
                    drop(built);
                    // The core's work is a task of its own, like every
                    // connection's; `block_on` only waits for it.
                    let main = rt.spawn_local(listener::run_core(core, l, inbox, shared, stop));
                    if let Err(e) = rt.block_on(main) {
                        tracing::error!(core, error = %e, "core task failed");
                    }
                })
                .map_err(|source| Error::Runtime {
                    what: "a core thread",
                    source,
                })?;
            core_threads.push(handle);
        }
        drop(built_tx);
        for _ in 0..cores {
            let source = match built_rx.recv() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e,
                Err(_) => std::io::Error::other("a core thread ended early"),
            };
            return Err(Error::Runtime {
                what: "a core runtime",
                source,
            });
        }
        shared.ready.store(true, Ordering::Release);
        tracing::info!(%http_addr, %admin_addr, cores, upstreams = %path.display(), "switchyard listening");
        Ok(Proxy {
            shared,
            http_addr,
            admin_addr,
            writer: writer_tx,
            stop_cores,
            stop_control,
            cores: core_threads,
            control: Some(control),
            shutdown_delay: t.shutdown_delay,
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
            cause: reload::Cause::Signal,
            reply: Some(reply),
        };
        if self.0.send(cmd).await.is_err() {
            return ReloadOutcome::Rejected("the proxy is shutting down".into());
        }
        rx.await
            .unwrap_or(ReloadOutcome::Rejected("the proxy is shutting down".into()))
    }
}
