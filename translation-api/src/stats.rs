//! Request statistics in Redis: `HINCRBY requests_by_ip <client-ip> n`.
//!
//! A request never waits for Redis. The translate handler hands the client
//! address to a `Recorder`, which `try_send`s it into a bounded queue; when
//! the queue is full the increment is dropped and counted. One task on its own
//! thread drains the queue in batches, adds the increments of one batch up
//! per address and sends them as one pipeline (so the hash ends up exactly as
//! if each request had sent `HINCRBY ... 1`), one round-trip at a time:
//! while a pipeline is on the wire, the next batch collects in the queue.
//!
//! While Redis is unreachable — at start too, unless `--require-redis` asked
//! for the check to stop the start — the task keeps the sums (up to
//! [`MAX_PENDING_ADDRESSES`] addresses) and reconnects in the background
//! with a backoff ([`RECONNECT_MIN`] doubling to [`RECONNECT_MAX`]); a
//! pipeline that fails on the wire is not resent (it may have been applied)
//! and its increments are counted as lost. Drops and losses are logged every
//! [`REPORT_EVERY`] while they happen, never per request.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use crate::Error;

/// The Redis hash the counts go to.
pub const HASH_KEY: &str = "requests_by_ip";
/// Port used when `REDIS_ADDR` has none.
pub const DEFAULT_PORT: u16 = 6379;
/// Capacity of the queue between the handlers and the Redis task.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Most queued increments taken into one pipeline.
const BATCH: usize = 4_096;
/// Most distinct addresses whose sums are kept while Redis is unreachable.
pub const MAX_PENDING_ADDRESSES: usize = 100_000;
/// How often drops and losses are logged while they happen.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// The first connect + `PING` answers within this (well under 5 s), or
/// counts as failed (fatal only with `--require-redis`).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A Redis address: `host` or `host:port`, IPv6 as `[::1]:6379` or bare `::1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port, [`DEFAULT_PORT`] when not given.
    pub port: u16,
}

impl RedisAddr {
    /// Parses `REDIS_ADDR`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::RedisAddr {
            addr: s.to_owned(),
            reason: reason.to_owned(),
        };
        let t = s.trim();
        if t.is_empty() {
            return Err(invalid("empty"));
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| invalid("missing ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| invalid("expected ':' after ']'"))?,
                    ),
                ),
            }
        } else if t.matches(':').count() > 1 {
            (t, None)
        } else {
            match t.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (t, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(invalid("not an IPv6 address"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("port is not a number from 1 to 65535"))?,
        };
        Ok(RedisAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for RedisAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The handlers' end of the queue: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct Recorder {
    tx: mpsc::Sender<IpAddr>,
    /// Increments dropped because the queue was full; the task reports them.
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// Queues one increment for `ip`, or counts it as dropped.
    pub(crate) fn record(&self, ip: IpAddr) {
        if self.tx.try_send(ip).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The Redis task's thread. Dropping it (or [`Task::stop`]) flushes what is
/// queued, within a bounded time, and joins the thread.
pub(crate) struct Task {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Task {
    /// Asks the task to flush and end, and waits for it.
    pub(crate) fn stop(&mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(Error::WorkerPanicked("translation-api-stats".into())),
            _ => Ok(()),
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn client_for(addr: &RedisAddr) -> Result<Client, redis::RedisError> {
    Client::open(ConnectionInfo {
        addr: ConnectionAddr::Tcp(addr.host.clone(), addr.port),
        redis: Default::default(),
    })
}

async fn connect(client: &Client) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    match timeout(
        CONNECT_TIMEOUT,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    }
}

/// Starts the Redis task on its own thread. Its first act is to connect to
/// `addr` and check it answers `PING` (within [`STARTUP_TIMEOUT`]).
///
/// With `require` the caller waits for that check and gets
/// [`Error::RedisRequired`] when it fails (the `--require-redis` start).
/// Without, nothing waits: if the check fails the task logs one warning
/// naming the address, keeps the counts (as during any outage) and connects
/// in the background with a backoff from [`RECONNECT_MIN`] doubling to
/// [`RECONNECT_MAX`], logging once when it has connected.
///
/// Works whether or not the caller is itself inside a tokio runtime (the
/// check runs on the task's own thread).
pub(crate) fn start(addr: &str, require: bool) -> Result<(Recorder, Task), Error> {
    let parsed = RedisAddr::parse(addr)?;
    let shown = parsed.to_string();
    let unreachable = |reason: String| Error::RedisRequired {
        addr: shown.clone(),
        reason,
    };
    let client = client_for(&parsed).map_err(|e| unreachable(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("translation-api-stats-blocking")
        .build()
        .map_err(Error::Runtime)?;

    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let (stop_tx, stop_rx) = oneshot::channel();
    let (checked_tx, checked_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
    let dropped = Arc::new(AtomicU64::new(0));
    let task_dropped = dropped.clone();
    let sink_addr = shown.clone();
    let thread = std::thread::Builder::new()
        .name("translation-api-stats".into())
        .spawn(move || {
            rt.block_on(async move {
                let checked = timeout(STARTUP_TIMEOUT, check(&client))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer to PING within {STARTUP_TIMEOUT:?}")));
                let mut sink = Sink::new(sink_addr, client);
                match checked {
                    Ok(conn) => {
                        let _ = checked_tx.send(Ok(()));
                        tracing::info!(redis = %sink.addr, "connected to Redis");
                        sink.conn = Some(conn);
                        sink.connected_once = true;
                    }
                    Err(reason) if require => {
                        let _ = checked_tx.send(Err(reason));
                        return;
                    }
                    Err(reason) => {
                        drop(checked_tx);
                        tracing::warn!(
                            redis = %sink.addr,
                            error = %reason,
                            "cannot reach Redis at start; serving without it, \
                             keeping the counts and connecting in the background"
                        );
                        sink.outage_logged = true;
                        sink.schedule_retry();
                    }
                }
                run(rx, stop_rx, sink, task_dropped).await;
            });
        })
        .map_err(Error::Runtime)?;
    let mut task = Task {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    if !require {
        return Ok((Recorder { tx, dropped }, task));
    }
    match checked_rx.recv() {
        Ok(Ok(())) => Ok((Recorder { tx, dropped }, task)),
        Ok(Err(reason)) => {
            let _ = task.stop();
            Err(unreachable(reason))
        }
        Err(_) => {
            let _ = task.stop();
            Err(unreachable("the Redis task ended during the check".into()))
        }
    }
}

async fn check(client: &Client) -> Result<MultiplexedConnection, String> {
    let mut conn = connect(client).await?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if pong != "PONG" {
        return Err(format!("PING answered {pong:?}"));
    }
    Ok(conn)
}

async fn run(
    mut rx: mpsc::Receiver<IpAddr>,
    mut stop: oneshot::Receiver<()>,
    mut sink: Sink,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = Report::default();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                sink.add(batch.drain(..));
                sink.flush().await;
            }
            _ = &mut stop => {
                rx.close();
                while rx.recv_many(&mut batch, BATCH).await > 0 {
                    sink.add(batch.drain(..));
                }
                break;
            }
            // Disconnected: (re)connect when the backoff says so, whether or
            // not counts are waiting, then write what was kept.
            _ = tokio::time::sleep_until(sink.retry_at), if sink.conn.is_none() => {
                sink.reconnect().await;
                sink.flush().await;
            }
            _ = tick.tick() => {
                sink.flush().await;
                report.maybe(&sink, &dropped, false);
            }
        }
    }
    // Final flush: one more attempt (connecting if needed and anything is
    // left), bounded by the connect and response timeouts.
    if sink.conn.is_none() && !sink.pending.is_empty() {
        sink.reconnect().await;
    }
    sink.flush().await;
    sink.lost += sink.pending.values().map(|n| n.unsigned_abs()).sum::<u64>();
    report.maybe(&sink, &dropped, true);
}

/// Logs drops and losses at most every [`REPORT_EVERY`], only when they grew.
#[derive(Default)]
struct Report {
    last: Option<Instant>,
    dropped: u64,
    lost: u64,
}

impl Report {
    fn maybe(&mut self, sink: &Sink, dropped: &AtomicU64, last_time: bool) {
        let now = Instant::now();
        if !last_time && self.last.is_some_and(|t| now - t < REPORT_EVERY) {
            return;
        }
        let dropped = dropped.load(Ordering::Relaxed);
        if dropped > self.dropped || sink.lost > self.lost {
            tracing::warn!(
                redis = %sink.addr,
                dropped_queue_full = dropped - self.dropped,
                lost_redis_errors = sink.lost - self.lost,
                dropped_total = dropped,
                lost_total = sink.lost,
                "request statistics were not recorded"
            );
        }
        self.last = Some(now);
        self.dropped = dropped;
        self.lost = sink.lost;
    }
}

/// The Redis side: the connection, the sums not yet written, reconnection.
struct Sink {
    addr: String,
    client: Client,
    conn: Option<MultiplexedConnection>,
    /// Increments per address not yet written.
    pending: HashMap<IpAddr, i64>,
    /// Increments that could not be recorded (failed pipelines, overflow).
    lost: u64,
    /// While disconnected: when to try connecting next.
    retry_at: Instant,
    /// The wait after the next failed attempt.
    backoff: Duration,
    /// The current outage was logged (one warning per outage).
    outage_logged: bool,
    /// A connection was made at some point ("connected" vs "reconnected").
    connected_once: bool,
}

impl Sink {
    fn new(addr: String, client: Client) -> Sink {
        Sink {
            addr,
            client,
            conn: None,
            pending: HashMap::new(),
            lost: 0,
            retry_at: Instant::now(),
            backoff: RECONNECT_MIN,
            outage_logged: false,
            connected_once: false,
        }
    }

    fn add(&mut self, ips: impl Iterator<Item = IpAddr>) {
        for ip in ips {
            if let Some(n) = self.pending.get_mut(&ip) {
                *n += 1;
            } else if self.pending.len() < MAX_PENDING_ADDRESSES {
                self.pending.insert(ip, 1);
            } else {
                self.lost += 1;
            }
        }
    }

    /// The next attempt after the current backoff, which then doubles
    /// (up to [`RECONNECT_MAX`]).
    fn schedule_retry(&mut self) {
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
    }

    /// One connection attempt (bounded by the connect timeout); logs the
    /// first failure of an outage and the success.
    async fn reconnect(&mut self) {
        match connect(&self.client).await {
            Ok(conn) => {
                if self.connected_once {
                    tracing::info!(redis = %self.addr, "reconnected to Redis");
                } else {
                    tracing::info!(redis = %self.addr, "connected to Redis");
                }
                self.conn = Some(conn);
                self.connected_once = true;
                self.backoff = RECONNECT_MIN;
                self.outage_logged = false;
            }
            Err(reason) => {
                if !self.outage_logged {
                    tracing::warn!(
                        redis = %self.addr,
                        error = %reason,
                        "cannot reach Redis; keeping counts and retrying"
                    );
                    self.outage_logged = true;
                }
                self.schedule_retry();
            }
        }
    }

    /// Writes the pending sums as one pipeline; does nothing while
    /// disconnected (the run loop reconnects).
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(conn) = &mut self.conn else {
            return;
        };
        let mut pipe = redis::pipe();
        for (ip, n) in &self.pending {
            pipe.cmd("HINCRBY")
                .arg(HASH_KEY)
                .arg(ip.to_string())
                .arg(*n)
                .ignore();
        }
        let result = match timeout(RESPONSE_TIMEOUT, pipe.query_async::<()>(conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {RESPONSE_TIMEOUT:?}")),
        };
        if let Err(reason) = result {
            let lost: u64 = self.pending.values().map(|n| n.unsigned_abs()).sum();
            tracing::warn!(
                redis = %self.addr,
                error = %reason,
                lost,
                "Redis pipeline failed; reconnecting"
            );
            self.lost += lost;
            self.conn = None;
            self.outage_logged = true;
            self.retry_at = Instant::now();
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(s: &str) -> (String, u16) {
        let a = RedisAddr::parse(s).unwrap();
        (a.host, a.port)
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_blocks() {
        let (tx, mut rx) = mpsc::channel(2);
        let recorder = Recorder {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            recorder.record(ip);
        }
        assert_eq!(recorder.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.try_recv().unwrap(), ip);
    }

    #[test]
    fn increments_are_summed_per_address_and_bounded() {
        let addr = RedisAddr::parse("127.0.0.1:1").unwrap();
        let mut sink = Sink::new(addr.to_string(), client_for(&addr).unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        sink.add([a, b, a, a].into_iter());
        assert_eq!(sink.pending[&a], 3);
        assert_eq!(sink.pending[&b], 1);
        for i in 0..MAX_PENDING_ADDRESSES as u32 {
            sink.add(std::iter::once(IpAddr::from(i.to_be_bytes())));
        }
        assert_eq!(sink.pending.len(), MAX_PENDING_ADDRESSES);
        assert_eq!(sink.lost, 2, "two new addresses found the map full");
        sink.add(std::iter::once(a));
        assert_eq!(sink.pending[&a], 4, "known addresses still count");
    }

    #[test]
    fn addresses() {
        assert_eq!(parse("redis"), ("redis".into(), 6379));
        assert_eq!(
            parse("redis.default.svc:6380"),
            ("redis.default.svc".into(), 6380)
        );
        assert_eq!(parse("127.0.0.1:1"), ("127.0.0.1".into(), 1));
        assert_eq!(parse("::1"), ("::1".into(), 6379));
        assert_eq!(parse("[::1]:7000"), ("::1".into(), 7000));
        assert_eq!(parse("[::1]"), ("::1".into(), 6379));
        assert_eq!(RedisAddr::parse("[::1]:7000").unwrap().to_string(), "[::1]:7000");
        assert_eq!(RedisAddr::parse("redis").unwrap().to_string(), "redis:6379");
        for bad in [
            "",
            ":6379",
            "redis:",
            "redis:x",
            "redis:0",
            "redis:70000",
            "[::1",
            "[::1]x",
            "a:b:c",
        ] {
            assert!(RedisAddr::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
