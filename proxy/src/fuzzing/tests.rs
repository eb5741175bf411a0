//! The fuzz targets' regressions and seeds, replayed in the normal `cargo
//! test`: every file under `fuzz/regressions/<target>/` (an input that once
//! crashed, kept after the fix) and `fuzz/seeds/<target>/` goes through the
//! target's entry function, which panics if an invariant breaks.

use std::path::{Path, PathBuf};

use super::*;
use crate::table::PoolDef;

/// The `fuzz/` directory of the project.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file of `fuzz/<kind>/<target>/` (none when the directory is absent).
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Replays the regressions and seeds of `target`; returns how many of the
/// seeds `entry` accepted and how many there were.
fn replay(target: &str, entry: fn(&[u8]) -> bool) -> (usize, usize) {
    for (path, bytes) in inputs("regressions", target) {
        eprintln!("replaying {}", path.display());
        entry(&bytes);
    }
    let seeds = inputs("seeds", target);
    let accepted = seeds
        .iter()
        .filter(|(path, bytes)| {
            eprintln!("replaying {}", path.display());
            entry(bytes)
        })
        .count();
    (accepted, seeds.len())
}

#[test]
fn upstreams_regressions_and_seeds() {
    let (accepted, seeds) = replay("upstreams", upstreams);
    assert!(
        accepted >= 1 && accepted < seeds,
        "{accepted} of {seeds} seeds accepted"
    );
    let project = include_bytes!("../../../config/upstreams.toml");
    assert!(upstreams(project), "config/upstreams.toml is accepted");
}

#[test]
fn proxy_toml_regressions_and_seeds() {
    let (accepted, seeds) = replay("proxy_toml", proxy_toml);
    assert!(
        accepted >= 1 && accepted < seeds,
        "{accepted} of {seeds} seeds accepted"
    );
    let project = include_bytes!("../../../config/proxy.toml");
    assert!(proxy_toml(project), "config/proxy.toml is accepted");
}

#[test]
fn admin_regressions_and_seeds() {
    let (accepted, seeds) = replay("admin", admin);
    assert!(
        accepted >= 1 && accepted < seeds,
        "{accepted} of {seeds} seeds accepted"
    );
    assert!(admin(b"/switch?to=green\n"));
    assert!(admin(b"/rollback\n{\"if_generation\":2}"));
    assert!(!admin(b"/rollback?to=blue\n"));
    assert!(admin(b"/switch\n{\"to\":\"green\",\"force\":true}"));
    assert!(admin(
        b"/switch\n{\"to\":\"green\",\"wait\":\"drained\",\"timeout\":\"90s\"}"
    ));
    assert!(admin(b"/rollback\n{\"wait\":\"drained\"}"));
    assert!(!admin(b"/switch?to=green\n{\"timeout\":\"1s\"}"));
    assert!(!admin(b"/switch?to=green&force=false\n{\"force\":true}"));
}

#[test]
fn decide_regressions_and_seeds() {
    let run = |bytes: &[u8]| {
        decide(bytes);
        true
    };
    replay("decide", run);
    // Any bytes are a script: none, a few, and many.
    for len in [0, 1, 7, 64, 4096] {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
        decide(&bytes);
    }
}

#[test]
fn generated_files_render_as_toml_that_reads_back() {
    let pools = vec![
        ("blue".to_string(), vec!["127.0.0.1:8081".to_string()]),
        (
            "green".to_string(),
            vec!["[::1]:8083".to_string(), "api:80".to_string()],
        ),
    ];
    let text = render("green", &pools, true);
    let d = Desired::parse(Path::new(UPSTREAMS), text.as_bytes()).expect(&text);
    let pools: Vec<(String, PoolDef)> = pools.into_iter().map(|(n, e)| (n, PoolDef::fixed(e))).collect();
    assert_eq!((d.active.as_str(), d.pools), ("green", pools));
    assert_eq!(key("a b"), "\"a b\"");
    assert_eq!(key("blue-2"), "blue-2");
}
