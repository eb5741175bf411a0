//! Helpers for the bench binaries' tests: real servers in-process, the
//! binaries as child processes, their output read line by line with deadlines.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A real translation-api answering `/version` with `version`.
pub fn api(version: &str) -> translation_api::Running {
    let mut c = translation_api::Config::new("127.0.0.1:0".parse().unwrap(), version);
    c.workers = 1;
    translation_api::spawn(c).expect("translation-api starts")
}

/// A switchyard in a temp dir (plain files, `persist = true`) in front of
/// `blue` (active) and `green`.
pub struct TestProxy {
    pub proxy: switchyard::Proxy,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    pub fn start(blue: SocketAddr, green: SocketAddr) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("upstreams.toml"),
            format!(
                "active = \"blue\"\n[pools.blue]\nendpoints = [\"{blue}\"]\n[pools.green]\nendpoints = [\"{green}\"]\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("proxy.toml"),
            "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\npersist = true\n\
             [upstreams]\nfile = \"upstreams.toml\"\n[log]\naccess = false\n",
        )
        .unwrap();
        let proxy = switchyard::Proxy::start(&dir.path().join("proxy.toml")).expect("switchyard starts");
        TestProxy { proxy, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.http_addr())
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.proxy.admin_addr())
    }
}

/// A child process whose stdout is collected line by line.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `pred` (returned), or panics at the deadline.
    pub fn wait_line(&mut self, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line {what} within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends SIGINT, waits for the exit (with a deadline) and returns the exit
    /// status and every line of output.
    pub fn interrupt(self, timeout: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -INT failed");
        self.finish(timeout)
    }

    /// Waits for the exit (killing the child at the deadline) and returns
    /// the exit status and every line of output.
    pub fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "did not exit within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader ends at EOF once the child is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value after `key: ` on the line that starts with it.
pub fn field<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}
