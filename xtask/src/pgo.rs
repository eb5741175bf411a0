//! `cargo xtask pgo [--locked] [--offline]`: the profile-guided release build
//! of switchyard, the build the proxy image ships and `bench/proxy_bench.py`
//! measures.
//!
//! 1. builds switchyard instrumented (`-Cprofile-generate`, the `dist`
//!    profile: release with fat LTO) and, plainly, the translation-api and
//!    the bench's `testclient` that train it;
//! 2. trains it on loopback: two translation-api upstreams (blue, green)
//!    behind it, keep-alive `GET /version` at 64 and 256 connections, with
//!    the access log off and then on; any failed request fails the build;
//! 3. merges the profile with `llvm-profdata` (rustup's `llvm-tools`
//!    component, added when missing and rustup is there);
//! 4. builds switchyard again with `-Cprofile-use` into `target/pgo/switchyard`,
//!    and checks that binary the same way, briefly (every answer right, a
//!    clean exit on SIGTERM).
//!
//! The compiler lays out and inlines the code for the paths the training
//! ran (fewer instructions and instruction-cache misses per request, see
//! README "Performance"). Paths it did not run (request bodies, upgrades,
//! TLS, the admin API) are compiled as cold code: as correct as in the plain
//! build, not tuned for speed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::delivery::target_dir;
use crate::{cargo, have, run};

/// What a run of the proxy is put through: for each proxy started (access
/// log off or on), the connections and seconds of keep-alive `GET /version`
/// steps (the testclient checks every answer: a version, from blue).
type Plan = &'static [(bool, &'static [(usize, u64)])];

/// The training: 15 s, mostly with the access log off (the default of the
/// benchmark; the chart's config turns it on).
const TRAINING: Plan = &[(false, &[(64, 5), (256, 5)]), (true, &[(64, 5)])];

/// The check of the final binary: it answers, without a failure.
const VERIFY: Plan = &[(false, &[(64, 1)]), (true, &[(64, 1)])];

/// Runs the whole build; `cargo_flags` (`--locked`, `--offline`) go to every
/// `cargo build`.
pub fn main(cargo_flags: &[String]) -> Result<()> {
    let host = host()?;
    let profdata = llvm_profdata(&host)?;
    let dir = target_dir().join("pgo");
    // No binary of an earlier build stays behind if this one fails.
    let out = dir.join("switchyard");
    if out.exists() {
        std::fs::remove_file(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let profiles = dir.join("profiles");
    if profiles.exists() {
        std::fs::remove_dir_all(&profiles).with_context(|| format!("removing {}", profiles.display()))?;
    }
    std::fs::create_dir_all(&profiles)?;

    run(cargo()
        .args(["build", "--release"])
        .args(cargo_flags)
        .args(["-p", "translation-api", "--bin", "translation-api"])
        .args(["-p", "bench", "--bin", "testclient"]))?;
    // With `--target`, RUSTFLAGS apply to switchyard and its dependencies
    // only, not to build scripts (which would write profiles too).
    let instrumented = build_switchyard(
        &dir.join("instrumented"),
        &format!("-Cprofile-generate={}", profiles.display()),
        &host,
        cargo_flags,
    )?;

    let release = target_dir().join("release");
    exercise(&instrumented, &release, &dir.join("train"), TRAINING)?;

    let merged = dir.join("switchyard.profdata");
    run(Command::new(&profdata)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .arg(&profiles))?;

    let optimized = build_switchyard(
        &dir.join("optimized"),
        &format!("-Cprofile-use={}", merged.display()),
        &host,
        cargo_flags,
    )?;
    exercise(&optimized, &release, &dir.join("verify"), VERIFY).with_context(|| {
        format!(
            "the profile-guided build {} failed its check",
            optimized.display()
        )
    })?;
    std::fs::copy(&optimized, &out).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("{}: the profile-guided build of switchyard", out.display());
    Ok(())
}

/// Builds switchyard in the `dist` profile with `rustflags`, in its own
/// target directory (so the two builds do not invalidate each other), and
/// returns the binary's path.
fn build_switchyard(
    target_dir: &Path,
    rustflags: &str,
    host: &str,
    cargo_flags: &[String],
) -> Result<PathBuf> {
    run(cargo()
        .args(["build", "--profile", "dist", "--target", host])
        .args(cargo_flags)
        .args(["-p", "switchyard", "--bin", "switchyard"])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("RUSTFLAGS", rustflags))?;
    Ok(target_dir.join(host).join("dist/switchyard"))
}

/// `llvm-profdata` of the toolchain that builds the project (its LLVM must
/// read the profiles that toolchain writes): rustup's `llvm-tools`.
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = output(Command::new(rustc()).args(["--print", "sysroot"]))?;
    let path = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !path.is_file() {
        if !have("rustup") {
            bail!(
                "{} is missing: the profile-guided build needs the llvm-tools of the Rust toolchain \
                 (rustup component add llvm-tools)",
                path.display()
            );
        }
        // In the workspace root, so that a toolchain file there (if any) applies.
        run(Command::new("rustup")
            .args(["component", "add", "llvm-tools"])
            .current_dir(crate::root()))?;
        if !path.is_file() {
            bail!(
                "`rustup component add llvm-tools` did not install {}",
                path.display()
            );
        }
    }
    Ok(path)
}

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

/// The target triple of the machine building (`rustc -vV`'s host).
fn host() -> Result<String> {
    let version = output(Command::new(rustc()).arg("-vV"))?;
    version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
        .context("`rustc -vV` names no host")
}

/// The standard output of `cmd`, run in the workspace root.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .current_dir(crate::root())
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Children killed when dropped, so a failed step leaves nothing running.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16, what: &str) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} is not listening on {addr} after 20 s")
}

/// Puts `proxy` through `plan` in front of two translation-api upstreams,
/// and stops it with SIGTERM after each of its runs: an instrumented proxy
/// writes its profile on the way out, and any proxy must exit cleanly.
fn exercise(proxy: &Path, release: &Path, dir: &Path, plan: Plan) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let mut upstreams = Running(Vec::new());
    let mut ports = Vec::new();
    for colour in ["blue", "green"] {
        let port = free_port()?;
        let log = std::fs::File::create(dir.join(format!("{colour}.log")))?;
        upstreams.0.push(
            Command::new(release.join("translation-api"))
                .args(["--listen", &format!("127.0.0.1:{port}"), "--access-log=false"])
                .env("APP_VERSION", colour)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("could not start translation-api")?,
        );
        wait_listening(port, "translation-api")?;
        ports.push(port);
    }
    std::fs::write(
        dir.join("upstreams.toml"),
        format!(
            "active = \"blue\"\n\n[pools.blue]\nendpoints = [\"127.0.0.1:{}\"]\n\n[pools.green]\nendpoints = [\"127.0.0.1:{}\"]\n",
            ports[0], ports[1]
        ),
    )?;
    for &(access, steps) in plan {
        let (http, admin) = (free_port()?, free_port()?);
        let config = dir.join(format!("proxy-access-{access}.toml"));
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttp = \"127.0.0.1:{http}\"\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
                 [upstreams]\nfile = \"upstreams.toml\"\n\n[log]\naccess = {access}\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join(format!("switchyard-access-{access}.log")))?;
        let mut running = Running(vec![Command::new(proxy)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("could not start {}", proxy.display()))?]);
        wait_listening(http, "switchyard")?;
        for &(connections, seconds) in steps {
            load(release, dir, http, connections, seconds)?;
        }
        // SIGTERM: the proxy drains, exits, and writes its profile on the way out.
        let pid = running.0[0].id().to_string();
        // The shell's own `kill`: the image's builder stage may have no procps.
        run(Command::new("sh").args(["-c", "kill -TERM \"$1\"", "sh", &pid]))?;
        let status = running.0[0].wait()?;
        running.0.clear();
        if !status.success() {
            bail!("{} exited with {status} on SIGTERM", proxy.display());
        }
    }
    Ok(())
}

/// `testclient` against the proxy; fails unless every request succeeded.
fn load(release: &Path, dir: &Path, port: u16, connections: usize, seconds: u64) -> Result<()> {
    let report = dir.join("testclient.json");
    // Not the report of an earlier step, if this one writes none.
    if report.exists() {
        std::fs::remove_file(&report).with_context(|| format!("removing {}", report.display()))?;
    }
    let out = Command::new(release.join("testclient"))
        .arg(format!("http://127.0.0.1:{port}/version"))
        .args(["--concurrency", &connections.to_string(), "--threads", "2"])
        .args(["--duration", &format!("{seconds}s"), "--json"])
        .arg(&report)
        .stderr(Stdio::inherit())
        .output()
        .context("could not start testclient")?;
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?,
    )
    .with_context(|| format!("{} is not JSON", report.display()))?;
    let count = |key: &str| summary.get(key).and_then(serde_json::Value::as_u64);
    match (out.status.success(), count("total"), count("failed")) {
        (true, Some(total), Some(0)) if total > 0 => {
            eprintln!("GET /version with {connections} connections: {total} requests, none failed");
            Ok(())
        }
        _ => bail!(
            "GET /version with {connections} connections failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        ),
    }
}
