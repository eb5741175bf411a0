//! A built binary as a child process: stdout and stderr collected line by
//! line, the address it listens on read from its "listening" log line (so
//! it can bind port 0: no free-port race), signals, a bounded wait for the
//! exit, and a kill on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{ProxyConfig, ProxyFiles};
use crate::wait::Poll;

/// A running child process; killed (and reaped) on drop.
pub struct Proc {
    child: Child,
    /// Every stdout line read so far; complete once [`Proc::wait_exit`] returned.
    stdout: Arc<Mutex<Vec<String>>>,
    /// Every stderr line read so far; complete once [`Proc::wait_exit`] returned.
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    /// Lines before this index were already matched by [`Proc::next_line`].
    cursor: usize,
    /// The exit status, once seen.
    exited: Option<ExitStatus>,
}

/// Reads `from` line by line (lossily, so a stray byte ends nothing) into `into`.
fn collect(from: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(from);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    into.lock()
                        .unwrap()
                        .push(line.trim_end_matches(['\n', '\r']).to_string());
                }
            }
        }
    })
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout and stderr collected.
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Proc {
            child,
            stdout,
            stderr,
            readers,
            cursor: 0,
            exited: None,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Every stdout line so far, joined with newlines.
    pub fn stdout(&self) -> String {
        self.stdout_lines().join("\n")
    }

    /// Every stderr line so far, joined with newlines.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// How many stdout lines so far satisfy `pred`.
    pub fn count_lines(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.stdout.lock().unwrap().iter().filter(|l| pred(l)).count()
    }

    /// Waits for a stdout line satisfying `pred` after the one the previous
    /// call matched, and returns it; panics after `within` with the output.
    pub fn next_line(&mut self, within: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let poll = Poll::new(within, &format!("a line {what}"));
        loop {
            {
                let lines = self.stdout.lock().unwrap();
                if let Some(i) = lines[self.cursor..].iter().position(|l| pred(l)) {
                    self.cursor += i + 1;
                    return lines[self.cursor - 1].clone();
                }
            }
            if self.exited.is_none() {
                self.exited = self.child.try_wait().unwrap();
            }
            if let Some(status) = self.exited {
                self.join_readers();
                let lines = self.stdout.lock().unwrap();
                if let Some(i) = lines[self.cursor..].iter().position(|l| pred(l)) {
                    self.cursor += i + 1;
                    return lines[self.cursor - 1].clone();
                }
                panic!(
                    "exited ({status}) without a line {what}; stdout:\n{}\nstderr:\n{}",
                    lines.join("\n"),
                    self.stderr()
                );
            }
            if poll.expired() {
                poll.fail(&format!(
                    "\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                ));
            }
            std::thread::sleep(poll.next_pause());
        }
    }

    /// The address in the field `field` of the process's first log line that
    /// says "listening" (text `field=ADDR` or JSON `"field":"ADDR"`); waits
    /// up to 10 s for it.
    pub fn listening_addr(&self, field: &str) -> SocketAddr {
        let mut found = None;
        let poll = Poll::new(Duration::from_secs(10), &format!("a listening line with {field}"));
        while found.is_none() {
            found = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("listening"))
                .find_map(|l| field_value(l, field)?.parse().ok());
            if found.is_none() {
                std::thread::sleep(poll.next_pause());
            }
        }
        found.unwrap()
    }

    /// Sends `SIG<sig>` ("TERM", "INT", "HUP") with the shell's built-in `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.child.id())])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.child.id());
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited.is_none()
    }

    /// Waits for the exit (killing the process and panicking after `within`)
    /// and for the end of its output; returns the exit status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let poll = Poll::new(within, &format!("process {} to exit", self.child.id()));
        let status = loop {
            if let Some(s) = self.exited.or(self.child.try_wait().unwrap()) {
                break s;
            }
            if poll.expired() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_readers();
                poll.fail(&format!(
                    " (killed)\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                ));
            }
            std::thread::sleep(poll.next_pause());
        };
        self.exited = Some(status);
        self.join_readers();
        status
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of `field` in a log line: `field=VALUE` (text) or
/// `"field":"VALUE"` (JSON).
pub fn field_value<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    if let Some(rest) = line.split(&format!("\"{field}\":\"")).nth(1) {
        return rest.split('"').next();
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(field)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

/// A `switchyard` binary running from the files a [`ProxyConfig`] wrote,
/// with the two addresses its "listening" line names.
pub struct Switchyard {
    /// The process; its log lines (text, on stdout) are collected.
    pub proc: Proc,
    /// Its configuration files (kept while it runs).
    pub files: ProxyFiles,
    /// The data listener.
    pub http: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The HTTPS listener, when configured.
    pub https: Option<SocketAddr>,
}

impl Switchyard {
    /// Starts the binary `bin` (the proxy's tests pass
    /// `env!("CARGO_BIN_EXE_switchyard")`) with `-c` the written `proxy.toml`
    /// and the default log level, and waits for its "listening" line.
    pub fn start(bin: &str, config: ProxyConfig) -> Switchyard {
        Self::start_under(&[], bin, config)
    }

    /// As [`Switchyard::start`], run under a wrapper command that execs it
    /// (`["taskset", "-c", "0"]`, `["prlimit", "--nofile=64:64"]`).
    pub fn start_under(wrapper: &[&str], bin: &str, config: ProxyConfig) -> Switchyard {
        let files = config.write();
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
        };
        cmd.arg("-c").arg(&files.proxy_toml).env_remove("RUST_LOG");
        let proc = Proc::spawn(cmd);
        let http = proc.listening_addr("http_addr");
        let admin = proc.listening_addr("admin_addr");
        let https = proc
            .stdout_lines()
            .iter()
            .filter(|l| l.contains("listening"))
            .find_map(|l| field_value(l, "https_addr")?.parse().ok());
        Switchyard {
            proc,
            files,
            http,
            admin,
            https,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_text_and_json_lines() {
        let text = "2026-01-01T00:00:00Z  INFO switchyard: switchyard listening http_addr=127.0.0.1:4000 admin_addr=127.0.0.1:4001 cores=2";
        assert_eq!(field_value(text, "http_addr"), Some("127.0.0.1:4000"));
        assert_eq!(field_value(text, "admin_addr"), Some("127.0.0.1:4001"));
        let json = r#"{"level":"INFO","message":"listening","addr":"127.0.0.1:9","version":"0.0.1"}"#;
        assert_eq!(field_value(json, "addr"), Some("127.0.0.1:9"));
        assert_eq!(field_value(text, "addr"), None);
    }

    #[test]
    fn a_child_is_read_line_by_line_and_exits() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo one; echo 'x listening addr=127.0.0.1:7'; echo err >&2; exit 3",
        ]);
        let mut p = Proc::spawn(cmd);
        assert_eq!(p.listening_addr("addr"), "127.0.0.1:7".parse().unwrap());
        assert_eq!(p.next_line(Duration::from_secs(5), "one", |l| l == "one"), "one");
        assert_eq!(p.wait_exit(Duration::from_secs(5)).code(), Some(3));
        assert_eq!(p.stderr(), "err");
        assert_eq!(p.count_lines(|l| l.contains("listening")), 1);
    }
}
