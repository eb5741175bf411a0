//! The proxy's module graph: which top-level module of `proxy/src` uses
//! which (its `crate::…` paths outside comments and test modules). `cargo
//! xtask test` fails when the graph has a circle, or when the list under
//! "## Module graph" in `docs/architecture.md` is not this graph, so the
//! document stays true. `cargo xtask modules` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Top-level module → the top-level modules it uses.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The graph of `proxy/src` under `root`.
pub fn graph_of(src: &Path) -> Result<Graph> {
    let mut graph = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).unwrap_or(&path);
            let Some(top) = top_module(rel) else { continue };
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let uses = graph.entry(top.clone()).or_default();
            uses.extend(crate_uses(&text).into_iter().filter(|m| *m != top));
        }
    }
    Ok(graph)
}

/// The top-level module a source file belongs to (`forward/send.rs` →
/// `forward`); none for the crate root, the binary and test files.
fn top_module(rel: &Path) -> Option<String> {
    if rel.extension()? != "rs" || rel.file_stem()? == "tests" {
        return None;
    }
    let first = rel.components().next()?.as_os_str().to_str()?;
    let top = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(top, "lib" | "main")).then(|| top.to_string())
}

/// The top-level modules named by `crate::` paths in `text`, leaving out
/// comments and everything from `#[cfg(test)]` on (test modules close a file).
fn crate_uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        if line.starts_with("//") {
            continue;
        }
        let line = line.split(" //").next().unwrap_or(line);
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or(group);
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or_default();
                    if is_module_name(name) {
                        out.insert(name.to_string());
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if is_module_name(&name) {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Modules are lower-case; `crate::Shared` names an item of the root.
fn is_module_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A circle in the graph, as the path that closes it, if there is one.
pub fn circle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

/// The graph as `docs/architecture.md` lists it: the ```text block after
/// "## Module graph", one `module → a, b` line each; a bracketed note and
/// the `main` line are left out.
pub fn documented(markdown: &str) -> Result<Graph> {
    let section = markdown
        .split("## Module graph")
        .nth(1)
        .context("no \"## Module graph\" section")?;
    let block = section
        .split("```text")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .context("no ```text block in the module graph section")?;
    let mut graph = Graph::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (module, uses) = line
            .split_once('→')
            .with_context(|| format!("not `module → modules`: {line}"))?;
        let module = module.trim();
        if module == "main" {
            continue;
        }
        let uses = uses.split('(').next().unwrap_or_default();
        let uses = uses
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        graph.insert(module.to_string(), uses);
    }
    Ok(graph)
}

/// Prints `graph`, one line per module.
pub fn render(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, uses)| {
            let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
            let uses = if uses.is_empty() {
                "(none)".to_string()
            } else {
                uses.join(", ")
            };
            format!("{m:<9} → {uses}\n")
        })
        .collect()
}

/// The check `cargo xtask test` runs.
pub fn check() -> Result<()> {
    let root = crate::root();
    let graph = graph_of(&root.join("proxy/src"))?;
    if let Some(c) = circle(&graph) {
        bail!("modules: an import circle in proxy/src: {}", c.join(" → "));
    }
    let doc_path = root.join("docs/architecture.md");
    let doc =
        std::fs::read_to_string(&doc_path).with_context(|| format!("cannot read {}", doc_path.display()))?;
    let listed = documented(&doc)?;
    if listed != graph {
        bail!(
            "modules: docs/architecture.md's module graph is not the code's; the code's is:\n{}",
            render(&graph)
        );
    }
    eprintln!(
        "modules: {} modules, no circle, docs/architecture.md agrees",
        graph.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_paths_are_read_outside_comments_and_tests() {
        let text = "use crate::config::{self, Settings};\nuse crate::{admin, balance::Balancer};\n\
                    // use crate::commented;\nlet x = crate::local::f(); // crate::trailing\n\
                    use crate::Shared;\n#[cfg(test)]\nmod tests { use crate::testonly; }\n";
        let uses: Vec<String> = crate_uses(text).into_iter().collect();
        assert_eq!(uses, ["admin", "balance", "config", "local"]);
    }

    #[test]
    fn files_map_to_their_top_module() {
        assert_eq!(
            top_module(Path::new("forward/send.rs")).as_deref(),
            Some("forward")
        );
        assert_eq!(top_module(Path::new("table.rs")).as_deref(), Some("table"));
        assert_eq!(top_module(Path::new("control/decide/tests.rs")), None);
        assert_eq!(top_module(Path::new("lib.rs")), None);
    }

    #[test]
    fn a_circle_is_found_and_named() {
        let mut g = Graph::new();
        g.insert("a".into(), ["b".to_string()].into());
        g.insert("b".into(), ["c".to_string()].into());
        g.insert("c".into(), BTreeSet::new());
        assert_eq!(circle(&g), None);
        g.insert("c".into(), ["a".to_string()].into());
        assert_eq!(
            circle(&g),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }

    #[test]
    fn the_documented_list_is_parsed() {
        let md = "x\n## Module graph\ntext\n```text\nadmin → control, error (admin::x → y)\nbalance → (none)\nmain → the library\n```\n";
        let g = documented(md).unwrap();
        assert_eq!(g["admin"], ["control".to_string(), "error".to_string()].into());
        assert!(g["balance"].is_empty());
        assert!(!g.contains_key("main"));
    }
}
