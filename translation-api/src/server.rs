//! Serving: one `current_thread` runtime per worker thread, each with its own
//! `SO_REUSEPORT` listener on the same address (the kernel spreads the
//! connections), its own copy of the [`AppState`], and hyper's HTTP/1
//! connection driver calling [`respond`] directly. The workers share only the readiness flag, the shutdown signal and
//! the Redis queue: the per-core shape the proxy uses too, chosen over
//! tokio's multi-thread runtime for the same reasons (docs/performance.md).
//!
//! Shutdown ([`Running::begin_shutdown`]): `/readyz` turns 503 at once; the
//! workers keep accepting for `shutdown_delay`, then close their listeners
//! and tell every connection to finish (hyper-util's `GracefulShutdown`): an
//! idle keep-alive connection closes now, one with a request under way
//! finishes that request and closes. After `shutdown_grace` whatever is left
//! is dropped. Then the Redis task flushes and everything is joined.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::client_ip::client_ip;
use crate::routes::{respond, AppState};
use crate::{stats, Config, Error};

/// Longest wait for a request head, and so also the idle timeout of a
/// keep-alive connection. Longer than the proxy's `timeouts.upstream_idle`
/// (50 s) so that the proxy, not this service, closes idle pooled
/// connections, and a request never races a close.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Listen backlog of each worker's socket.
const BACKLOG: i32 = 1024;

/// A running service: its worker threads and the Redis task. Dropping it
/// shuts it down (honouring `shutdown_delay` and `shutdown_grace`) and joins
/// every thread.
pub struct Running {
    addr: SocketAddr,
    /// What `/readyz` reads; cleared by `begin_shutdown`.
    ready: Arc<AtomicBool>,
    /// `true` once shutdown has begun; every worker watches it.
    shutdown: watch::Sender<bool>,
    /// Requests in flight, one counter per worker (no cross-core traffic).
    inflight: Vec<Arc<Counter>>,
    workers: Vec<JoinHandle<()>>,
    stats: Option<stats::Task>,
}

/// A counter on its own cache line.
#[repr(align(128))]
#[derive(Default)]
struct Counter(AtomicUsize);

impl Running {
    /// The address the service listens on (with the real port when the
    /// configuration asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts shutting down: `/readyz` answers 503 from now on; the
    /// listeners close after `shutdown_delay`; in-flight requests then get
    /// `shutdown_grace` to finish. Returns at once; idempotent.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let already = self.shutdown.send_replace(true);
        if !already {
            tracing::info!(addr = %self.addr, "shutdown begun");
        }
    }

    /// Waits until every worker has stopped (which happens only after
    /// [`Running::begin_shutdown`]) and the Redis task has flushed.
    pub fn join(mut self) -> Result<(), Error> {
        self.join_all()
    }

    /// Requests being answered right now, over all workers. Answers are
    /// built synchronously, so this is non-zero only for an instant; a
    /// request whose head is still arriving is not counted.
    pub fn inflight(&self) -> usize {
        self.inflight.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }

    fn join_all(&mut self) -> Result<(), Error> {
        let mut result = Ok(());
        for handle in self.workers.drain(..) {
            let name = handle.thread().name().unwrap_or("worker").to_owned();
            if handle.join().is_err() {
                result = Err(Error::WorkerPanicked(name));
            }
        }
        // Every handle on the Redis queue lived in a worker runtime, all
        // dropped by now: the task sees the queue close and flushes.
        if let Some(mut stats) = self.stats.take() {
            stats.stop()?;
        }
        result
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.workers.is_empty() || self.stats.is_some() {
            self.begin_shutdown();
            let _ = self.join_all();
        }
    }
}

/// Binds `config.listen` once per worker (`SO_REUSEPORT`), starts the Redis
/// task if configured (which connects in the background; only with
/// `require_redis` does spawn wait for its connect + `PING` and fail with
/// [`Error::RedisRequired`]), starts the workers, and returns once every
/// listener is listening.
pub fn spawn(config: Config) -> Result<Running, Error> {
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (recorder, stats_task) = match &config.redis_addr {
        Some(addr) => {
            let (recorder, task) = stats::start(addr, config.require_redis)?;
            (Some(recorder), Some(task))
        }
        None => (None, None),
    };
    let listeners = bind(config.listen, workers)?;
    let addr = listeners
        .first()
        .map(std::net::TcpListener::local_addr)
        .transpose()
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?
        .unwrap_or(config.listen);

    let ready = Arc::new(AtomicBool::new(true));
    let trusted: Arc<[IpNet]> = config.trusted_proxies.clone().into();
    let base = AppState::with_parts(&config.version, ready.clone(), trusted.clone(), recorder)
        .with_fail_ratio(config.fail_ratio);
    let (shutdown, _) = watch::channel(false);
    let mut running = Running {
        addr,
        ready,
        shutdown,
        inflight: Vec::with_capacity(workers),
        workers: Vec::with_capacity(workers),
        stats: stats_task,
    };
    let opts = WorkerOptions {
        access_log: config.access_log,
        trusted,
        shutdown_delay: config.shutdown_delay,
        shutdown_grace: config.shutdown_grace,
    };
    // On an error below, dropping `running` stops the workers already started.
    for (i, std_listener) in listeners.into_iter().enumerate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(format!("translation-api-{i}-blocking"))
            .build()
            .map_err(Error::Runtime)?;
        let listener = {
            let _entered = rt.enter();
            TcpListener::from_std(std_listener).map_err(|source| Error::Bind { addr, source })?
        };
        let inflight = Arc::new(Counter::default());
        let worker = Worker {
            state: base.for_worker(),
            inflight: inflight.clone(),
            opts: opts.clone(),
            shutdown: running.shutdown.subscribe(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("translation-api-{i}"))
            .spawn(move || {
                rt.block_on(worker.serve(listener));
                // Dropping the runtime drops connections still open past the grace.
                drop(rt);
            })
            .map_err(Error::Runtime)?;
        running.inflight.push(inflight);
        running.workers.push(handle);
    }
    Ok(running)
}

fn bind(addr: SocketAddr, workers: usize) -> Result<Vec<std::net::TcpListener>, Error> {
    let bind_err = |source| Error::Bind { addr, source };
    if addr.port() != 0 {
        // `SO_REUSEPORT` would let us share a port that another of our
        // processes listens on, splitting its traffic silently. A socket
        // without it cannot bind where anyone listens: probe with one first.
        probe(addr).map_err(bind_err)?;
    }
    let first = bind_one(addr).map_err(bind_err)?;
    let actual = first.local_addr().map_err(bind_err)?;
    let mut listeners = Vec::with_capacity(workers);
    listeners.push(first);
    for _ in 1..workers {
        listeners.push(bind_one(actual).map_err(bind_err)?);
    }
    Ok(listeners)
}

fn probe(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // `[::]` accepts IPv4 too where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[derive(Clone)]
struct WorkerOptions {
    access_log: bool,
    trusted: Arc<[IpNet]>,
    shutdown_delay: Duration,
    shutdown_grace: Duration,
}

struct Worker {
    state: AppState,
    inflight: Arc<Counter>,
    opts: WorkerOptions,
    shutdown: watch::Receiver<bool>,
}

impl Worker {
    async fn serve(self, listener: TcpListener) {
        if self.opts.access_log {
            crate::log::batch_this_thread();
            tokio::spawn(async {
                let mut every = tokio::time::interval(crate::log::FLUSH_EVERY);
                loop {
                    every.tick().await;
                    crate::log::flush_this_thread();
                }
            });
        }
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(IDLE_TIMEOUT)
            // Answers are a few dozen bytes: copy head and body into one
            // buffer and write(2) it (measured a little cheaper than writev).
            .writev(false)
            .keep_alive(true);
        let delay = self.opts.shutdown_delay;
        let mut shutdown = self.shutdown.clone();
        let stop = async move {
            // An error means the `Running` is gone: stop as well.
            let _ = shutdown.wait_for(|begun| *begun).await;
            tokio::time::sleep(delay).await;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let service = ConnService {
                            state: self.state.clone(),
                            peer,
                            inflight: self.inflight.clone(),
                            access_log: self.opts.access_log,
                            trusted: self.opts.trusted.clone(),
                        };
                        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move {
                            if let Err(error) = conn.await {
                                tracing::debug!(%peer, %error, "connection ended with an error");
                            }
                        });
                    }
                    Err(error) => {
                        // EMFILE and friends: say so, breathe, keep accepting.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        let grace = self.opts.shutdown_grace;
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!(
                inflight = self.inflight.0.load(Ordering::Relaxed),
                ?grace,
                "grace period over; closing the connections still open"
            );
        }
        crate::log::flush_this_thread();
    }
}

/// The hyper service of one connection: answers with [`respond`] (given the
/// peer address), counts the request in flight, writes the access log line.
/// Synchronous: the future it returns is already complete.
#[derive(Clone)]
struct ConnService {
    state: AppState,
    peer: SocketAddr,
    inflight: Arc<Counter>,
    access_log: bool,
    trusted: Arc<[IpNet]>,
}

impl Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let _inflight = InflightGuard::new(&self.inflight);
        let log = self.access_log && tracing::enabled!(target: "access", tracing::Level::INFO);
        let start = log.then(Instant::now);
        let res = respond(
            &self.state,
            req.method(),
            req.uri(),
            req.headers(),
            Some(self.peer),
        );
        if let Some(start) = start {
            access_log(
                start,
                client_ip(self.peer.ip(), req.headers(), &self.trusted),
                &req,
                res.status(),
            );
        }
        std::future::ready(Ok(res))
    }
}

/// Counts one request in flight until dropped.
struct InflightGuard<'a>(&'a Counter);

impl<'a> InflightGuard<'a> {
    fn new(counter: &'a Counter) -> Self {
        counter.0.fetch_add(1, Ordering::Relaxed);
        InflightGuard(counter)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The access log line: time (from the subscriber), client, method,
/// path?query, status, time to build the answer in ms.
fn access_log<B>(
    start: Instant,
    client: std::net::IpAddr,
    req: &hyper::Request<B>,
    status: http::StatusCode,
) {
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    tracing::info!(
        target: "access",
        client = %client,
        method = %req.method(),
        path = %path,
        status = status.as_u16(),
        duration_ms = micros as f64 / 1000.0,
    );
}
