//! The load generator: N keep-alive HTTP/1.1 connections, one per worker,
//! on their own threads and runtimes, recording one [`Sample`] per request.
//!
//! - Closed loop (no rate): each worker sends its next request as soon as
//!   the previous one is answered — as fast as the machine allows.
//! - Open loop (`rate`): requests have fixed intended send times
//!   (`start + i / rate`) shared by all workers; a worker that falls behind
//!   sends late, and the latency is counted from the intended time, so a
//!   slow server cannot hide the queueing it causes (coordinated omission).
//!
//! Each worker drives its own `hyper::client::conn::http1` connection in
//! its own task (no separate connection task), so the send time taken just
//! before `send_request` is taken just before the first byte is written.
//! A failed request is recorded and the worker reconnects; nothing is fatal.
//! The proxy's `X-Switchyard-Pool` header, when present, is recorded too.
//! With [`LoadConfig::cookie`] each worker keeps one cookie (a jar of one):
//! the value the last `Set-Cookie` of that name gave it, sent back on its
//! following requests, across reconnects.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE, HOST, SET_COOKIE};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::sample::{parse_version, Sample, VersionInterner};
use crate::target::Target;

/// The header in which switchyard names the pool that answered.
static POOL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-pool");

/// Where each worker puts its samples. One sink per worker, so recording
/// needs no lock; the sinks are handed back by [`LoadGen::stop`].
pub trait Sink: Send + 'static {
    /// Called once per finished request, on the worker's thread.
    fn record(&mut self, sample: Sample);
}

impl Sink for Vec<Sample> {
    fn record(&mut self, sample: Sample) {
        self.push(sample);
    }
}

/// A sink that keeps every sample and counts them in a counter others can
/// read while the load runs (a progress bar, a test waiting for progress).
#[derive(Debug)]
pub struct Recorder {
    /// Every sample of this worker, in order.
    pub samples: Vec<Sample>,
    /// Bumped once per sample; may be shared by several recorders.
    pub count: Arc<AtomicU64>,
}

impl Recorder {
    /// An empty recorder that bumps `count` per sample.
    pub fn new(count: Arc<AtomicU64>) -> Self {
        Self {
            samples: Vec::new(),
            count,
        }
    }
}

impl Sink for Recorder {
    fn record(&mut self, sample: Sample) {
        self.samples.push(sample);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// How to generate load.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The URL every request asks for.
    pub target: Target,
    /// Number of connections (= workers), each with one request in flight.
    pub concurrency: usize,
    /// Requests per second for the whole generator (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    /// OS threads, each with a `current_thread` runtime; workers are spread over them.
    pub threads: usize,
    /// A request not answered within this is failed and its connection dropped.
    pub request_timeout: Duration,
    /// Pause after a failed connect before the worker tries again (closed loop),
    /// so a server that is down is not hammered by a busy loop.
    pub reconnect_backoff: Duration,
    /// HTTPS: each connection makes a TLS handshake with this configuration
    /// (server name: the target's host; HTTP/1.1 over it) before its
    /// requests. `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Run for this long, then claim no new request: in the open loop no
    /// slot due at or after the end is sent (so a run of `rate` × `duration`
    /// sends exactly that many, however late the machine is), in the closed
    /// loop no request starts after it. In-flight requests finish.
    /// [`LoadGen::finished`] turns true once every worker is done.
    /// `None`: until [`LoadGen::stop`].
    pub duration: Option<Duration>,
    /// Keep this one cookie, per worker: the value the last `Set-Cookie` of
    /// this name gave the worker is sent back as `Cookie: NAME=value` on its
    /// next requests (on any of its connections; an empty value forgets
    /// it), and recorded as [`Sample::cookie`]. `None`: no `Cookie` header,
    /// `Set-Cookie` is not looked at.
    pub cookie: Option<String>,
}

impl LoadConfig {
    /// Closed loop, one thread, 10 s request timeout, 10 ms reconnect backoff.
    pub fn new(target: Target, concurrency: usize) -> Self {
        Self {
            target,
            concurrency,
            rate: None,
            threads: 1,
            request_timeout: Duration::from_secs(10),
            reconnect_backoff: Duration::from_millis(10),
            tls: None,
            duration: None,
            cookie: None,
        }
    }
}

/// A running load generator. [`stop`](Self::stop) it to get the sinks back;
/// dropping it stops it too (and waits for the workers).
pub struct LoadGen<S> {
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<Vec<(usize, S)>>>,
}

/// What all workers share.
struct Shared {
    cfg: LoadConfig,
    clock: Clock,
    host: HeaderValue,
    /// Open loop: the next slot in the schedule, claimed by whichever worker is free.
    next_slot: AtomicU64,
    /// Open loop: when slot 0 is due.
    start_ns: u64,
    /// `start_ns + duration`: no request is claimed at or after it.
    end_ns: Option<u64>,
}

impl<S: Sink> LoadGen<S> {
    /// Starts `cfg.concurrency` workers; `make_sink(i)` makes worker `i`'s sink.
    pub fn start(
        cfg: LoadConfig,
        clock: Clock,
        mut make_sink: impl FnMut(usize) -> S,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(cfg.concurrency > 0, "concurrency must be at least 1");
        if let Some(rate) = cfg.rate {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "rate must be a positive number");
        }
        let threads = cfg.threads.clamp(1, cfg.concurrency);
        let host = HeaderValue::from_str(&cfg.target.authority)?;
        let (stop, stop_rx) = watch::channel(false);
        let start_ns = clock.now_ns();
        let end_ns = cfg
            .duration
            .map(|d| start_ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
        let shared = Arc::new(Shared {
            start_ns,
            end_ns,
            cfg,
            clock,
            host,
            next_slot: AtomicU64::new(0),
        });
        let mut per_thread: Vec<Vec<(usize, S)>> = (0..threads).map(|_| Vec::new()).collect();
        for i in 0..shared.cfg.concurrency {
            per_thread[i % threads].push((i, make_sink(i)));
        }
        let mut handles = Vec::with_capacity(threads);
        for (t, sinks) in per_thread.into_iter().enumerate() {
            let shared = shared.clone();
            let stop_rx = stop_rx.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let mut set = tokio::task::JoinSet::new();
                        for (i, mut sink) in sinks {
                            let shared = shared.clone();
                            let stop_rx = stop_rx.clone();
                            set.spawn(async move {
                                worker(&shared, stop_rx, &mut sink).await;
                                (i, sink)
                            });
                        }
                        let mut out = Vec::new();
                        while let Some(r) = set.join_next().await {
                            match r {
                                Ok(done) => out.push(done),
                                Err(e) => std::panic::resume_unwind(e.into_panic()),
                            }
                        }
                        out
                    })
                })?;
            handles.push(handle);
        }
        Ok(Self {
            stop,
            threads: handles,
        })
    }

    /// True once every worker has ended on its own (the end of
    /// [`LoadConfig::duration`]); [`stop`](Self::stop) then returns at once.
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|h| h.is_finished())
    }

    /// Signals the workers to stop, lets in-flight requests finish (each is
    /// bounded by the request timeout) and returns the sinks in worker order.
    pub fn stop(mut self) -> Vec<S> {
        self.join()
    }

    fn join(&mut self) -> Vec<S> {
        let _ = self.stop.send(true);
        let mut all: Vec<(usize, S)> = Vec::new();
        for h in self.threads.drain(..) {
            match h.join() {
                Ok(v) => all.extend(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, s)| s).collect()
    }
}

impl<S> Drop for LoadGen<S> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

type Conn = Connection<TokioIo<Box<dyn Io>>, Empty<Bytes>>;

/// One keep-alive connection: the request handle and the connection state
/// machine, polled by the worker itself.
struct Client {
    sender: SendRequest<Empty<Bytes>>,
    /// `None` once the connection has finished (closed or failed).
    conn: Option<Pin<Box<Conn>>>,
}

async fn connect(target: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> anyhow::Result<Client> {
    let stream = TcpStream::connect(target.connect.as_str()).await?;
    stream.set_nodelay(true)?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(config) => {
            let host = target.authority.parse::<http::uri::Authority>()?;
            let host = host.host().trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            Box::new(connector.connect(name, stream).await?)
        }
    };
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    Ok(Client {
        sender,
        conn: Some(Box::pin(conn)),
    })
}

/// Runs `work` while also driving the connection, until `work` is done.
async fn drive<F: Future>(conn: &mut Option<Pin<Box<Conn>>>, work: F) -> F::Output {
    let mut work = pin!(work);
    loop {
        let Some(c) = conn.as_mut() else {
            return work.await;
        };
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = c.as_mut() => {
                // Closed or failed: dropping it fails whatever is pending on it.
                *conn = None;
            }
        }
    }
}

/// Waits for the worker's next slot; `None` once the generator is stopping.
async fn next_slot(shared: &Shared, stop: &mut watch::Receiver<bool>) -> Option<u64> {
    if *stop.borrow() {
        return None;
    }
    let end = shared.end_ns.unwrap_or(u64::MAX);
    let Some(rate) = shared.cfg.rate else {
        let now = shared.clock.now_ns();
        return (now < end).then_some(now);
    };
    let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
    let due = shared.start_ns + (slot as f64 * 1e9 / rate) as u64;
    if due >= end {
        return None;
    }
    if due > shared.clock.now_ns() {
        let at = tokio::time::Instant::from_std(shared.clock.instant_at(due));
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
    Some(due)
}

async fn worker(shared: &Shared, mut stop: watch::Receiver<bool>, sink: &mut impl Sink) {
    let clock = shared.clock;
    let cfg = &shared.cfg;
    let mut versions = VersionInterner::default();
    let mut pools = VersionInterner::default();
    // The kept cookie: the `Cookie` header to send and its value (interned).
    let mut jar: Option<(HeaderValue, Arc<str>)> = None;
    let mut cookies = VersionInterner::default();
    let jar_name = cfg.cookie.as_deref();
    let mut client: Option<Client> = None;
    while let Some(intended) = next_slot(shared, &mut stop).await {
        // A usable connection: reuse the kept-alive one, else connect.
        // A connection the server closed between requests is not a failure.
        if let Some(c) = client.as_mut() {
            if drive(&mut c.conn, c.sender.ready()).await.is_err() {
                client = None;
            }
        }
        if client.is_none() {
            let sent = clock.now_ns();
            let attempt =
                tokio::time::timeout(cfg.request_timeout, connect(&cfg.target, cfg.tls.as_ref())).await;
            match attempt.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(mut c) => match drive(&mut c.conn, c.sender.ready()).await {
                    Ok(()) => client = Some(c),
                    Err(e) => {
                        record_error(sink, intended, sent, clock.now_ns(), format!("connect: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    record_error(sink, intended, sent, clock.now_ns(), format!("connect: {e}"));
                    if cfg.rate.is_none() {
                        tokio::select! {
                            _ = tokio::time::sleep(cfg.reconnect_backoff) => {}
                            _ = stop.wait_for(|s| *s) => {}
                        }
                    }
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let mut req = Request::get(cfg.target.path.as_str()).header(HOST, shared.host.clone());
        if let Some((header, _)) = &jar {
            req = req.header(COOKIE, header.clone());
        }
        let sent_cookie = jar.as_ref().map(|(_, value)| value.clone());
        let req = req
            .body(Empty::<Bytes>::new())
            .expect("a GET with a parsed path and host is a valid request");
        let sent = clock.now_ns();
        let response = c.sender.send_request(req);
        let work = async {
            let resp = response.await?;
            let status = resp.status().as_u16();
            let pool = resp.headers().get(&POOL_HEADER).cloned();
            // Only when a cookie is kept, and only an answer that sets it allocates.
            let set = jar_name.and_then(|n| set_cookie_value(resp.headers(), n).map(str::to_owned));
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, pool, set, body))
        };
        let result = tokio::time::timeout(cfg.request_timeout, drive(&mut c.conn, work)).await;
        let done = clock.now_ns();
        match result {
            Ok(Ok((status, pool, set, body))) => {
                if let (Some(name), Some(value)) = (jar_name, set) {
                    jar = if value.is_empty() {
                        None
                    } else {
                        HeaderValue::from_str(&format!("{name}={value}"))
                            .ok()
                            .map(|h| (h, cookies.intern(&value)))
                    };
                }
                sink.record(Sample {
                    intended_ns: intended,
                    sent_ns: sent,
                    done_ns: done,
                    status,
                    version: parse_version(&body).map(|v| versions.intern(v)),
                    pool: pool
                        .as_ref()
                        .and_then(|p| p.to_str().ok())
                        .map(|p| pools.intern(p)),
                    cookie: sent_cookie,
                    error: None,
                });
            }
            Ok(Err(e)) => {
                client = None;
                record_error(sink, intended, sent, done, describe(&e));
            }
            Err(_) => {
                client = None;
                record_error(
                    sink,
                    intended,
                    sent,
                    done,
                    format!("timeout after {:?}", cfg.request_timeout),
                );
            }
        }
    }
}

fn record_error(sink: &mut impl Sink, intended: u64, sent: u64, done: u64, error: String) {
    sink.record(Sample {
        intended_ns: intended,
        sent_ns: sent,
        done_ns: done,
        status: 0,
        version: None,
        pool: None,
        cookie: None,
        error: Some(error.into()),
    });
}

/// The value a `Set-Cookie` of `name` among `headers` gives (`name=value;
/// attributes`: the part before the first `;`), if there is one.
pub fn set_cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| {
            let (n, v) = h.split(';').next()?.split_once('=')?;
            (n.trim() == name).then(|| v.trim())
        })
}

/// hyper's error with its cause chain ("connection closed before message completed" etc.).
fn describe(e: &hyper::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_named_set_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(set_cookie_value(&h, "switchyard-pool"), None);
        h.append(SET_COOKIE, HeaderValue::from_static("session=abc; Path=/"));
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("switchyard-pool=green; Path=/; HttpOnly; SameSite=Lax"),
        );
        assert_eq!(set_cookie_value(&h, "switchyard-pool"), Some("green"));
        assert_eq!(set_cookie_value(&h, "session"), Some("abc"));
        assert_eq!(set_cookie_value(&h, "switchyard"), None);
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("pool=; Max-Age=0"));
        assert_eq!(set_cookie_value(&h, "pool"), Some(""));
    }
}
