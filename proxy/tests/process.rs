//! The `switchyard` binary as a process: graceful SIGTERM, SIGHUP, `check`,
//! exit codes, and bounded memory while streaming large bodies.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::*;
use testkit::http::{admin, get, Client};
use testkit::net::{refused, ClosedPort};
use testkit::process::Switchyard;
use testkit::{upstream, wait_until_async};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// The binary running with `config`; it listens on port 0, and its
/// listeners' addresses come from its "switchyard listening" log line.
fn spawn_proxy(config: ProxyConfig) -> Switchyard {
    Switchyard::start(BIN, config)
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
    let up = upstream::slow("/", Duration::from_millis(1500), "slow but complete").await;
    let delay = Duration::from_millis(500);
    let mut p = spawn_proxy(
        ProxyConfig::new()
            .upstreams(Upstreams::blue(up.addr))
            .shutdown_delay(delay)
            .shutdown_timeout(Duration::from_secs(10)),
    );
    let (addr, admin_addr) = (p.http, p.admin);
    let mut inflight = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(addr).await.unwrap();
        inflight.push(tokio::spawn(async move { c.get("/slow").await }));
    }
    // All five have reached the upstream: they are in flight at the signal.
    wait_until_async(Duration::from_secs(5), "five requests at the upstream", || {
        up.received() == 5
    })
    .await;
    let signalled = Instant::now();
    p.proc.signal("TERM");
    // During the delay: /readyz 503, still serving new connections.
    wait_until_async(Duration::from_secs(2), "readyz 503", || {
        get(admin_addr, "/readyz", &[]).status == 503
    })
    .await;
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "still accepting during shutdown_delay"
    );
    // After the delay, and not before: new connections refused.
    wait_until_async(Duration::from_secs(5), "the listener closes", || refused(addr)).await;
    assert!(
        signalled.elapsed() >= delay,
        "stopped accepting {:?} after SIGTERM, before the {delay:?} delay",
        signalled.elapsed()
    );
    for r in inflight {
        let (status, _, body) = r.await.unwrap().expect("an in-flight request is never cut");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"slow but complete"[..]));
    }
    assert_eq!(p.proc.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_file() {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let p =
        spawn_proxy(ProxyConfig::new().upstreams(Upstreams::blue_green("blue", blue.addr(), green.addr())));
    let mut c = Client::connect(p.http).await.unwrap();
    assert_eq!(c.get("/version").await.unwrap().1["x-switchyard-pool"], "blue");
    let hup_lines = || {
        p.proc
            .count_lines(|l| l.contains("SIGHUP: upstreams file re-read"))
    };
    // SIGHUP re-reads (here: nothing new), and the process lives on.
    p.proc.signal("HUP");
    wait_until_async(Duration::from_secs(5), "the SIGHUP re-read", || hup_lines() == 1).await;
    assert!(p.proc.stdout().contains("outcome=Unchanged"));
    std::fs::write(
        &p.files.upstreams_toml,
        Upstreams::blue_green("green", blue.addr(), green.addr()).to_string(),
    )
    .unwrap();
    p.proc.signal("HUP");
    wait_until_async(Duration::from_secs(5), "the second SIGHUP re-read", || {
        hup_lines() == 2
    })
    .await;
    assert_eq!(c.get("/version").await.unwrap().1["x-switchyard-pool"], "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    let p = spawn_proxy(ProxyConfig::new().upstreams(Upstreams::blue(upstream::echo().await)));
    let mut c = Client::connect(p.http).await.unwrap();
    // Warm up, then measure the peak RSS growth over a 32 MiB upload echoed back as a
    // download: a buffered body would add at least 32 MiB; streaming adds a fixed few.
    c.send(
        Request::post("/")
            .body(Full::new(Bytes::from(vec![1u8; 64 * 1024])))
            .unwrap(),
    )
    .await
    .unwrap();
    let before = vm_hwm_kib(p.proc.id());
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
    let grew = vm_hwm_kib(p.proc.id()).saturating_sub(before);
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
    let p =
        spawn_proxy(ProxyConfig::new().upstreams(Upstreams::blue_green("blue", blue.addr(), green.addr())));
    let admin_addr = p.admin;
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
    assert!(text.contains(&format!("  {} unknown", green.addr())), "{text}");
    // A proxy that is not there: a clear error, non-zero.
    let nobody = ClosedPort::new();
    let out = Command::new(BIN)
        .args(["status", "--admin", &format!("http://{}", nobody.addr())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to {}", nobody.addr())),
        "{err}"
    );
}
