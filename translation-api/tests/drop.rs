//! Dropping a `Running` stops it and leaves no thread behind. (Alone in its
//! own test binary: it counts the process's threads.)
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::start;
use testkit::http::get;
use testkit::net::refused;
use testkit::wait_until;

fn service_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("translation-api"))
        .count()
}

#[test]
fn dropping_running_stops_everything() {
    assert_eq!(service_threads(), 0);
    let api = start(|c| c.workers = 3);
    let addr = api.addr();
    assert_eq!(get(addr, "/version", &[]).status, 200);
    // A new thread names itself as it starts: wait for all three names.
    wait_until(Duration::from_secs(5), "three named workers", || {
        service_threads() == 3
    });
    drop(api);
    // A joined thread may linger in /proc for a moment; a leaked one stays.
    wait_until(Duration::from_secs(2), "no service thread is left", || {
        service_threads() == 0
    });
    wait_until(Duration::from_secs(5), "the port is closed", || refused(addr));
}
