//! Switching by file, the two ways a file arrives:
//! - [`set_active_by_rename`]: edit `active` in a copy and rename it over
//!   the file (what an editor or a deploy tool does);
//! - [`ConfigMapDir`]: the kubelet's ConfigMap layout and its atomic
//!   `..data` swap (how Kubernetes delivers a changed ConfigMap).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// Returns `text` with its top-level `active` set to `pool`; comments and
/// layout are kept.
pub fn with_active(text: &str, pool: &str) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("parsing the upstreams file")?;
    match doc.get_mut("active").and_then(|i| i.as_value_mut()) {
        Some(v) => {
            // Keep the spacing and the trailing comment around the value.
            let decor = v.decor().clone();
            *v = toml_edit::Value::from(pool);
            *v.decor_mut() = decor;
        }
        None => doc["active"] = toml_edit::value(pool),
    }
    Ok(doc.to_string())
}

/// The top-level `active` and the pool names of an upstreams file.
pub fn read_pools(text: &str) -> anyhow::Result<(Option<String>, Vec<String>)> {
    let doc: toml_edit::DocumentMut = text.parse().context("parsing the upstreams file")?;
    let active = doc.get("active").and_then(|v| v.as_str()).map(str::to_string);
    let mut pools: Vec<String> = doc
        .get("pools")
        .and_then(|p| p.as_table_like())
        .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
        .unwrap_or_default();
    pools.sort();
    Ok((active, pools))
}

/// Writes `contents` to a temporary file beside `path` and renames it over
/// `path`. Returns the time (on `now`) taken just before the rename.
pub fn replace_by_rename(path: &Path, contents: &str, now: impl Fn() -> u64) -> anyhow::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().context("the upstreams path has no file name")?;
    let tmp = dir.join(format!(".{}.bench-tmp", name.to_string_lossy()));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    let at = now();
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} over {}", tmp.display(), path.display()))?;
    Ok(at)
}

/// Sets `active = pool` in the file at `path` by temp file + rename;
/// returns the time taken just before the rename.
pub fn set_active_by_rename(path: &Path, pool: &str, now: impl Fn() -> u64) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    replace_by_rename(path, &with_active(&text, pool)?, now)
}

/// A directory laid out as the kubelet lays out a ConfigMap volume:
///
/// ```text
/// dir/..2025_01_02_03_04_05.000000001/upstreams.toml   the files
/// dir/..data -> ..2025_01_02_03_04_05.000000001       the current version
/// dir/upstreams.toml -> ..data/upstreams.toml          one link per key
/// ```
///
/// An update writes a new timestamped directory, points a `..data_tmp` link
/// at it, renames `..data_tmp` over `..data` (the atomic swap) and removes
/// the old directory.
#[derive(Debug, Clone)]
pub struct ConfigMapDir {
    pub dir: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn timestamped_name() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // Unique even for two updates within a nanosecond's resolution.
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("..{}_{:09}.{seq}", d.as_secs(), d.subsec_nanos())
}

impl ConfigMapDir {
    /// Creates the layout in `dir` (created if missing) with the given files.
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ts = timestamped_name();
        write_files(&dir.join(&ts), files)?;
        std::os::unix::fs::symlink(&ts, dir.join("..data"))?;
        for (name, _) in files {
            std::os::unix::fs::symlink(Path::new("..data").join(name), dir.join(name))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing layout (e.g. a mounted ConfigMap), if `dir/..data` is there.
    pub fn open(dir: &Path) -> Option<Self> {
        std::fs::symlink_metadata(dir.join("..data"))
            .is_ok_and(|m| m.file_type().is_symlink())
            .then(|| Self {
                dir: dir.to_path_buf(),
            })
    }

    /// A file's current contents.
    pub fn read(&self, name: &str) -> anyhow::Result<String> {
        let p = self.dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// Replaces the files, as the kubelet does; returns the time (on `now`)
    /// taken just before the `..data` swap. The key set is expected to stay
    /// the same (new keys get their link; links of removed keys stay dangling).
    pub fn update(&self, files: &[(&str, &str)], now: impl Fn() -> u64) -> anyhow::Result<u64> {
        let data = self.dir.join("..data");
        let old =
            std::fs::read_link(&data).with_context(|| format!("reading the link {}", data.display()))?;
        let ts = timestamped_name();
        write_files(&self.dir.join(&ts), files)?;
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp)?;
        let at = now();
        std::fs::rename(&tmp, &data).context("swapping ..data")?;
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), link)?;
            }
        }
        if old != Path::new(&ts) {
            let _ = std::fs::remove_dir_all(self.dir.join(old));
        }
        Ok(at)
    }

    /// Sets `active = pool` in the file `name` by an update; returns the time
    /// taken just before the swap.
    pub fn set_active(&self, name: &str, pool: &str, now: impl Fn() -> u64) -> anyhow::Result<u64> {
        let text = with_active(&self.read(name)?, pool)?;
        self.update(&[(name, &text)], now)
    }
}

fn write_files(dir: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in files {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the cut-over file\nactive = \"blue\"  # which pool\n\n[pools.blue]\nendpoints = [\"127.0.0.1:1\"]\n\n[pools.green]\nendpoints = [\"127.0.0.1:2\"]\n";

    #[test]
    fn edits_active_keeping_the_layout() {
        let out = with_active(FILE, "green").unwrap();
        assert_eq!(out, FILE.replace("\"blue\"  #", "\"green\"  #"));
        assert_eq!(
            read_pools(&out).unwrap(),
            (Some("green".into()), vec!["blue".into(), "green".into()])
        );
    }

    #[test]
    fn rename_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("upstreams.toml");
        std::fs::write(&p, FILE).unwrap();
        let at = set_active_by_rename(&p, "green", || 42).unwrap();
        assert_eq!(at, 42);
        assert!(std::fs::read_to_string(&p)
            .unwrap()
            .contains("active = \"green\""));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn configmap_layout_and_swap() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("upstreams");
        let cm = ConfigMapDir::create(&dir, &[("upstreams.toml", FILE)]).unwrap();
        let link = dir.join("upstreams.toml");
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("..data/upstreams.toml")
        );
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        assert!(first.to_string_lossy().starts_with(".."));
        assert_eq!(std::fs::read_to_string(&link).unwrap(), FILE);
        assert!(ConfigMapDir::open(&dir).is_some());
        assert!(ConfigMapDir::open(root.path()).is_none());

        cm.set_active("upstreams.toml", "green", || 7).unwrap();
        let second = std::fs::read_link(dir.join("..data")).unwrap();
        assert_ne!(first, second);
        assert!(!dir.join(&first).exists(), "the old version is removed");
        assert!(!dir.join("..data_tmp").exists());
        assert!(std::fs::read_to_string(&link)
            .unwrap()
            .contains("active = \"green\""));
        // Entries: ..data, the new version, upstreams.toml.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    }
}
