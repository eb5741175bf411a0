//! The fuzzing part of `cargo xtask test --long`: every target of the
//! `fuzz/` crate (cargo-fuzz layout, its own workspace) runs for
//! [`SECONDS_PER_TARGET`] with libFuzzer on the stable toolchain
//! (`--sanitizer none`). `cargo-fuzz` is installed with `cargo install
//! cargo-fuzz --locked` when it is missing.
//!
//! Each target reads the committed seeds (`fuzz/seeds/<target>/`) and keeps
//! what it learns in `fuzz/corpus/<target>/` (not tracked). A crash (a
//! panic, a timeout of one input, running out of memory) fails the run and
//! prints the reproducer that libFuzzer wrote under
//! `fuzz/artifacts/<target>/`; once fixed, the reproducer goes to
//! `fuzz/regressions/<target>/`, which the normal `cargo test` replays.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run};

/// The fuzz targets, in the order they run (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &["upstreams", "decide", "admin", "proxy_toml"];

/// How long `--long` runs each target (`-max_total_time`), in seconds.
pub const SECONDS_PER_TARGET: u64 = 60;

/// Longest one input may take before libFuzzer reports it as a hang.
const SECONDS_PER_INPUT: u64 = 10;

/// Runs `targets` (every one of [`TARGETS`] when empty) for `seconds`
/// each; fails, naming each reproducer, if any crashed.
pub fn fuzz(targets: &[String], seconds: u64) -> Result<()> {
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!("no fuzz target `{unknown}` (targets: {})", TARGETS.join(", "));
    }
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz()?;
    let root = root();
    let fuzz = root.join("fuzz");
    // The committed Cargo.lock is the one built (cargo fuzz has no --locked).
    run(cargo()
        .args(["metadata", "--locked", "--format-version", "1", "--manifest-path"])
        .arg(fuzz.join("Cargo.toml"))
        .stdout(Stdio::null()))?;
    run(cargo().args(["fuzz", "build", "--sanitizer", "none"]))?;
    let logs = root.join("target/fuzz-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut failed = Vec::new();
    for target in targets {
        let corpus = fuzz.join("corpus").join(target);
        let artifacts = fuzz.join("artifacts").join(target);
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let before = files(&artifacts)?;
        let log = logs.join(format!("{target}.log"));
        let mut cmd = cargo();
        cmd.args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(fuzz.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={SECONDS_PER_INPUT}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .stdout(File::create(&log).with_context(|| format!("cannot create {}", log.display()))?)
            .stderr(File::options().append(true).open(&log)?);
        eprintln!("+ {cmd:?} (output in {})", log.display());
        let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let new: Vec<PathBuf> = files(&artifacts)?.difference(&before).cloned().collect();
        if status.success() && new.is_empty() {
            let done = text
                .lines()
                .rev()
                .find(|l| l.starts_with("Done "))
                .unwrap_or("(no summary)");
            eprintln!("fuzz {target}: no crash; {done}");
            continue;
        }
        eprintln!("fuzz {target}: FAILED ({status}); from its output:");
        // The panic (message and assertion values), then the end.
        let lines: Vec<&str> = text.lines().collect();
        let panic = lines.iter().position(|l| l.contains("panicked at"));
        let end = lines.len().saturating_sub(20);
        for line in panic.map_or(&[][..], |p| &lines[p..(p + 6).min(end.max(p))]) {
            eprintln!("    {line}");
        }
        for line in &lines[end..] {
            eprintln!("    {line}");
        }
        for path in &new {
            eprintln!(
                "fuzz {target}: reproducer {}\n    replay: cargo fuzz run --sanitizer none {target} {}\n    \
                 once fixed, keep it: cp {} fuzz/regressions/{target}/",
                path.display(),
                path.display(),
                path.display()
            );
        }
        failed.push(target);
    }
    if !failed.is_empty() {
        bail!("fuzz targets crashed: {} (reproducers above)", failed.join(", "));
    }
    Ok(())
}

/// The files of `dir`.
fn files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            out.insert(path);
        }
    }
    Ok(out)
}

/// Installs `cargo-fuzz` when `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let there = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !there {
        run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
                "install",
                "cargo-fuzz",
                "--locked",
            ]),
        )?;
    }
    Ok(())
}
