//! Garbage configuration: `switchyard check` on 10 MB of it, and a running
//! proxy whose upstreams file is replaced by it. Either way: a clear error
//! naming the file, no panic, an error far shorter than the file (never
//! the file quoted whole), and (running) nothing changes: the proxy keeps
//! serving with its table.

use std::process::Command;
use std::time::Duration;

use testkit::config::{ProxyConfig, Upstreams};
use testkit::http::metric;

use crate::{Edge, BIN};

const TEN_MB: usize = 10 * 1024 * 1024;

/// Longest error the tests accept, in bytes: a few lines, whatever the file.
const SHORT: usize = 4096;

/// 10 MB of printable ASCII, no line end.
fn printable() -> Vec<u8> {
    (0..TEN_MB).map(|i| b'!' + (i % 90) as u8).collect()
}

/// 10 MB of pseudo-random bytes (not UTF-8).
fn random_bytes() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..TEN_MB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Valid TOML whose one key is `len` bytes long: the parser's error quotes
/// the key.
fn huge_key(len: usize) -> Vec<u8> {
    format!("\"{}\" = 1\n", "k".repeat(len)).into_bytes()
}

/// Whether `text` holds a run of 1000 bytes of the file (a quoted file).
fn quotes(text: &str, file: &[u8]) -> bool {
    let probe = &file[file.len() / 2..file.len() / 2 + 1000];
    text.as_bytes().windows(probe.len()).any(|w| w == probe)
}

#[test]
fn check_refuses_10_mb_of_garbage_with_a_short_error_and_no_panic() {
    // (which file, what garbage)
    let cases: [(&str, &str, Vec<u8>); 4] = [
        ("proxy.toml", "printable", printable()),
        ("proxy.toml", "random bytes", random_bytes()),
        ("upstreams.toml", "printable", printable()),
        ("upstreams.toml", "random bytes", random_bytes()),
    ];
    for (file, what, garbage) in cases {
        let files = ProxyConfig::new()
            .upstreams(Upstreams::blue("127.0.0.1:1"))
            .write();
        std::fs::write(files.dir.path().join(file), &garbage).unwrap();
        let out = Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(&files.proxy_toml)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("{file}, {what}");
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(file),
            "{what}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(out.stdout.is_empty(), "{what}");
        assert!(stderr.len() < SHORT, "{what}: {} bytes of error", stderr.len());
        assert!(!quotes(&stderr, &garbage), "{what}");
    }
}

#[test]
fn check_clips_an_error_that_quotes_a_huge_key() {
    // The parser's error quotes the key: 1,000,000 bytes of it (under the
    // upstreams file's size limit, 1 MiB; proxy.toml has none).
    for file in ["proxy.toml", "upstreams.toml"] {
        let files = ProxyConfig::new()
            .upstreams(Upstreams::blue("127.0.0.1:1"))
            .write();
        std::fs::write(files.dir.path().join(file), huge_key(1_000_000)).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&files.proxy_toml)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(
            stderr.contains(&format!("{file}: line 1: unknown field `kkk"))
                && stderr.contains("bytes in all)"),
            "{file}: {}",
            &stderr[..stderr.len().min(SHORT)]
        );
        assert!(stderr.len() < SHORT, "{file}: {} bytes of error", stderr.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_upstreams_file_is_rejected_and_the_proxy_keeps_serving() {
    let mut edge = Edge::start(ProxyConfig::new());
    edge.next_is_served("before the garbage").await;
    let many_errors: Vec<u8> = (0..70_000)
        .flat_map(|i| format!("[pools.p{i}]\n").into_bytes())
        .collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("10 MB printable", printable()),
        ("10 MB random bytes", random_bytes()),
        ("a 1,000,000-byte key", huge_key(1_000_000)),
        ("70,000 pools without endpoints", many_errors),
    ];
    const ERRORS: &str = "switchyard_config_reloads_total{result=\"error\"}";
    for (n, (what, garbage)) in cases.iter().enumerate() {
        edge.proxy.files.rename_upstreams_bytes(garbage);
        // The file events of the temp file's writing may re-read the old
        // file meanwhile; a SIGHUP after the rename reads this one.
        edge.proxy.proc.signal("HUP");
        tokio::task::block_in_place(|| {
            edge.proxy
                .proc
                .next_line(Duration::from_secs(20), &format!("{what}: rejected"), |l| {
                    l.contains("upstreams file rejected") && l.contains("cause=Signal")
                })
        });
        let m = edge.metrics().await;
        assert!(metric(&m, ERRORS) > n as f64, "{what}: {m}");
        let st = edge.status().await;
        let err = st["last_reload_error"].as_str().unwrap_or_default();
        assert!(err.contains("upstreams.toml"), "{what}: {st}");
        assert!(err.len() < SHORT, "{what}: {} bytes of error", err.len());
        assert!(!quotes(err, garbage), "{what}");
        assert_eq!(
            (&st["active"], &st["generation"]),
            (&serde_json::json!("blue"), &serde_json::json!(1)),
            "{what}: nothing changed"
        );
        edge.next_is_served(what).await;
    }
    // Its log: one line per rejection, none of them the file.
    let log = edge.proxy.proc.stdout_lines();
    assert!(!log.iter().any(|l| l.contains("panicked")), "a panic");
    let longest = log.iter().map(String::len).max().unwrap_or(0);
    assert!(longest < SHORT, "a log line of {longest} bytes");
    assert!(
        log.iter()
            .filter(|l| l.contains("upstreams file rejected"))
            .count()
            >= cases.len(),
        "{log:?}"
    );
}
