//! `cargo xtask` — the project's own automation (the xtask pattern).
//!
//! - `cargo xtask test [--long]`: everything CI runs. Installs what the tests
//!   need and is missing (Debian packages via apt when running as root),
//!   then runs the lints, the link check (see [`links`]), the module-graph
//!   check (see [`modules`]),
//!   `cargo test --workspace --locked` and the delivery checks (Dockerfiles,
//!   Helm charts, workflows: see [`delivery`]). `--long` then adds the slow
//!   suites: `cargo test --workspace --locked -- --ignored`. A slow test is
//!   an ignored one, `#[ignore = "slow: runs under cargo xtask test --long"]`,
//!   so that a plain `cargo test` leaves it out. `--long` also runs each fuzz
//!   target of `fuzz/` for [`fuzz::SECONDS_PER_TARGET`] (see [`mod@fuzz`]).
//! - `cargo xtask links`: only the link check (a part of `test`).
//! - `cargo xtask fuzz [--seconds N] [TARGET...]`: only the fuzz targets
//!   (all by default, each [`fuzz::SECONDS_PER_TARGET`] unless told; a part
//!   of `test --long`).
//! - `cargo xtask modules`: prints the proxy's module graph and checks it
//!   has no circle and matches `docs/architecture.md` (a part of `test`; see
//!   [`modules`]).
//! - `cargo xtask delivery`: only the delivery checks (a part of `test`).
//! - `cargo xtask image-tag`: prints the image tag for the current git
//!   context (see [`image_tag`]).
//! - `cargo xtask pgo [--locked] [--offline]`: the profile-guided build of
//!   switchyard, `target/pgo/switchyard` (see [`pgo`]).

mod delivery;
mod fuzz;
mod image_tag;
mod links;
mod modules;
mod pgo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

/// Debian packages the test suites start for real: `(package, binary it provides)`.
const APT_PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("prometheus", "promtool"),
    ("nodejs", "node"),
    ("npm", "npm"),
];

/// The project's own automation.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI runs: lints, links, tests, delivery checks.
    Test {
        /// Also run the slow suites (the ignored tests) and the fuzz targets.
        #[arg(long)]
        long: bool,
    },
    /// Prints the image tag for the current git context.
    ImageTag,
    /// Only the delivery checks (Dockerfiles, Helm charts, workflows).
    Delivery,
    /// Only the link check of the tracked markdown files.
    Links,
    /// Only the fuzz targets (a part of `test --long`).
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = fuzz::SECONDS_PER_TARGET)]
        seconds: u64,
        /// The targets to run (all when none is named).
        targets: Vec<String>,
    },
    /// Prints the proxy's module graph and checks it (no circle, documented).
    Modules,
    /// The profile-guided build of switchyard, `target/pgo/switchyard`.
    Pgo {
        /// Passed to every `cargo build`.
        #[arg(long)]
        locked: bool,
        /// Passed to every `cargo build`.
        #[arg(long)]
        offline: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { long } => test(long),
        Task::ImageTag => image_tag::main(),
        Task::Delivery => ensure_apt_packages().and_then(|()| delivery::check()),
        Task::Links => links::check(),
        Task::Fuzz { seconds, targets } => fuzz::fuzz(&targets, seconds),
        Task::Modules => {
            print!(
                "{}",
                modules::render(&modules::graph_of(&root().join("proxy/src"))?)
            );
            modules::check()
        }
        Task::Pgo { locked, offline } => {
            let flags: Vec<String> = [(locked, "--locked"), (offline, "--offline")]
                .into_iter()
                .filter(|(on, _)| *on)
                .map(|(_, flag)| flag.to_string())
                .collect();
            pgo::main(&flags)
        }
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub(crate) fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
        || Path::new("/usr/sbin").join(bin).is_file()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Installs the Debian packages whose binaries are missing, or says exactly how.
fn ensure_apt_packages() -> Result<()> {
    let mut missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(_, bin)| !have(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    // The delivery checks make a Python venv; Debian's python3 needs python3-venv for that.
    let venv_ok = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !venv_ok {
        missing.push("python3-venv");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let line = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "the tests need {}; install them with: sudo {line}",
            missing.join(", ")
        );
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn test(long: bool) -> Result<()> {
    ensure_apt_packages()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    links::check()?;
    modules::check()?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace", "--locked"]))?;
    if long {
        // The slow suites: every test marked `#[ignore = "slow: ..."]`.
        run(cargo().args(["test", "--workspace", "--locked", "--", "--ignored"]))?;
        // Then every fuzz target for a bounded time; a crash fails the run.
        fuzz::fuzz(&[], fuzz::SECONDS_PER_TARGET)?;
    }
    delivery::check()?;
    eprintln!("xtask test: all passed");
    Ok(())
}
