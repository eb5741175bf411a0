//! Progressive delivery with the real binary and real upstreams: preview
//! routing (only from `[preview] allow`, header and cookie never forwarded,
//! never falling back), canary splits (the share per request, the sticky
//! cookie through weight changes) and the automatic rollback (it happens
//! past the threshold within the window, and not under the threshold or
//! under `min_requests`).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::*;
use testkit::http::{admin, get_text, metric, Client};
use testkit::net::ClosedPort;
use testkit::process::Switchyard;
use testkit::upstream::recorder;
use testkit::wait::{eventually, Poll};

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const WITHIN: Duration = Duration::from_secs(10);

async fn status(admin_addr: SocketAddr) -> Value {
    let (code, st) = admin(admin_addr, "GET", "/status", "", None).await;
    assert_eq!(code, 200, "{st}");
    st
}

async fn metrics(admin_addr: SocketAddr) -> String {
    let (code, text) = get_text(admin_addr, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    text
}

/// A translation-api answering `/version` with `version`, failing that share
/// of translate requests with 500 (`--fail-ratio`).
fn failing_api(version: &str, fail_ratio: f64) -> translation_api::Running {
    let mut c = translation_api::Config::new("127.0.0.1:0".parse().unwrap(), version);
    c.workers = 1;
    c.fail_ratio = fail_ratio;
    translation_api::spawn(c).unwrap()
}

/// `GET path` with `headers` on `c`: status, the pool header, `Set-Cookie`
/// (if any) and the body.
async fn get(c: &mut Client, path: &str, headers: &[(&str, &str)]) -> (u16, String, Option<String>, String) {
    let mut req = Request::builder().uri(path).header("host", "test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (code, h, body) = c.send(req.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let pool = h
        .get("x-switchyard-pool")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let cookie = h.get("set-cookie").map(|v| v.to_str().unwrap().to_string());
    (
        code.as_u16(),
        pool,
        cookie,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_reaches_green_while_normal_traffic_stays_on_blue() {
    let blue = api("0.0.1");
    let green = recorder();
    let files = Upstreams::blue_green("blue", blue.addr(), green.addr)
        .table("[preview]\ncookie = \"preview\"\nallow = [\"127.0.0.0/8\", \"::1/128\"]\n")
        .to_string();
    let p = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    let mut c = Client::connect(p.http).await.unwrap();
    for _ in 0..3 {
        let (code, pool, _, _) = get(&mut c, "/version", &[]).await;
        assert_eq!((code, pool.as_str()), (200, "blue"), "normal traffic");
        let (code, pool, _, _) = get(&mut c, "/by-header", &[("x-switchyard-preview", "green")]).await;
        assert_eq!((code, pool.as_str()), (200, "green"), "the preview header");
        let (code, pool, _, _) = get(&mut c, "/by-cookie", &[("cookie", "a=1; preview=green; b=2")]).await;
        assert_eq!((code, pool.as_str()), (200, "green"), "the preview cookie");
    }
    let seen = green.requests();
    assert_eq!(seen.len(), 6, "{seen:?}");
    for r in &seen {
        assert!(
            r.header("x-switchyard-preview").is_empty(),
            "header forwarded: {r:?}"
        );
        if r.path() == "/by-cookie" {
            assert_eq!(
                r.header("cookie"),
                ["a=1; b=2"],
                "only the preview cookie removed"
            );
        }
    }
    let st = status(p.admin).await;
    assert_eq!(
        (&st["active"], &st["generation"]),
        (&Value::from("blue"), &Value::from(1)),
        "{st}"
    );
    // An unknown pool: the proxy's own 503, never blue.
    let (code, pool, _, body) = get(&mut c, "/version", &[("x-switchyard-preview", "purple")]).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(pool, "", "not routed");
    assert!(body.contains("`purple` is not a pool"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_from_an_address_not_allowed_is_ignored_and_removed() {
    let blue = recorder();
    let green = api("0.0.2");
    let files = Upstreams::blue_green("blue", blue.addr, green.addr())
        .table("[preview]\ncookie = \"preview\"\nallow = [\"10.0.0.0/8\"]\n")
        .to_string();
    let p = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    let mut c = Client::connect(p.http).await.unwrap();
    let (code, pool, _, _) = get(
        &mut c,
        "/x",
        &[
            ("x-switchyard-preview", "green"),
            ("cookie", "preview=green; keep=1"),
        ],
    )
    .await;
    assert_eq!((code, pool.as_str()), (200, "blue"), "ignored: routed normally");
    let seen = blue.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header("x-switchyard-preview").is_empty(), "{:?}", seen[0]);
    assert_eq!(seen[0].header("cookie"), ["keep=1"], "{:?}", seen[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_to_a_stopped_pool_is_503_never_blue() {
    let blue = api("0.0.1");
    let stopped = ClosedPort::new();
    let files = Upstreams::blue_green("blue", blue.addr(), stopped.addr())
        .table("[preview]\nallow = [\"127.0.0.0/8\"]\n")
        .table("[health]\npath = \"/readyz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nunhealthy_after = 1\nhealthy_after = 1\n")
        .to_string();
    let p = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    eventually(WITHIN, "green's endpoint unhealthy", || async {
        status(p.admin).await["pools"]["green"]["endpoints"][0]["health"] == "unhealthy"
    })
    .await;
    let mut c = Client::connect(p.http).await.unwrap();
    for _ in 0..5 {
        let (code, pool, _, body) = get(&mut c, "/version", &[("x-switchyard-preview", "green")]).await;
        assert_eq!(code, 503, "{body}");
        assert_ne!(pool, "blue");
        assert!(body.contains("pool `green` has no usable endpoint"), "{body}");
        let (code, pool, _, _) = get(&mut c, "/version", &[]).await;
        assert_eq!((code, pool.as_str()), (200, "blue"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_lands_within_3_points_over_10000_requests() {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let files = Upstreams::blue_green("blue", blue.addr(), green.addr())
        .table("[split]\nweights = { blue = 90, green = 10 }\n")
        .to_string();
    let p = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    let st = status(p.admin).await;
    assert_eq!(st["split"], serde_json::json!({"blue": 90, "green": 10}), "{st}");
    assert_eq!(st["active"], "blue");
    assert_eq!(st["pools"]["green"]["split_weight"], 10);
    assert_eq!(
        st["pools"]["green"]["drained"], false,
        "a pool with weight is not drained"
    );
    let m = metrics(p.admin).await;
    assert_eq!(metric(&m, "switchyard_split_weight{pool=\"green\"}"), 10.0, "{m}");
    assert_eq!(metric(&m, "switchyard_split_weight{pool=\"blue\"}"), 90.0, "{m}");
    let clients = (0..4).map(|_| async {
        let mut c = Client::connect(p.http).await.unwrap();
        let mut counts = BTreeMap::<String, u32>::new();
        for _ in 0..2_500 {
            let (code, pool, cookie, _) = get(&mut c, "/version", &[]).await;
            assert_eq!(code, 200);
            assert_eq!(cookie, None, "no sticky_cookie configured");
            *counts.entry(pool).or_default() += 1;
        }
        counts
    });
    let mut total = BTreeMap::<String, u32>::new();
    for counts in futures_util::future::join_all(clients).await {
        for (k, v) in counts {
            *total.entry(k).or_default() += v;
        }
    }
    let green_share = f64::from(total["green"]) / 100.0;
    assert_eq!(total["blue"] + total["green"], 10_000, "{total:?}");
    assert!(
        (7.0..=13.0).contains(&green_share),
        "green got {green_share} %: {total:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_stay_through_weight_changes_and_leave_at_weight_0() {
    let blue = recorder();
    let green = api("0.0.2");
    let files = Upstreams::blue_green("blue", blue.addr, green.addr())
        .table("[split]\nweights = { blue = 50, green = 50 }\nsticky_cookie = \"pool\"\n")
        .to_string();
    let p = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    // Each client's first answer names its pool in the cookie.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(p.http).await.unwrap();
        let (code, pool, cookie, _) = get(&mut c, "/version", &[]).await;
        assert_eq!(code, 200);
        let cookie = cookie.expect("a split with sticky_cookie sets it");
        assert_eq!(cookie, format!("pool={pool}; Path=/; HttpOnly; SameSite=Lax"));
        clients.push((c, pool));
    }
    let on = |p: &str| clients.iter().filter(|(_, x)| x == p).count();
    assert!(on("blue") > 0 && on("green") > 0, "both pools got clients");
    let check = |clients: &mut Vec<(Client, String)>, stays: fn(&str) -> bool| {
        let clients = std::mem::take(clients);
        async move {
            let mut out = Vec::new();
            for (mut c, first) in clients {
                for _ in 0..5 {
                    let cookie = format!("other=1; pool={first}");
                    let (code, pool, set, _) = get(&mut c, "/version", &[("cookie", cookie.as_str())]).await;
                    assert_eq!(code, 200);
                    if stays(&first) {
                        assert_eq!(pool, first, "a client with a cookie stays on its pool");
                        assert_eq!(set, None, "its cookie already names the pool");
                    } else {
                        assert_ne!(pool, first, "its pool has no weight any more");
                    }
                }
                out.push((c, first));
            }
            out
        }
    };
    // 90 to green: blue keeps 10, and its clients stay.
    let (code, o) = admin(p.admin, "POST", "/switch", r#"{"to":"green","weight":90}"#, None).await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["split"], serde_json::json!({"blue": 10, "green": 90}), "{o}");
    clients = check(&mut clients, |_| true).await;
    // Blue's weight to 0 ({"to":"green"} ends the split): its clients leave.
    let (code, o) = admin(p.admin, "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!((code, &o["active"]), (200, &Value::from("green")), "{o}");
    let _ = check(&mut clients, |p| p == "green").await;
    // The sticky cookie is never forwarded; other cookies are.
    for r in blue.requests().iter().filter(|r| !r.header("cookie").is_empty()) {
        assert_eq!(r.header("cookie"), ["other=1"], "{r:?}");
    }
    // No split: no cookie is set.
    let mut c = Client::connect(p.http).await.unwrap();
    let (_, _, set, _) = get(&mut c, "/version", &[]).await;
    assert_eq!(set, None);
}

/// A proxy with blue (healthy) and green failing `fail_ratio` of translate
/// requests, `[rollback]` as given, switched to green by the admin API.
async fn switched_to_failing_green(
    fail_ratio: f64,
    rollback: &str,
) -> (Switchyard, translation_api::Running, translation_api::Running) {
    let blue = api("0.0.1");
    let green = failing_api("0.0.2", fail_ratio);
    let files = Upstreams::blue_green("blue", blue.addr(), green.addr())
        .table(rollback)
        .to_string();
    let p = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    let (code, o) = admin(p.admin, "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!((code, &o["active"]), (200, &Value::from("green")), "{o}");
    (p, blue, green)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_rolls_back_by_itself_when_green_fails_past_the_threshold() {
    let (p, _blue, _green) = switched_to_failing_green(
        0.5,
        "[rollback]\nwindow = \"60s\"\nmax_error_rate = 0.2\nmin_requests = 20\n",
    )
    .await;
    let mut c = Client::connect(p.http).await.unwrap();
    let mut on_green = 0;
    // Each request paces the next: the deadline bounds the whole wait.
    let poll = Poll::new(WITHIN, "the automatic rollback to blue");
    loop {
        let (_, pool, _, _) = get(&mut c, "/api/v1/translate?phrase=Lol", &[]).await;
        if pool == "blue" {
            break;
        }
        on_green += 1;
        if poll.expired() {
            poll.fail(&format!("{on_green} requests on green, no rollback"));
        }
    }
    assert!(on_green >= 20, "judged only after min_requests: {on_green}");
    let st = status(p.admin).await;
    assert_eq!(
        (&st["active"], &st["source"], &st["override"], &st["previous"]),
        (
            &Value::from("blue"),
            &Value::from("auto"),
            &Value::from(true),
            &Value::Null
        ),
        "{st}"
    );
    let reason = st["override_reason"].as_str().unwrap();
    assert!(reason.contains("automatic rollback: green answered"), "{reason}");
    let m = metrics(p.admin).await;
    assert_eq!(
        metric(&m, "switchyard_switches_total{source=\"auto\"}"),
        1.0,
        "{m}"
    );
    assert!(
        p.proc
            .stdout_lines()
            .iter()
            .any(|l| l.contains("switchyard::audit") && l.contains("automatic rollback")),
        "the audit line"
    );
    // No flip-flop: a rollback opens no window, so blue is never judged.
    for _ in 0..50 {
        assert_eq!(get(&mut c, "/version", &[]).await.1, "blue");
    }
    // A rollback has nothing to go back to (previous consumed).
    let (code, _) = admin(p.admin, "POST", "/rollback", "", None).await;
    assert_eq!(code, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rollback_under_the_threshold_or_under_min_requests() {
    // 10 % of errors against a 20 % threshold, well over min_requests.
    let (mut p, _blue, _green) = switched_to_failing_green(
        0.1,
        "[rollback]\nwindow = \"2s\"\nmax_error_rate = 0.2\nmin_requests = 20\n",
    )
    .await;
    let mut c = Client::connect(p.http).await.unwrap();
    for _ in 0..200 {
        let (_, pool, _, _) = get(&mut c, "/api/v1/translate?phrase=Lol", &[]).await;
        assert_eq!(pool, "green");
    }
    p.proc.next_line(WITHIN, "the window closed", |l| {
        l.contains("the window closed without a rollback")
    });
    assert_eq!(status(p.admin).await["active"], "green");
    drop(p);

    // Every request fails, but fewer than min_requests arrive in the window.
    let (mut p, _blue, _green) = switched_to_failing_green(
        1.0,
        "[rollback]\nwindow = \"2s\"\nmax_error_rate = 0.2\nmin_requests = 50\n",
    )
    .await;
    let mut c = Client::connect(p.http).await.unwrap();
    for _ in 0..10 {
        let (code, pool, _, _) = get(&mut c, "/api/v1/translate?phrase=Lol", &[]).await;
        assert_eq!((code, pool.as_str()), (500, "green"));
    }
    p.proc.next_line(WITHIN, "the window closed", |l| {
        l.contains("the window closed without a rollback")
    });
    let st = status(p.admin).await;
    assert_eq!(
        (&st["active"], &st["source"]),
        (&Value::from("green"), &Value::from("admin")),
        "{st}"
    );
    let m = metrics(p.admin).await;
    assert_eq!(
        metric(&m, "switchyard_switches_total{source=\"auto\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_split_files_are_refused_with_the_reason() {
    let out = |text: &str| {
        let f = ProxyConfig::new().upstreams_text(text).write();
        let o = std::process::Command::new(BIN)
            .args(["check", "-c"])
            .arg(&f.proxy_toml)
            .output()
            .unwrap();
        assert!(!o.status.success());
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let pools = "active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n";
    let e = out(&format!(
        "{pools}[split]\nweights = {{ blue = 90, green = 20 }}\n"
    ));
    assert!(e.contains("add up to 110, not 100"), "{e}");
    let e = out(&format!(
        "{pools}[split]\nweights = {{ blue = 90, purple = 10 }}\n"
    ));
    assert!(e.contains("`purple` is not a pool"), "{e}");
    let e = out(&format!(
        "{pools}[split]\nweights = {{ blue = 150, green = -50 }}\n"
    ));
    assert!(e.contains("split.weights.blue = 150 is not a share"), "{e}");
    let e = out(&format!("{pools}[preview]\nheader = \"x-p\"\n"));
    assert!(e.contains("preview.allow is required"), "{e}");
}

/// `switchyard ARGS…`: whether it exited 0, and its output.
async fn cli(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_splits_every_replica_and_compares_them_by_split() {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let files = Upstreams::blue_green("blue", blue.addr(), green.addr()).to_string();
    let a = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    let b = Switchyard::start(BIN, ProxyConfig::new().upstreams_text(&files));
    let (ua, ub) = (format!("http://{}", a.admin), format!("http://{}", b.admin));
    let (ok, out) = cli(&[
        "switch", "green", "--weight", "10", "--admin", &ua, "--admin", &ub,
    ])
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("blue 90, green 10"), "{out}");
    let (ok, out) = cli(&["status", "--admin", &ua, "--admin", &ub]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("agree: every replica serves blue 90, green 10"),
        "{out}"
    );
    // One replica at another split: the same active pool, but they disagree.
    let (code, o) = admin(b.admin, "POST", "/switch", r#"{"to":"green","weight":20}"#, None).await;
    assert_eq!((code, &o["active"]), (200, &Value::from("blue")), "{o}");
    let (ok, out) = cli(&["status", "--admin", &ua, "--admin", &ub]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("DISAGREE"), "{out}");
    let (ok, out) = cli(&["status", "--admin", &ub]).await;
    assert!(ok, "{out}");
    assert!(out.contains("split       blue 80, green 20"), "{out}");
}
