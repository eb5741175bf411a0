//! `cargo xtask image-tag`: the image tag for the current git context.
//!
//! | context | tag |
//! | --- | --- |
//! | tag `vX.Y.Z` (CI) | `release-vX.Y.Z` |
//! | branch `main` (CI) | `staging-YYYY-MM-DD` |
//! | branch `develop` (CI) | `dev-YYYY-MM-DD` |
//! | pull request N (CI) | `pr-N-<short-sha>` |
//! | anything else, and every build outside CI | `local-<short-sha>`, plus `-dirty` when the work tree has changes |
//!
//! A build on a developer's machine is always a local build, whatever branch
//! is checked out: only CI (`GITHUB_ACTIONS=true` with `GITHUB_REF`) makes
//! the shared tags. Dates are UTC, from `SOURCE_DATE_EPOCH` when it is set.
//! The mapping itself is [`image_tag`], a pure function.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use time::OffsetDateTime;

/// Length of the abbreviated commit id in `local-…` and `pr-…` tags.
pub const SHORT_SHA_LEN: usize = 7;

/// Everything the tag depends on, gathered from the environment and git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagContext {
    /// The CI's full git ref (`refs/heads/main`, `refs/tags/v1.2.3`,
    /// `refs/pull/7/merge`); `None` for a local build.
    pub ci_ref: Option<String>,
    /// The full commit id of `HEAD`.
    pub sha: String,
    /// Whether the work tree differs from `HEAD` (tracked or untracked files).
    pub dirty: bool,
    /// The build date, `YYYY-MM-DD` (UTC).
    pub date: String,
}

/// Maps a git context to the image tag (see the module doc for the table).
pub fn image_tag(ctx: &TagContext) -> Result<String> {
    let short = short_sha(&ctx.sha)?;
    let local = || {
        if ctx.dirty {
            format!("local-{short}-dirty")
        } else {
            format!("local-{short}")
        }
    };
    let Some(reference) = ctx.ci_ref.as_deref() else {
        return Ok(local());
    };
    if let Some(tag) = reference.strip_prefix("refs/tags/") {
        if !is_release_version(tag) {
            bail!("git tag `{tag}` is not a release tag of the form vX.Y.Z");
        }
        return Ok(format!("release-{tag}"));
    }
    if let Some(branch) = reference.strip_prefix("refs/heads/") {
        return Ok(match branch {
            "main" => format!("staging-{}", ctx.date),
            "develop" => format!("dev-{}", ctx.date),
            _ => local(),
        });
    }
    if let Some(rest) = reference.strip_prefix("refs/pull/") {
        let number = rest.split('/').next().unwrap_or_default();
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            bail!("cannot read a pull request number from `{reference}`");
        }
        return Ok(format!("pr-{number}-{short}"));
    }
    bail!("unrecognised git ref `{reference}`")
}

fn short_sha(sha: &str) -> Result<&str> {
    if sha.len() < SHORT_SHA_LEN || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{sha}` is not a commit id");
    }
    Ok(&sha[..SHORT_SHA_LEN])
}

/// `vX.Y.Z` with decimal numbers and nothing after them.
fn is_release_version(tag: &str) -> bool {
    let Some(version) = tag.strip_prefix('v') else {
        return false;
    };
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The proleptic Gregorian date (UTC) of a Unix timestamp, `YYYY-MM-DD`.
pub fn utc_date(unix_seconds: u64) -> Result<String> {
    let date = i64::try_from(unix_seconds)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .with_context(|| format!("{unix_seconds} s after 1970 is past the year 9999"))?
        .date();
    Ok(format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    ))
}

fn git(args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(crate::root())
        .output()
        .with_context(|| format!("could not run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Reads the context: CI from `GITHUB_ACTIONS`/`GITHUB_REF`, the rest from git.
pub fn current_context() -> Result<TagContext> {
    let in_ci = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    let ci_ref = std::env::var("GITHUB_REF")
        .ok()
        .filter(|r| in_ci && !r.is_empty());
    let sha = git(&["rev-parse", "HEAD"])?;
    let dirty = !git(&["status", "--porcelain"])?.is_empty();
    let now = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .context("SOURCE_DATE_EPOCH is not a number of seconds")?,
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs(),
    };
    Ok(TagContext {
        ci_ref,
        sha,
        dirty,
        date: utc_date(now)?,
    })
}

/// Prints the tag for the current context.
pub fn main() -> Result<()> {
    let ctx = current_context()?;
    println!("{}", image_tag(&ctx)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0d4ad84c1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b";

    fn ctx(ci_ref: Option<&str>, dirty: bool) -> TagContext {
        TagContext {
            ci_ref: ci_ref.map(str::to_string),
            sha: SHA.into(),
            dirty,
            date: "2026-11-28".into(),
        }
    }

    fn tag(ci_ref: Option<&str>, dirty: bool) -> String {
        image_tag(&ctx(ci_ref, dirty)).unwrap()
    }

    #[test]
    fn local_build_is_local_short_sha() {
        assert_eq!(tag(None, false), "local-0d4ad84");
    }

    #[test]
    fn dirty_local_build_says_so() {
        assert_eq!(tag(None, true), "local-0d4ad84-dirty");
    }

    #[test]
    fn develop_is_dev_date() {
        assert_eq!(tag(Some("refs/heads/develop"), false), "dev-2026-11-28");
    }

    #[test]
    fn main_is_staging_date() {
        assert_eq!(tag(Some("refs/heads/main"), false), "staging-2026-11-28");
    }

    #[test]
    fn release_tag_is_release_version() {
        assert_eq!(tag(Some("refs/tags/v1.2.3"), false), "release-v1.2.3");
        assert_eq!(tag(Some("refs/tags/v0.10.0"), false), "release-v0.10.0");
    }

    #[test]
    fn other_tags_are_refused() {
        for bad in [
            "refs/tags/1.2.3",
            "refs/tags/v1.2",
            "refs/tags/v1.2.3-rc1",
            "refs/tags/vx.y.z",
        ] {
            assert!(image_tag(&ctx(Some(bad), false)).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_ci_branches_and_dirty_ci_trees_are_local() {
        assert_eq!(tag(Some("refs/heads/feature/x"), false), "local-0d4ad84");
        assert_eq!(tag(Some("refs/heads/feature/x"), true), "local-0d4ad84-dirty");
    }

    #[test]
    fn main_on_a_developer_machine_is_a_local_build() {
        // Locally there is no CI ref, whatever branch is checked out.
        assert_eq!(tag(None, false), "local-0d4ad84");
    }

    #[test]
    fn pull_request_is_pr_number_short_sha() {
        assert_eq!(tag(Some("refs/pull/42/merge"), false), "pr-42-0d4ad84");
        assert!(image_tag(&ctx(Some("refs/pull/x/merge"), false)).is_err());
    }

    #[test]
    fn bad_sha_is_an_error() {
        let mut c = ctx(None, false);
        c.sha = "xyz".into();
        assert!(image_tag(&c).is_err());
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        let date = |s| utc_date(s).unwrap();
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_709_251_199), "2024-02-29");
        assert_eq!(date(1_709_251_200), "2024-03-01");
        assert_eq!(date(1_798_761_599), "2026-12-31");
        assert!(utc_date(u64::MAX).is_err());
    }
}
