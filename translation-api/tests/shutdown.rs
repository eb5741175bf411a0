//! Graceful shutdown in-process: readiness, the delay, in-flight requests,
//! the grace period, and a busy port.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::start;
use testkit::http::get;
use testkit::net::{finish_slowly, refused, send_and_wait_read};
use testkit::wait_until;

#[test]
fn readyz_turns_503_at_once_and_requests_are_served_during_the_delay() {
    let delay = Duration::from_secs(2);
    let api = start(|c| c.shutdown_delay = delay);
    let addr = api.addr();
    assert_eq!(get(addr, "/readyz", &[]).status, 200);

    let begun = Instant::now();
    api.begin_shutdown();
    let r = get(addr, "/readyz", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, r#"{"status":"shutting down"}"#)
    );
    let r = get(addr, "/api/v1/translate?phrase=Lol", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"phrase":"Lol","translation":"Kek","errors":[]}"#)
    );
    assert_eq!(get(addr, "/healthz", &[]).status, 200);

    wait_until(Duration::from_secs(15), "the listener closes", || refused(addr));
    assert!(
        begun.elapsed() >= delay,
        "the listener closed after {:?}, before the {delay:?} delay",
        begun.elapsed()
    );
    assert_eq!(api.inflight(), 0);
    api.join().unwrap();
}

#[test]
fn a_request_being_received_at_shutdown_completes() {
    let api = start(|_| {});
    let addr = api.addr();
    let request = b"GET /api/v1/translate?phrase=By%20my%20Axe HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A slow client: the first bytes have arrived (and been read) when the
    // shutdown begins...
    send_and_wait_read(&mut s, &request[..12]);
    api.begin_shutdown();
    // ...the listener closes while this request is still being received...
    wait_until(Duration::from_secs(10), "the listener closes", || refused(addr));
    // ...and the rest arrives afterwards.
    let r = finish_slowly(&mut s, &request[12..]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        r#"{"phrase":"By my Axe","translation":"Gol'Kosh","errors":[]}"#
    );
    assert_eq!(r.headers["connection"], "close");
    api.join().unwrap();
}

#[test]
fn idle_keep_alive_connections_do_not_hold_the_shutdown() {
    let api = start(|_| {});
    let addr = api.addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /version HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut chunk = [0u8; 512];
    let mut got = Vec::new();
    while !got.ends_with(br#""errors":[]}"#) {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    // The connection is now idle and kept alive; shutdown closes it at once.
    let begun = Instant::now();
    api.begin_shutdown();
    api.join().unwrap();
    assert!(
        begun.elapsed() < Duration::from_secs(10),
        "took {:?}",
        begun.elapsed()
    );
    assert_eq!(
        s.read(&mut chunk).unwrap_or(0),
        0,
        "the idle connection was closed"
    );
}

#[test]
fn the_grace_period_bounds_the_drain() {
    let grace = Duration::from_millis(300);
    let api = start(|c| c.shutdown_grace = grace);
    let mut s = TcpStream::connect(api.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A request that never completes.
    send_and_wait_read(&mut s, b"GET /version HTTP/1.1\r\nHo");
    let begun = Instant::now();
    api.begin_shutdown();
    api.join().unwrap();
    let took = begun.elapsed();
    assert!(took >= grace, "join returned after {took:?}, before the grace");
    assert!(took < Duration::from_secs(5), "join took {took:?}");
    let mut buf = [0u8; 64];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "the unfinished connection was closed"
    );
}

#[test]
fn a_port_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut c = translation_api::Config::new(addr, "0.0.1");
    c.workers = 2;
    match translation_api::spawn(c) {
        Err(translation_api::Error::Bind { addr: a, .. }) => assert_eq!(a, addr),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("bound a port another socket listens on"),
    }
}

#[test]
fn a_port_another_instance_listens_on_is_an_error_too() {
    // SO_REUSEPORT would let a second instance share the port silently.
    let first = start(|_| {});
    let mut c = translation_api::Config::new(first.addr(), "0.0.1");
    c.workers = 1;
    assert!(
        matches!(
            translation_api::spawn(c),
            Err(translation_api::Error::Bind { .. })
        ),
        "a second instance bound the same port"
    );
    assert_eq!(get(first.addr(), "/version", &[]).status, 200);
}
