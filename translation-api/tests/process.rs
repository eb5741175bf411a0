//! The built binary as a process: flags, environment, signals, exit codes.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::http::get;
use testkit::net::{finish_slowly, refused, send_and_wait_read, ClosedPort};
use testkit::process::Proc;
use testkit::redis::Redis;
use testkit::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_translation-api");

/// Starts `translation-api args...` with `env` set (and `REDIS_ADDR`,
/// `APP_VERSION`, `RUST_LOG` cleared unless given).
fn start(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("REDIS_ADDR")
        .env_remove("APP_VERSION")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(cmd)
}

/// The address of the service's "listening" log line.
fn addr(p: &Proc) -> SocketAddr {
    p.listening_addr("addr")
}

#[test]
fn version_flag_and_app_version_override() {
    let out = Command::new(BIN)
        .arg("--version")
        .env_remove("APP_VERSION")
        .output()
        .unwrap();
    assert!(out.status.success());
    let built = option_env!("TRANSLATION_API_VERSION")
        .filter(|v| !v.is_empty())
        .unwrap_or("0.0.1");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("translation-api {built}\n")
    );

    let out = Command::new(BIN)
        .arg("--version")
        .env("APP_VERSION", "3.1.4-green")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "translation-api 3.1.4-green\n"
    );

    let p = start(&["--listen", "127.0.0.1:0"], &[("APP_VERSION", "3.1.4-green")]);
    let r = get(addr(&p), "/version", &[]);
    assert_eq!(r.body, r#"{"version":"3.1.4-green","errors":[]}"#);
}

#[test]
fn sigterm_mid_request_lets_the_request_complete_and_exits_0() {
    let mut p = start(&["--listen", "127.0.0.1:0"], &[]);
    let addr = addr(&p);
    let request = b"GET /api/v1/translate?phrase=Victory+or+Death HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A slow client is sending its request when SIGTERM arrives (the first
    // bytes provably read by the service)...
    send_and_wait_read(&mut s, &request[..15]);
    p.signal("TERM");
    // ...the service stops accepting while the request is still arriving...
    wait_until(Duration::from_secs(10), "the listener closes", || refused(addr));
    assert!(p.running(), "exited with a request in flight");
    // ...and still answers it in full before exiting 0.
    let r = finish_slowly(&mut s, &request[15..]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        r#"{"phrase":"Victory or Death","translation":"Lok'Tar Ogar","errors":[]}"#
    );
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let out = p.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("path=/api/v1/translate?phrase=Victory+or+Death"))
        .unwrap_or_else(|| panic!("no access line in:\n{out}"));
    for field in ["client=127.0.0.1", "method=GET", "status=200", "duration_ms="] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[test]
fn sigint_with_shutdown_delay_keeps_serving_then_exits_0() {
    let mut p = start(&["--listen", "127.0.0.1:0", "--shutdown-delay", "2s"], &[]);
    let addr = addr(&p);
    assert_eq!(get(addr, "/readyz", &[]).status, 200);
    let begun = Instant::now();
    p.signal("INT");
    wait_until(Duration::from_secs(5), "/readyz is 503", || {
        get(addr, "/readyz", &[]).status == 503
    });
    assert_eq!(get(addr, "/api/v1/translate?phrase=Hey", &[]).status, 200);
    assert_eq!(p.wait_exit(Duration::from_secs(15)).code(), Some(0));
    assert!(
        begun.elapsed() >= Duration::from_secs(2),
        "exited after {:?}",
        begun.elapsed()
    );
}

#[test]
fn a_second_signal_exits_at_once_with_1() {
    let mut p = start(&["--listen", "127.0.0.1:0", "--shutdown-delay", "60s"], &[]);
    let addr = addr(&p);
    p.signal("TERM");
    wait_until(Duration::from_secs(5), "/readyz is 503", || {
        get(addr, "/readyz", &[]).status == 503
    });
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(5)).code(), Some(1));
}

#[test]
fn access_log_false_writes_no_request_lines() {
    let mut p = start(&["--listen", "127.0.0.1:0", "--access-log=false"], &[]);
    let addr = addr(&p);
    for _ in 0..3 {
        assert_eq!(get(addr, "/version", &[]).status, 200);
    }
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let out = p.stdout();
    assert!(out.contains("stopped"), "the log was flushed:\n{out}");
    assert!(
        !out.contains("path=/version"),
        "access lines were written:\n{out}"
    );
}

#[test]
fn json_log_format() {
    let mut p = start(&["--listen", "127.0.0.1:0", "--log-format", "json"], &[]);
    // The listening line's address is a JSON field here.
    let addr = addr(&p);
    let listening = p
        .stdout_lines()
        .into_iter()
        .find(|l| l.contains("listening"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&listening).unwrap();
    assert_eq!(v["addr"], addr.to_string(), "{listening}");
    get(addr, "/api/v1/translate?phrase=Nope", &[]);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let out = p.stdout();
    let access: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "access")
        .unwrap_or_else(|| panic!("no access line in:\n{out}"));
    assert_eq!(access["status"], 404);
    assert_eq!(access["path"], "/api/v1/translate?phrase=Nope");
    assert_eq!(access["client"], "127.0.0.1");
}

#[test]
fn redis_away_at_start_serves_warns_and_counts_once_redis_comes() {
    // The port is reserved but nothing listens: connecting is refused.
    let mut redis = Redis::reserved();
    let mut p = start(&["--listen", "127.0.0.1:0"], &[("REDIS_ADDR", &redis.addr())]);
    let addr = addr(&p);
    let warning = p.next_line(Duration::from_secs(10), "warning that Redis is away", |l| {
        l.contains("WARN") && l.contains(&redis.addr())
    });
    assert!(warning.contains("background"), "{warning}");
    for _ in 0..3 {
        let r = get(
            addr,
            "/api/v1/translate?phrase=Lol",
            &[("X-Forwarded-For", "192.0.2.7")],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body, r#"{"phrase":"Lol","translation":"Kek","errors":[]}"#);
    }
    assert_eq!(get(addr, "/readyz", &[]).status, 200);

    // Redis comes: the service connects on its own, says so once, and
    // writes the counts it kept.
    redis.restart();
    p.next_line(Duration::from_secs(20), "saying it connected", |l| {
        l.contains("connected to Redis") && l.contains(&redis.addr())
    });
    wait_until(Duration::from_secs(20), "the 3 counts in Redis", || {
        redis.all().get("192.0.2.7") == Some(&3)
    });
    // The next request is counted too.
    assert_eq!(
        get(
            addr,
            "/api/v1/translate?phrase=Lol",
            &[("X-Forwarded-For", "192.0.2.7")]
        )
        .status,
        200
    );
    wait_until(Duration::from_secs(20), "the 4th count in Redis", || {
        redis.all().get("192.0.2.7") == Some(&4)
    });
    assert_eq!(p.count_lines(|l| l.contains("connected to Redis")), 1);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn require_redis_with_redis_at_a_closed_port_exits_1_within_5s_naming_the_address() {
    let closed = ClosedPort::new();
    let redis = closed.addr().to_string();
    let started = Instant::now();
    let mut p = start(
        &["--listen", "127.0.0.1:0", "--require-redis"],
        &[("REDIS_ADDR", &redis)],
    );
    assert_eq!(p.wait_exit(Duration::from_secs(5)).code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = p.stderr();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(&redis), "the address is named: {err}");
    assert!(err.contains("--require-redis"), "the reason is named: {err}");
    assert_eq!(p.count_lines(|l| l.contains("listening")), 0);
}

#[test]
fn require_redis_that_never_answers_exits_1_within_5s() {
    // An address nobody answers from (TEST-NET-1): the connection either
    // hangs until our timeout or fails at once; either way, exit 1 in time.
    let started = Instant::now();
    let mut p = start(
        &["--listen", "127.0.0.1:0", "--require-redis"],
        &[("REDIS_ADDR", "192.0.2.1")],
    );
    assert_eq!(p.wait_exit(Duration::from_secs(5)).code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(p.stderr().contains("192.0.2.1:6379"));
}

#[test]
fn require_redis_without_redis_addr_is_refused() {
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--require-redis"])
        .env_remove("REDIS_ADDR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("REDIS_ADDR"), "{err}");
}

#[test]
fn invalid_flags_and_redis_addr_are_refused() {
    let out = Command::new(BIN)
        .args(["--trusted-proxy", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonsense"));
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("REDIS_ADDR", "redis:notaport")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis:notaport"));
}

#[test]
fn counts_reach_redis_and_are_flushed_on_sigterm() {
    let redis = Redis::start();
    let mut p = start(
        &["--listen", "127.0.0.1:0", "--trusted-proxy", "127.0.0.1/32"],
        &[("REDIS_ADDR", &redis.addr())],
    );
    let addr = addr(&p);
    for _ in 0..3 {
        let r = get(
            addr,
            "/api/v1/translate?phrase=Lol",
            &[("X-Forwarded-For", "6.6.6.6, 198.51.100.23")],
        );
        assert_eq!(r.status, 200);
    }
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(redis.count("198.51.100.23"), Some(3));
    assert_eq!(redis.count("6.6.6.6"), None);
}
