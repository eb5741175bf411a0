//! Cut-over by file: in-place writes, rename-over, the kubelet's `..data`
//! swap; rejection of bad files under load; override and persist rules.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use switchyard::ReloadOutcome;

use support::*;
use testkit::http::{admin, metric};
use testkit::load::{assert_no_failures, Load};
use testkit::net::ClosedPort;
use testkit::wait_until_async;

/// Writes the file in place (truncate + write), as vim does.
fn write_in_place(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The kubelet's ConfigMap layout: `upstreams.toml` → `..data/upstreams.toml`,
/// `..data` → `..<timestamp>`; an update writes a new timestamped dir, points
/// `..data_tmp` at it, renames `..data_tmp` over `..data`, removes the old dir.
struct Kubelet {
    dir: std::path::PathBuf,
    current: String,
    n: u32,
}

impl Kubelet {
    fn new(dir: &Path, text: &str) -> Kubelet {
        let mut k = Kubelet {
            dir: dir.to_path_buf(),
            current: String::new(),
            n: 0,
        };
        k.update(text);
        std::os::unix::fs::symlink("..data/upstreams.toml", dir.join("upstreams.toml")).unwrap();
        k
    }

    fn update(&mut self, text: &str) {
        self.n += 1;
        let name = format!("..2026_11_28_17_00_00.{:09}", self.n);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join("upstreams.toml"), text).unwrap();
        std::os::unix::fs::symlink(&name, self.dir.join("..data_tmp")).unwrap();
        std::fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data")).unwrap();
        if !self.current.is_empty() {
            std::fs::remove_dir_all(self.dir.join(&self.current)).unwrap();
        }
        self.current = name;
    }
}

async fn wait_active(tp: &TestProxy, want: &str) -> Duration {
    let t = Instant::now();
    wait_until_async(Duration::from_secs(5), &format!("active = {want}"), || {
        tp.active() == want
    })
    .await;
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_update_style_switches_under_load_without_failure() {
    let (blue, green, tp) = blue_green_proxy(ProxyConfig::new());
    let (b, g) = (blue.addr(), green.addr());
    let path = &tp.files.upstreams_toml;
    let load = Load::start(tp.http(), 8, "/version").await;
    load.wait_more(200).await;

    write_in_place(path, &Upstreams::blue_green("green", b, g).to_string());
    wait_active(&tp, "green").await;
    load.wait_more(200).await;
    tp.files
        .rename_upstreams(&Upstreams::blue_green("blue", b, g).to_string());
    wait_active(&tp, "blue").await;
    load.wait_more(200).await;
    std::process::Command::new("sed")
        .args(["-i", "s/active = \"blue\"/active = \"green\"/"])
        .arg(path)
        .status()
        .unwrap();
    wait_active(&tp, "green").await;
    load.wait_more(200).await;

    let samples = load.stop().concat();
    assert_no_failures(&samples);
    assert_eq!(tp.generation(), 4);
    assert!(metric(&tp.metrics().await, "switchyard_switches_total{source=\"file\"}") == 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_configmap_swap_three_times_in_a_row() {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let (b, g) = (blue.addr(), green.addr());
    let dir = tempfile::tempdir().unwrap();
    let mut kubelet = Kubelet::new(dir.path(), &Upstreams::blue_green("blue", b, g).to_string());
    let tp = TestProxy::start(ProxyConfig::new().in_dir_with_upstreams(dir));
    let load = Load::start(tp.http(), 8, "/version").await;
    for want in ["green", "blue", "green"] {
        load.wait_more(200).await;
        kubelet.update(&Upstreams::blue_green(want, b, g).to_string());
        wait_active(&tp, want).await;
    }
    load.wait_more(200).await;
    let samples = load.stop().concat();
    assert_no_failures(&samples);
    assert_eq!(tp.generation(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_never_apply_and_a_later_valid_one_does() {
    let (blue, green, tp) = blue_green_proxy(ProxyConfig::new());
    let (b, g) = (blue.addr(), green.addr());
    let path = &tp.files.upstreams_toml;
    let load = Load::start(tp.http(), 8, "/version").await;
    let garbage: String = (0..10 * 1024 * 1024)
        .map(|i| (b'!' + (i % 90) as u8) as char)
        .collect();
    let valid_green = Upstreams::blue_green("green", b, g).to_string();
    let cases: Vec<(&str, String)> = vec![
        (
            "syntax error",
            "active = \"green\"\n[pools.blue\nendpoints = []\n".into(),
        ),
        (
            "unknown key",
            format!(
                "active = \"green\"\n[pools.blue]\nendpoint = [\"{b}\"]\n[pools.green]\nendpoint = [\"{g}\"]\n"
            ),
        ),
        ("unknown pool", Upstreams::blue_green("purple", b, g).to_string()),
        (
            "pool without endpoints",
            format!(
                "active = \"green\"\n[pools.blue]\nendpoints = [\"{b}\"]\n[pools.green]\nendpoints = []\n"
            ),
        ),
        ("empty file", String::new()),
        (
            "half-written file",
            valid_green[..valid_green.len() - 12].to_string(),
        ),
        ("10 MB of garbage", garbage),
    ];
    let mut errors = 0.0;
    for (what, text) in cases {
        load.wait_more(50).await;
        tp.files.rename_upstreams(&text);
        errors += 1.0;
        wait_until_async(Duration::from_secs(5), what, || {
            metric(
                &tp.control_metrics(),
                "switchyard_config_reloads_total{result=\"error\"}",
            ) >= errors
        })
        .await;
        assert_eq!(
            (tp.active().as_str(), tp.generation()),
            ("blue", 1),
            "{what} changed the table"
        );
        let (_, st) = admin(tp.admin(), "GET", "/status", "", None).await;
        let err = st["last_reload_error"].as_str().unwrap_or_default().to_string();
        assert!(
            err.contains("upstreams.toml"),
            "{what}: the error names the file: {err}"
        );
    }
    // The file deleted.
    std::fs::remove_file(path).unwrap();
    wait_until_async(Duration::from_secs(5), "deleted file rejected", || {
        metric(
            &tp.control_metrics(),
            "switchyard_config_reloads_total{result=\"error\"}",
        ) > errors
    })
    .await;
    assert_eq!(tp.generation(), 1);
    // A valid file applies.
    tp.files.rename_upstreams(&valid_green);
    wait_active(&tp, "green").await;
    let (_, st) = admin(tp.admin(), "GET", "/status", "", None).await;
    assert!(st["last_reload_error"].is_null(), "{st}");
    load.wait_more(100).await;
    assert_no_failures(&load.stop().concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_names_file_line_and_reason() {
    let (blue, green, tp) = blue_green_proxy(ProxyConfig::new());
    // Line 1 is a comment, so `active` is on line 2.
    tp.files.rename_upstreams(
        &Upstreams::blue_green("purple", blue.addr(), green.addr())
            .comment("test upstreams")
            .to_string(),
    );
    let mut err = String::new();
    wait_until_async(Duration::from_secs(5), "rejection", || {
        let st = tp.proxy.shared().table.load().facts.last_reload_error.clone();
        err = st.unwrap_or_default();
        !err.is_empty()
    })
    .await;
    assert!(
        err.contains("upstreams.toml: line 2: active = \"purple\" is not a pool"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_rules_and_persist() {
    let (blue, green, tp) = blue_green_proxy(ProxyConfig::new());
    let (b, g) = (blue.addr(), green.addr());
    // Admin to green: an override.
    assert_eq!(
        admin(tp.admin(), "POST", "/switch", r#"{"to":"green"}"#, None)
            .await
            .0,
        200
    );
    let (_, st) = admin(tp.admin(), "GET", "/status", "", None).await;
    assert_eq!(
        (st["active"].as_str(), st["override"].as_bool()),
        (Some("green"), Some(true))
    );
    // An unrelated edit (the file still says blue) keeps green.
    tp.files
        .rename_upstreams(&Upstreams::blue_green("blue", b, g).comment("edited").to_string());
    let gen = tp.generation();
    wait_until_async(Duration::from_secs(5), "the edit is read", || {
        metric(
            &tp.control_metrics(),
            "switchyard_config_reloads_total{result=\"unchanged\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!((tp.active().as_str(), tp.generation()), ("green", gen));
    // A change of the endpoints keeps the override too.
    let extra = ClosedPort::new();
    tp.files.rename_upstreams(
        &Upstreams::blue_green("blue", b, g)
            .pool("green", [g, extra.addr()])
            .to_string(),
    );
    wait_until_async(Duration::from_secs(5), "endpoint change applied", || {
        tp.generation() == gen + 1
    })
    .await;
    assert_eq!(tp.active(), "green");
    // Editing `active` in the file (to green, then blue) is a newer intent: it wins.
    tp.files
        .rename_upstreams(&Upstreams::blue_green("green", b, g).to_string());
    wait_until_async(Duration::from_secs(5), "file active green", || {
        tp.generation() == gen + 2
    })
    .await;
    tp.files
        .rename_upstreams(&Upstreams::blue_green("blue", b, g).to_string());
    wait_active(&tp, "blue").await;
    let (_, st) = admin(tp.admin(), "GET", "/status", "", None).await;
    assert_eq!(
        (st["override"].as_bool(), st["source"].as_str()),
        (Some(false), Some("file"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_writes_active_back_keeping_comments_once() {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let text = format!(
        "# Cut-over file -- keep this comment\nactive = \"blue\" # the live pool\n\n[pools.blue]   # old\nendpoints = [\"{}\"]\n\n[pools.green]\nendpoints = [\"{}\"]\n",
        blue.addr(),
        green.addr()
    );
    let tp = TestProxy::start(ProxyConfig::new().persist(true).upstreams_text(&text));
    let (s, b) = admin(tp.admin(), "POST", "/switch", r#"{"to":"green"}"#, None).await;
    assert_eq!((s, b["generation"].as_u64()), (200, Some(2)));
    let after = std::fs::read_to_string(&tp.files.upstreams_toml).unwrap();
    assert_eq!(after, text.replace("active = \"blue\"", "active = \"green\""));
    // The watcher sees its own write as already applied: no second generation.
    wait_until_async(Duration::from_secs(5), "own write read back", || {
        metric(
            &tp.control_metrics(),
            "switchyard_config_reloads_total{result=\"unchanged\"}",
        ) >= 1.0
    })
    .await;
    // And so does a re-read now, through the one writer (after anything the
    // watcher has queued): the file is what is live.
    assert!(
        matches!(tp.proxy.reloader().reload().await, ReloadOutcome::Unchanged),
        "the persisted file reads back as applied"
    );
    assert_eq!(tp.generation(), 2);
    let (_, st) = admin(tp.admin(), "GET", "/status", "", None).await;
    assert_eq!(
        (st["source"].as_str(), st["override"].as_bool()),
        (Some("admin"), Some(false)),
        "{st}"
    );
}

#[test]
fn persist_is_refused_on_a_symlinked_upstreams_file() {
    let dir = tempfile::tempdir().unwrap();
    let _k = Kubelet::new(
        dir.path(),
        "active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n",
    );
    let files = ProxyConfig::new()
        .persist(true)
        .in_dir_with_upstreams(dir)
        .write();
    let err = switchyard::Proxy::start(&files.proxy_toml)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_does_not_loop_on_its_own_reads() {
    let (blue, green, tp) = blue_green_proxy(ProxyConfig::new());
    tp.files
        .rename_upstreams(&Upstreams::blue_green("green", blue.addr(), green.addr()).to_string());
    wait_active(&tp, "green").await;
    // A re-read through the one writer: whatever the rename queued is done.
    assert!(matches!(
        tp.proxy.reloader().reload().await,
        ReloadOutcome::Unchanged
    ));
    let events = tp.proxy.watch_events();
    let reloads = |m: &str| {
        ["ok", "error", "unchanged"]
            .iter()
            .map(|r| metric(m, &format!("switchyard_config_reloads_total{{result=\"{r}\"}}")))
            .sum::<f64>()
    };
    let before = reloads(&tp.metrics().await);
    // Idle: reading the file must not feed the watcher new events.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        tp.proxy.watch_events(),
        events,
        "the watcher saw events while nothing changed"
    );
    assert_eq!(reloads(&tp.metrics().await), before);
    assert!(events < 50, "{events} events for one rename");
}

/// The pool that answers a request through the proxy now.
async fn answering_pool(tp: &TestProxy) -> String {
    let mut c = testkit::http::Client::connect(tp.http()).await.unwrap();
    let (code, headers, _) = c.get("/version").await.unwrap();
    assert_eq!(code, 200);
    headers["x-switchyard-pool"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_never_launders_a_rejected_file() {
    let (blue, green, tp) = blue_green_proxy(ProxyConfig::new().persist(true));
    // A file that empties green is rejected: the accepted one stays in force.
    let bad = Upstreams::blue_green("blue", blue.addr(), green.addr())
        .pool("green", Vec::<String>::new())
        .to_string();
    tp.files.rename_upstreams(&bad);
    wait_until_async(Duration::from_secs(5), "the rejection", || {
        tp.proxy.shared().table.load().facts.last_reload_error.is_some()
    })
    .await;
    // The switch applies (green of the accepted file), but is not written
    // over the rejected file: that would make it the applied one.
    assert_eq!(tp.switch("green").await["active"], "green");
    assert_eq!(std::fs::read_to_string(&tp.files.upstreams_toml).unwrap(), bad);
    let st = tp.status().await;
    assert_eq!(st["override"], true, "{st}");
    assert!(
        st["persist_error"]
            .as_str()
            .is_some_and(|e| e.contains("changed since it was last accepted")),
        "{st}"
    );
    assert!(
        st["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("at least one endpoint")),
        "{st}"
    );
    // Still rejected when read again, and the next request is served by green.
    assert!(matches!(
        tp.proxy.reloader().reload().await,
        ReloadOutcome::Rejected(_)
    ));
    assert_eq!(answering_pool(&tp).await, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_never_writes_through_a_symlink_put_in_place_later() {
    let (_blue, _green, tp) = blue_green_proxy(ProxyConfig::new().persist(true));
    // The same content, but now behind a symlink (as a ConfigMap mount is).
    let path = &tp.files.upstreams_toml;
    let text = std::fs::read_to_string(path).unwrap();
    let real = tp.files.dir.path().join("real.toml");
    std::fs::write(&real, &text).unwrap();
    let link = tp.files.dir.path().join("link.tmp~");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::fs::rename(&link, path).unwrap();
    assert!(matches!(
        tp.proxy.reloader().reload().await,
        ReloadOutcome::Unchanged
    ));
    assert_eq!(tp.switch("green").await["active"], "green");
    let st = tp.status().await;
    assert!(
        st["persist_error"]
            .as_str()
            .is_some_and(|e| e.contains("symlink")),
        "{st}"
    );
    assert_eq!(st["override"], true);
    assert!(
        std::fs::symlink_metadata(path).unwrap().file_type().is_symlink(),
        "the link is kept"
    );
    assert_eq!(
        std::fs::read_to_string(&real).unwrap(),
        text,
        "nothing written through it"
    );
    assert_eq!(answering_pool(&tp).await, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_drops_the_override_pool_is_rejected_and_the_override_stays() {
    let (blue, green, tp) = blue_green_proxy(ProxyConfig::new());
    tp.switch("green").await;
    let gen = tp.generation();
    // The same route (`active = "blue"`), without green.
    tp.files
        .rename_upstreams(&Upstreams::blue(blue.addr()).to_string());
    wait_until_async(Duration::from_secs(5), "the rejection", || {
        tp.proxy.shared().table.load().facts.last_reload_error.is_some()
    })
    .await;
    let st = tp.status().await;
    assert!(
        st["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer defines pool `green`")),
        "{st}"
    );
    assert_eq!(
        (st["active"].as_str(), st["override"].as_bool()),
        (Some("green"), Some(true))
    );
    assert_eq!(tp.generation(), gen);
    assert_eq!(answering_pool(&tp).await, "green");
    // The whole file again: accepted (nothing changed), the error is gone.
    tp.files
        .rename_upstreams(&Upstreams::blue_green("blue", blue.addr(), green.addr()).to_string());
    wait_until_async(Duration::from_secs(5), "the error is cleared", || {
        tp.proxy.shared().table.load().facts.last_reload_error.is_none()
    })
    .await;
    assert_eq!((tp.active().as_str(), tp.generation()), ("green", gen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_in_pieces_keeps_the_override() {
    use std::io::Write;
    let (_blue, _green, tp) = blue_green_proxy(ProxyConfig::new());
    tp.switch("green").await;
    let gen = tp.generation();
    let path = &tp.files.upstreams_toml;
    let text = std::fs::read_to_string(path).unwrap();
    let (first, rest) = text.split_at(text.find("[pools.green]").unwrap());
    let errors = || {
        metric(
            &tp.control_metrics(),
            "switchyard_config_reloads_total{result=\"error\"}",
        )
    };
    let events = tp.proxy.watch_events();
    // A slow writer: the same content, a pool at a time, 300 ms apart (the
    // pause is the behaviour under test), then closed.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    wait_until_async(Duration::from_secs(5), "the watcher sees the write", || {
        tp.proxy.watch_events() > events
    })
    .await;
    std::thread::sleep(Duration::from_millis(300));
    f.write_all(rest.as_bytes()).unwrap();
    drop(f);
    // Everything the watcher queued, then this read, through the one writer.
    wait_until_async(Duration::from_secs(5), "the close is seen", || {
        tp.proxy.watch_events() >= events + 3
    })
    .await;
    assert!(matches!(
        tp.proxy.reloader().reload().await,
        ReloadOutcome::Unchanged
    ));
    let st = tp.status().await;
    assert_eq!(
        (
            st["active"].as_str(),
            st["override"].as_bool(),
            st["generation"].as_u64()
        ),
        (Some("green"), Some(true), Some(gen)),
        "{st}"
    );
    assert_eq!(errors(), 0.0, "the half-written file was never read");
    assert_eq!(answering_pool(&tp).await, "green");
}
