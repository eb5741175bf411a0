//! Test harness: real translation-api upstreams, small real test servers
//! (echo, slow, upgrade), a switchyard on free ports in a temp config dir,
//! a keep-alive load generator that records every request, and deadlines.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1 as client_http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use switchyard::config::Settings;
use switchyard::Proxy;
use tokio::net::TcpStream;

/// A real translation-api answering `/version` with `version`.
pub fn api(version: &str) -> translation_api::Running {
    let mut c = translation_api::Config::new("127.0.0.1:0".parse().unwrap(), version);
    c.workers = 1;
    translation_api::spawn(c).expect("translation-api starts")
}

/// Blue (`0.0.1`) and green (`0.0.2`) translation-apis and a switchyard in
/// front of them with blue active; `extra` as for [`TestProxy::start`].
pub fn blue_green_proxy(extra: &str) -> (translation_api::Running, translation_api::Running, TestProxy) {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let tp = TestProxy::start(&two_pools("blue", blue.addr(), green.addr()), extra);
    (blue, green, tp)
}

/// A switchyard in a temp dir, with its files.
pub struct TestProxy {
    pub proxy: Option<Proxy>,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts a proxy with `upstreams` as the upstreams file and `extra`
    /// appended to a minimal proxy.toml (e.g. "[admin]\npersist = true").
    pub fn start(upstreams: &str, extra: &str) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("upstreams.toml"), upstreams).unwrap();
        Self::start_in(dir, "upstreams.toml", extra)
    }

    /// Starts a proxy whose upstreams file is `upstreams_rel` inside `dir`.
    pub fn start_in(dir: tempfile::TempDir, upstreams_rel: &str, extra: &str) -> TestProxy {
        let admin_section = if extra.contains("[admin]") {
            ""
        } else {
            "[admin]\nlisten = \"127.0.0.1:0\"\n"
        };
        let extra = extra.replace("[admin]", "[admin]\nlisten = \"127.0.0.1:0\"");
        let text = format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\n{admin_section}[upstreams]\nfile = \"{upstreams_rel}\"\nreread = \"1h\"\n[log]\naccess = false\n{extra}\n"
        );
        std::fs::write(dir.path().join("proxy.toml"), text).unwrap();
        let settings = Settings::load(&dir.path().join("proxy.toml")).unwrap();
        let proxy = Proxy::start_with(settings, 2).unwrap();
        TestProxy {
            proxy: Some(proxy),
            dir,
        }
    }

    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy().http_addr(), path)
    }

    pub fn admin(&self) -> SocketAddr {
        self.proxy().admin_addr()
    }

    pub fn upstreams_path(&self) -> PathBuf {
        self.dir.path().join("upstreams.toml")
    }

    pub fn generation(&self) -> u64 {
        self.proxy().shared().table.load().generation
    }

    pub fn active(&self) -> String {
        self.proxy().shared().table.load().active_pool().name.clone()
    }

    /// The metrics as rendered now, without asking the cores for what they
    /// buffer: for the control-plane series (reloads, switches), in sync code.
    pub fn control_metrics(&self) -> String {
        String::from_utf8(self.proxy().shared().metrics.render()).unwrap()
    }

    /// The metrics as a scrape sees them.
    pub async fn metrics(&self) -> String {
        String::from_utf8(self.proxy().shared().render_metrics().await).unwrap()
    }
}

/// Two-pool upstreams file.
pub fn two_pools(active: &str, blue: SocketAddr, green: SocketAddr) -> String {
    format!("# test upstreams\nactive = \"{active}\"\n\n[pools.blue]\nendpoints = [\"{blue}\"]\n\n[pools.green]\nendpoints = [\"{green}\"]\n")
}

/// Value of a metric line (exact series text before the value).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until `cond` holds or panics after `timeout`.
pub async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut cond: F) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: client_http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = client_http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Client {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends a request; returns status, headers and the whole body.
    pub async fn send(
        &mut self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut()
                .insert(http::header::HOST, self.host.parse().unwrap());
        }
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
        self.send(Request::get(path).body(Full::default()).unwrap()).await
    }
}

/// An admin call: method, path, optional JSON body, optional token.
pub async fn admin(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut c = Client::connect(addr).await.unwrap();
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let (status, _, body) = c
        .send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status.as_u16(), json)
}

/// One request recorded by [`Load`]: times relative to the load's start.
#[derive(Debug, Clone)]
pub struct Sample {
    pub conn: usize,
    pub sent: Instant,
    pub answered: Instant,
    pub ok: bool,
    pub status: u16,
    pub pool: String,
    pub version: String,
    pub error: String,
}

/// Keep-alive load: `conns` connections opened up front, each sending
/// `path` in a loop until stopped; every request is recorded.
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub async fn start(addr: SocketAddr, conns: usize, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for conn in 0..conns {
            let mut client = Client::connect(addr).await.unwrap();
            let stop = Arc::clone(&stop);
            let samples = Arc::clone(&samples);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = client.get(path).await;
                    let answered = Instant::now();
                    let s = match r {
                        Ok((status, headers, body)) => Sample {
                            conn,
                            sent,
                            answered,
                            ok: status.is_success(),
                            status: status.as_u16(),
                            pool: headers
                                .get("x-switchyard-pool")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default(),
                            version: serde_json::from_slice::<serde_json::Value>(&body)
                                .ok()
                                .and_then(|v| v["version"].as_str().map(str::to_string))
                                .unwrap_or_default(),
                            error: String::new(),
                        },
                        Err(e) => Sample {
                            conn,
                            sent,
                            answered,
                            ok: false,
                            status: 0,
                            pool: String::new(),
                            version: String::new(),
                            error: e,
                        },
                    };
                    let failed = !s.ok;
                    samples.lock().unwrap().push(s);
                    if failed {
                        // Reconnect, as a real client would.
                        match Client::connect(addr).await {
                            Ok(c) => client = c,
                            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                }
            }));
        }
        Load { stop, samples, tasks }
    }

    pub fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Waits until at least `n` more requests were recorded.
    pub async fn wait_more(&self, n: usize) {
        let target = self.count() + n;
        wait_until(Duration::from_secs(20), "load progress", || {
            self.count() >= target
        })
        .await;
    }

    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

/// Asserts no request failed, printing the first failures.
pub fn assert_no_failures(samples: &[Sample]) {
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed; first: {:?}",
        failed.len(),
        samples.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
}

/// Runs a small real HTTP/1.1 server on 127.0.0.1:0 with `handler`.
pub async fn serve<F, Fut>(handler: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut:
        Future<Output = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

/// A full body for [`serve`] handlers.
pub fn full(b: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, hyper::Error> {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Path of a file inside a dir, as a string.
pub fn p(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A raw TCP upstream on 127.0.0.1:0 (a thread per connection): reads one
/// request head, then hands the stream and the head (lower-cased) to `then`.
pub fn raw_upstream(then: fn(std::net::TcpStream, String)) -> SocketAddr {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                then(s, String::from_utf8_lossy(&got).to_lowercase());
            });
        }
    });
    addr
}

/// An upstreams file with one active pool, `blue`, of one endpoint.
pub fn blue_pool(endpoint: impl std::fmt::Display) -> String {
    format!("active = \"blue\"\n[pools.blue]\nendpoints = [\"{endpoint}\"]\n")
}
