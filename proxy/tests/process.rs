//! The `switchyard` binary as a process: graceful SIGTERM, SIGHUP, `check`,
//! exit codes, and bounded memory while streaming large bodies.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes proxy.toml + upstreams.toml into `dir` with fixed free ports and
/// starts the binary, its log going to `dir/switchyard.log`.
fn spawn_proxy(dir: &Path, upstreams: &str, extra: &str) -> (Proc, u16, u16) {
    let (http, admin) = (free_port(), free_port());
    std::fs::write(dir.join("upstreams.toml"), upstreams).unwrap();
    std::fs::write(
        dir.join("proxy.toml"),
        format!(
            "[listen]\nhttp = \"127.0.0.1:{http}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[upstreams]\nfile = \"upstreams.toml\"\n[log]\naccess = false\n{extra}\n"
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["-c", dir.join("proxy.toml").to_str().unwrap()])
        .stdout(std::fs::File::create(dir.join("switchyard.log")).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(Instant::now() < deadline, "the proxy did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (Proc(child), http, admin)
}

fn signal(p: &Proc, sig: &str) {
    assert!(Command::new("kill")
        .args(["-s", sig, &p.0.id().to_string()])
        .status()
        .unwrap()
        .success());
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_refuses_and_exits_0() {
    // An upstream whose answers take 1.5 s.
    let (up, _t) = serve(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(full("slow but complete"))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, http, admin_port) = spawn_proxy(
        dir.path(),
        &blue_pool(up),
        "[timeouts]\nshutdown_delay = \"500ms\"\nshutdown = \"10s\"",
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    let admin_addr: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let mut inflight = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(addr).await.unwrap();
        inflight.push(tokio::spawn(async move { c.get("/slow").await }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&proc, "TERM");
    // During the delay: /readyz 503, still serving new connections.
    wait_until(Duration::from_secs(2), "readyz 503", || {
        std::thread::sleep(Duration::from_millis(20));
        let mut s = std::net::TcpStream::connect(admin_addr).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /readyz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 503")
    })
    .await;
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "still accepting during shutdown_delay"
    );
    // After the delay: new connections refused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "stopped accepting after the delay"
    );
    for r in inflight {
        let (status, _, body) = r.await.unwrap().expect("an in-flight request is never cut");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"slow but complete"[..]));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_file() {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let dir = tempfile::tempdir().unwrap();
    let (proc, http, _) = spawn_proxy(dir.path(), &two_pools("blue", blue.addr(), green.addr()), "");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    let mut c = Client::connect(addr).await.unwrap();
    assert_eq!(c.get("/version").await.unwrap().1["x-switchyard-pool"], "blue");
    let log = dir.path().join("switchyard.log");
    let hup_lines = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("SIGHUP: upstreams file re-read")
            .count()
    };
    // SIGHUP re-reads (here: nothing new), and the process lives on.
    signal(&proc, "HUP");
    wait_until(Duration::from_secs(5), "the SIGHUP re-read", || hup_lines() == 1).await;
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("outcome=Unchanged"));
    std::fs::write(
        dir.path().join("upstreams.toml"),
        two_pools("green", blue.addr(), green.addr()),
    )
    .unwrap();
    signal(&proc, "HUP");
    wait_until(Duration::from_secs(5), "the second SIGHUP re-read", || {
        hup_lines() == 2
    })
    .await;
    assert_eq!(c.get("/version").await.unwrap().1["x-switchyard-pool"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    let (up, _t) =
        serve(|req: Request<hyper::body::Incoming>| async move { Response::new(req.into_body().boxed()) })
            .await;
    let dir = tempfile::tempdir().unwrap();
    let (proc, http, _) = spawn_proxy(dir.path(), &blue_pool(up), "");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    let mut c = Client::connect(addr).await.unwrap();
    // Warm up, then measure the peak RSS growth over a 32 MiB upload echoed back as a
    // download: a buffered body would add at least 32 MiB; streaming adds a fixed few.
    c.send(
        Request::post("/")
            .body(Full::new(Bytes::from(vec![1u8; 64 * 1024])))
            .unwrap(),
    )
    .await
    .unwrap();
    let before = vm_hwm_kib(proc.0.id());
    let data = Bytes::from(
        (0..32 * 1024 * 1024u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let (status, _, body) = c
        .send(Request::post("/").body(Full::new(data.clone())).unwrap())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body == data);
    let grew = vm_hwm_kib(proc.0.id()).saturating_sub(before);
    assert!(
        grew < 8 * 1024,
        "peak RSS grew by {grew} KiB for a 32 MiB body: it was buffered"
    );
}

fn check(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("check")
        .args(["-c", dir.join("proxy.toml").to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_lists_every_error_and_start_refuses_with_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"missing-token\"\n[upstreams]\nfile = \"upstreams.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("upstreams.toml"),
        "active = \"purple\"\n[pools.blue]\nendpoints = []\n[pools.green]\nendpoints = [\"127.0.0.1:8082\"]\n",
    )
    .unwrap();
    let (code, out) = check(dir.path(), &["--offline"]);
    assert_ne!(code, 0);
    assert!(out.contains("line 1: active = \"purple\" is not a pool"), "{out}");
    assert!(
        out.contains("line 2: pools.blue: a pool needs at least one endpoint"),
        "{out}"
    );
    assert!(
        !out.contains("missing-token"),
        "--offline skips the token file: {out}"
    );
    let (_, out) = check(dir.path(), &[]);
    assert!(out.contains("missing-token"), "{out}");

    std::fs::write(
        dir.path().join("upstreams.toml"),
        "active = \"green\"\n[pools.blue]\nendpoints = [\"127.0.0.1:8081\"]\n[pools.green]\nendpoints = [\"translation-api-green.default.svc.cluster.local:8080\"]\n",
    )
    .unwrap();
    let (code, out) = check(dir.path(), &["--offline"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(dir.path(), &[]);
    assert_ne!(code, 0, "online, the DNS name and the token are checked: {out}");

    // An unknown key in proxy.toml: the run refuses to start, exit 64, naming it.
    std::fs::write(
        dir.path().join("proxy.toml"),
        "[listen]\nhttp = \"127.0.0.1:0\"\nhtpps = 1\n[upstreams]\nfile = \"upstreams.toml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["-c", dir.path().join("proxy.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("htpps") && err.contains("line 3"), "{err}");
}

#[test]
fn version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("switchyard "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_proxy_for_a_person() {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let dir = tempfile::tempdir().unwrap();
    let (_proc, _, admin_port) = spawn_proxy(dir.path(), &two_pools("blue", blue.addr(), green.addr()), "");
    let admin_addr: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    assert_eq!(
        admin(admin_addr, "POST", "/switch", r#"{"to":"green"}"#, None)
            .await
            .0,
        200
    );
    let out = Command::new(BIN)
        .args(["status", "--admin", &format!("http://{admin_addr}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("active      green  (admin override)"), "{text}");
    assert!(text.contains("previous    blue"), "{text}");
    assert!(text.contains("pool blue       drained"), "{text}");
    assert!(
        text.contains(&format!("  {} healthy=true", green.addr())),
        "{text}"
    );
    // A proxy that is not there: a clear error, non-zero.
    let out = Command::new(BIN)
        .args(["status", "--admin", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to 127.0.0.1:1"));
}
