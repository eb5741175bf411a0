//! Request statistics against a real `redis-server`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::start;
use testkit::http::get;
use testkit::redis::Redis;
use testkit::wait_until;

#[test]
fn every_translate_request_is_counted_for_the_right_client() {
    let redis = Redis::start();
    let api = start(|c| c.redis_addr = Some(redis.addr()));
    let addr = api.addr();
    // From a trusted proxy (loopback), with a forged left-most entry.
    let xff = [("X-Forwarded-For", "6.6.6.6, 10.0.0.1, 203.0.113.7")];
    for path in [
        "/api/v1/translate?phrase=Lol",
        "/api/v1/translate?phrase=Okay",
        "/api/v1/translate?phrase=Hey",
        "/api/v1/translate?phrase=Unknown",
        "/api/v1/translate",
    ] {
        get(addr, path, &xff);
    }
    // Two more from the proxy itself, and other routes, which are not counted.
    get(addr, "/api/v1/translate?phrase=Lol", &[]);
    get(addr, "/api/v1/translate?phrase=Lol", &[]);
    get(addr, "/version", &xff);
    get(addr, "/healthz", &xff);
    // Shutting down flushes what is queued.
    api.begin_shutdown();
    api.join().unwrap();

    let all = redis.all();
    assert_eq!(all.get("203.0.113.7"), Some(&5), "{all:?}");
    assert_eq!(all.get("127.0.0.1"), Some(&2), "{all:?}");
    assert_eq!(all.len(), 2, "nothing else is counted: {all:?}");
}

#[test]
fn an_untrusted_peer_cannot_choose_its_address() {
    let redis = Redis::start();
    let api = start(|c| {
        c.redis_addr = Some(redis.addr());
        c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    });
    for _ in 0..4 {
        get(
            api.addr(),
            "/api/v1/translate?phrase=Lol",
            &[("X-Forwarded-For", "203.0.113.7")],
        );
    }
    drop(api);
    let all = redis.all();
    assert_eq!(all.get("127.0.0.1"), Some(&4), "{all:?}");
    assert_eq!(all.len(), 1, "{all:?}");
}

#[test]
fn counts_arrive_while_the_service_runs() {
    let redis = Redis::start();
    let api = start(|c| c.redis_addr = Some(redis.addr()));
    for _ in 0..3 {
        get(
            api.addr(),
            "/api/v1/translate?phrase=Hey",
            &[("X-Forwarded-For", "192.0.2.44")],
        );
    }
    wait_until(Duration::from_secs(10), "3 counted", || {
        redis.count("192.0.2.44") == Some(3)
    });
    assert_eq!(api.inflight(), 0);
}

#[test]
fn redis_going_away_fails_no_request_and_the_task_reconnects() {
    let mut redis = Redis::start();
    let api = start(|c| c.redis_addr = Some(redis.addr()));
    let addr = api.addr();
    get(
        addr,
        "/api/v1/translate?phrase=Lol",
        &[("X-Forwarded-For", "192.0.2.1")],
    );
    wait_until(Duration::from_secs(10), "first count", || {
        redis.count("192.0.2.1") == Some(1)
    });

    redis.stop();
    for _ in 0..20 {
        let r = get(
            addr,
            "/api/v1/translate?phrase=Lol",
            &[("X-Forwarded-For", "192.0.2.2")],
        );
        assert_eq!(r.status, 200, "a Redis outage never fails a request");
    }

    redis.restart();
    for _ in 0..4 {
        get(
            addr,
            "/api/v1/translate?phrase=Lol",
            &[("X-Forwarded-For", "192.0.2.3")],
        );
    }
    wait_until(Duration::from_secs(20), "counts after the restart", || {
        redis.count("192.0.2.3") == Some(4)
    });
}

#[test]
fn redis_away_at_start_does_not_stop_spawn_and_counts_arrive_once_it_comes() {
    let mut redis = Redis::reserved();
    let api = start(|c| c.redis_addr = Some(redis.addr()));
    let addr = api.addr();
    for _ in 0..2 {
        let r = get(
            addr,
            "/api/v1/translate?phrase=Okay",
            &[("X-Forwarded-For", "192.0.2.9")],
        );
        assert_eq!(r.status, 200, "Redis being away never fails a request");
    }
    assert_eq!(get(addr, "/readyz", &[]).status, 200);
    redis.restart();
    wait_until(Duration::from_secs(20), "the kept counts in Redis", || {
        redis.all().get("192.0.2.9") == Some(&2)
    });
    get(
        addr,
        "/api/v1/translate?phrase=Okay",
        &[("X-Forwarded-For", "192.0.2.9")],
    );
    wait_until(Duration::from_secs(20), "the next count", || {
        redis.count("192.0.2.9") == Some(3)
    });
}

#[test]
fn require_redis_makes_spawn_fail_naming_the_address() {
    let redis = Redis::reserved();
    let mut c = translation_api::Config::new("127.0.0.1:0".parse().unwrap(), "0.0.1");
    c.workers = 1;
    c.redis_addr = Some(redis.addr());
    c.require_redis = true;
    match translation_api::spawn(c) {
        Err(e @ translation_api::Error::RedisRequired { .. }) => {
            assert!(e.to_string().contains(&redis.addr()), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("started without the Redis it requires"),
    }
}
