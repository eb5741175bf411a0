//! Test harness: the service in-process on a free port, a raw HTTP/1.1
//! client (so bodies are compared byte for byte), the built binary as a
//! child process, a real `redis-server` on a free port, and deadlines.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use translation_api::{spawn, Config, Running};

/// Polls `check` until it holds or `within` has passed; panics with `what`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The service in-process on `127.0.0.1:0` with one worker and `tweak` applied.
pub fn start(tweak: impl FnOnce(&mut Config)) -> Running {
    let mut c = Config::new("127.0.0.1:0".parse().unwrap(), "0.0.1");
    c.workers = 1;
    tweak(&mut c);
    spawn(c).expect("translation-api starts")
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// Sends `GET path` with `extra` header lines and `Connection: close`.
pub fn get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Resp {
    request(addr, "GET", path, extra)
}

pub fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_with(&buf, method != "HEAD")
}

/// Writes `bytes` on a new connection and reads the response until close.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    read_response(&mut s)
}

/// Reads one response until the server closes the connection.
pub fn read_response(s: &mut TcpStream) -> Resp {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> Resp {
    parse_with(buf, true)
}

/// Parses a response; `check_length`: the body is as long as `Content-Length` says.
pub fn parse_with(buf: &[u8], check_length: bool) -> Resp {
    let text = String::from_utf8(buf.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect::<HashMap<_, _>>();
    if let Some(len) = headers.get("content-length").filter(|_| check_length) {
        assert_eq!(
            body.len(),
            len.parse::<usize>().unwrap(),
            "content-length matches the body"
        );
    }
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Whether a new connection to `addr` is refused (the listener is closed).
pub fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

/// Bytes the server side of the IPv4 connection `server` ⇄ `client` has
/// received but its process has not read yet (from `/proc/net/tcp`);
/// `None` if there is no such connection.
pub fn unread_by_server(server: SocketAddr, client: SocketAddr) -> Option<u32> {
    fn parse_addr(field: &str) -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
        Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
    }
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if parse_addr(f.get(1)?)? != server || parse_addr(f.get(2)?)? != client {
            return None;
        }
        let (_, rx) = f.get(4)?.split_once(':')?;
        u32::from_str_radix(rx, 16).ok()
    })
}

/// Writes `bytes` one at a time and waits until the server has read them
/// all: the request is then provably under way on the server side.
pub fn send_and_wait_read(s: &mut TcpStream, bytes: &[u8]) {
    for b in bytes {
        s.write_all(&[*b]).unwrap();
    }
    let (server, client) = (s.peer_addr().unwrap(), s.local_addr().unwrap());
    wait_until(Duration::from_secs(10), "the server read the bytes", || {
        unread_by_server(server, client) == Some(0)
    });
}

/// A loopback port that was free a moment ago (nothing listens on it now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The built binary running as a child process, its stdout collected.
pub struct Proc {
    pub child: Child,
    /// Everything read from stdout so far; all of it once `wait_exit` returned.
    pub stdout: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `translation-api args...` with `env` set (and `REDIS_ADDR`,
    /// `APP_VERSION`, `RUST_LOG` cleared unless given).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_translation-api"));
        cmd.args(args)
            .env_remove("REDIS_ADDR")
            .env_remove("APP_VERSION")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = stdout.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc {
            child,
            stdout,
            reader: Some(reader),
        }
    }

    /// Waits for the "listening" log line and returns the address in it.
    pub fn addr(&self) -> SocketAddr {
        let mut found = None;
        wait_until(Duration::from_secs(10), "the listening line", || {
            let out = self.stdout.lock().unwrap();
            found = out
                .lines()
                .find(|l| l.contains("listening"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            found.is_some()
        });
        found.unwrap()
    }

    /// Sends `SIG<sig>` (the shell's built-in `kill`: no procps needed).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit (at most `within`) and for the end of its stdout,
    /// returning the exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Read stdout to its end before anyone looks at it.
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the process did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut s).unwrap();
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real `redis-server` on a free loopback port, no persistence, in a
/// temp dir; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

pub fn redis_server_bin() -> PathBuf {
    for p in [
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        "/usr/sbin/redis-server",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    PathBuf::from("redis-server")
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
        };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(redis_server_bin())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (cargo xtask test installs it)");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            self.ping()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        client.get_connection_with_timeout(Duration::from_secs(1)).ok()
    }

    pub fn ping(&self) -> bool {
        self.conn()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
            .is_some_and(|p| p == "PONG")
    }

    /// `HGET requests_by_ip <ip>`.
    pub fn count(&self, ip: &str) -> Option<i64> {
        let mut c = self.conn().expect("redis is up");
        redis::cmd("HGET")
            .arg("requests_by_ip")
            .arg(ip)
            .query(&mut c)
            .unwrap()
    }

    /// `HGETALL requests_by_ip`.
    pub fn all(&self) -> HashMap<String, i64> {
        let mut c = self.conn().expect("redis is up");
        redis::cmd("HGETALL").arg("requests_by_ip").query(&mut c).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `rest` of a request a byte at a time (a slow client), then reads
/// the whole answer until the server closes the connection.
pub fn finish_slowly(s: &mut TcpStream, rest: &[u8]) -> Resp {
    use std::io::{Read, Write};
    for b in rest {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse(&buf)
}
