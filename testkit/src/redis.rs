//! A real `redis-server` on loopback, no persistence, in a temp dir;
//! killed on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::net::ClosedPort;
use crate::wait::wait_until;

/// A running (or stopped, to be restarted) `redis-server`.
pub struct Redis {
    /// Its port: reserved before the server starts (see [`ClosedPort::reusable`]).
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Holds the port (refusing connections) until the first start.
    reserved: Option<ClosedPort>,
}

/// Where `redis-server` is installed (`cargo xtask test` installs it).
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
    /// Starts a server on a port reserved for it (no free-port race) and
    /// waits until it answers `PING`.
    pub fn start() -> Redis {
        let mut r = Redis::reserved();
        r.restart();
        r
    }

    /// A server not started yet: its port is reserved (bound, not
    /// listening, so connecting is refused and nobody else takes it) until
    /// [`Redis::restart`] starts it there. For "Redis is away at start".
    pub fn reserved() -> Redis {
        // Held, not listening, while the server binds the port beside it.
        let reserved = ClosedPort::reusable();
        Redis {
            port: reserved.port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            reserved: Some(reserved),
        }
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
        self.reserved = None;
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        client.get_connection_with_timeout(Duration::from_secs(1)).ok()
    }

    /// Whether it answers `PING`.
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
