//! `cargo xtask links`: the link check (a part of `cargo xtask test`).
//!
//! 1. Every relative link of every tracked markdown file (`git ls-files
//!    '*.md'`) must name a file or directory that exists: `[text](path)`,
//!    `[text](path#anchor)`, `![image](path)` and reference definitions
//!    `[label]: path`, resolved against the markdown file's directory (a
//!    leading `/` against the repository root). The `#fragment` and `?query`
//!    are dropped and the path is percent-decoded; links with a scheme
//!    (`https:`, `mailto:`, …) and pure `#anchor`s are not checked, nor is
//!    anything inside fenced code blocks or inline code.
//! 2. No tracked text file may point at a file outside the project: the
//!    [`OUTSIDE`] names are reported wherever they appear (binary files and
//!    the target directory are not read).
//!
//! Every problem is printed as `file:line: target`; the check fails with
//! their count.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::root;

/// Files that are not part of the project, so nothing in it may point at them.
/// (Spelt in pieces so that this file does not name them itself.)
pub const OUTSIDE: &[&str] = &[
    concat!("DESIGN", ".md"),
    concat!("notes/", "performance.md"),
    concat!("..", "/shared/"),
];

/// A link of a markdown document: its 1-based line and its destination as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub line: usize,
    pub dest: String,
}

/// Runs the check over the tracked files of the repository.
pub fn check() -> Result<()> {
    let root = root();
    let mut problems = Vec::new();
    for file in tracked(&root, &["*.md"])? {
        let Some(text) = read_text(&root.join(&file))? else {
            continue;
        };
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for (line, target) in broken_links(&text, |path| {
            let resolved = match path.strip_prefix('/') {
                Some(from_root) => root.join(from_root),
                None => root.join(dir).join(path),
            };
            resolved.exists()
        }) {
            problems.push(format!("{file}:{line}: {target}"));
        }
    }
    for file in tracked(&root, &[])? {
        if file.starts_with("target/") {
            continue;
        }
        let Some(text) = read_text(&root.join(&file))? else {
            continue;
        };
        for (line, name) in outside_pointers(&text) {
            problems.push(format!("{file}:{line}: {name} (outside the project)"));
        }
    }
    for problem in &problems {
        println!("{problem}");
    }
    if !problems.is_empty() {
        bail!(
            "links: {} bad links or pointers outside the project",
            problems.len()
        );
    }
    eprintln!("links: all good");
    Ok(())
}

/// The tracked files matching `pathspecs` (all of them when empty), relative to `root`.
fn tracked(root: &Path, pathspecs: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--"])
        .args(pathspecs)
        .current_dir(root)
        .output()
        .context("could not run git ls-files")?;
    if !out.status.success() {
        bail!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let list = String::from_utf8(out.stdout).context("git ls-files printed a name that is not UTF-8")?;
    Ok(list
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect())
}

/// The text of a file; `None` when it is binary (a NUL byte, as git decides)
/// or gone from the work tree (tracked but deleted).
fn read_text(path: &Path) -> Result<Option<String>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if bytes[..bytes.len().min(8000)].contains(&0) {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The relative links of `markdown` whose path `exists` says is missing:
/// `(line, destination as written)`.
pub fn broken_links(markdown: &str, exists: impl Fn(&str) -> bool) -> Vec<(usize, String)> {
    extract_links(markdown)
        .into_iter()
        .filter(|link| local_path(&link.dest).is_some_and(|path| !exists(&path)))
        .map(|link| (link.line, link.dest))
        .collect()
}

/// Where a [`OUTSIDE`] name appears in `text`: `(line, name)`.
pub fn outside_pointers(text: &str) -> Vec<(usize, &'static str)> {
    text.lines()
        .enumerate()
        .flat_map(|(i, line)| {
            OUTSIDE
                .iter()
                .filter(move |name| line.contains(**name))
                .map(move |name| (i + 1, *name))
        })
        .collect()
}

/// The path a link destination names in the repository: `None` for a link
/// with a scheme (`https:`, `mailto:`, …), a protocol-relative `//host` one,
/// a pure `#anchor` and an empty one. The `#fragment` and `?query` are
/// dropped and the rest percent-decoded.
pub fn local_path(dest: &str) -> Option<String> {
    let dest = dest.trim();
    if dest.starts_with("//") || has_scheme(dest) {
        return None;
    }
    let path = &dest[..dest.find(['#', '?']).unwrap_or(dest.len())];
    if path.is_empty() {
        return None;
    }
    Some(
        percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// `scheme:` in front (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn has_scheme(dest: &str) -> bool {
    let Some((scheme, _)) = dest.split_once(':') else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// The links of a markdown document: inline links and images
/// `[text](dest "title")`, `[text](<dest>)`, and reference definitions
/// `[label]: dest`. Fenced code blocks and inline code are left out.
pub fn extract_links(markdown: &str) -> Vec<Link> {
    let text = mask_code(markdown);
    let line_of = |pos: usize| 1 + text[..pos].bytes().filter(|&b| b == b'\n').count();
    let mut links = Vec::new();
    // Inline links and images: `](` then the destination.
    let mut from = 0;
    while let Some(found) = text[from..].find("](") {
        let open = from + found + 2;
        from = open;
        if let Some(dest) = inline_destination(&text[open..]).filter(|d| !d.is_empty()) {
            links.push(Link {
                line: line_of(open),
                dest: dest.to_string(),
            });
        }
    }
    // Reference definitions: `[label]: dest` at the start of a line.
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if line.len() - trimmed.len() > 3 {
            continue;
        }
        let Some(rest) = trimmed.strip_prefix('[') else {
            continue;
        };
        let Some((label, after)) = rest.split_once("]:") else {
            continue;
        };
        if label.is_empty() || label.starts_with('^') || label.contains(['[', ']']) {
            continue;
        }
        let after = after.trim_start();
        let dest = match after.strip_prefix('<') {
            Some(angled) => angled.split_once('>').map(|(d, _)| d),
            None => after.split_whitespace().next(),
        };
        if let Some(dest) = dest.filter(|d| !d.is_empty()) {
            links.push(Link {
                line: i + 1,
                dest: dest.to_string(),
            });
        }
    }
    links.sort_by_key(|link| link.line);
    links
}

/// The destination at the start of `s` (just after `](`): `<…>`, or up to
/// whitespace or the `)` that closes the link (balanced parentheses and
/// backslash escapes allowed).
fn inline_destination(s: &str) -> Option<&str> {
    let s = s.trim_start_matches([' ', '\t']);
    if let Some(angled) = s.strip_prefix('<') {
        let end = angled.find(['>', '\n'])?;
        return angled[end..].starts_with('>').then(|| &angled[..end]);
    }
    let mut depth = 0usize;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' => depth += 1,
            ')' if depth == 0 => return Some(&s[..i]),
            ')' => depth -= 1,
            c if c.is_whitespace() => {
                // A title may follow; the destination ends here.
                return (depth == 0).then_some(&s[..i]);
            }
            _ => {}
        }
    }
    None
}

/// `markdown` with the contents of fenced code blocks and code spans
/// replaced by spaces; line breaks and byte offsets are kept.
fn mask_code(markdown: &str) -> String {
    let mut out = String::with_capacity(markdown.len());
    // The fence (character and length) of the open code block.
    let mut fence: Option<(char, usize)> = None;
    let mut prose = String::new();
    for line in markdown.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let run = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        match fence {
            Some((c, len)) => {
                if run(c) >= len && trimmed[run(c)..].trim().is_empty() {
                    fence = None;
                }
                out.push_str(&blank(line));
            }
            None => {
                let opens = ['`', '~'].into_iter().find(|&c| run(c) >= 3);
                if let Some(c) = opens {
                    out.push_str(&mask_code_spans(&std::mem::take(&mut prose)));
                    fence = Some((c, run(c)));
                    out.push_str(&blank(line));
                } else {
                    prose.push_str(line);
                }
            }
        }
    }
    out.push_str(&mask_code_spans(&prose));
    out
}

/// `s` with every code span (a run of backticks up to the next run of the
/// same length, within a paragraph) replaced by spaces, line breaks kept.
fn mask_code_spans(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'`' => {
                let len = bytes[i..].iter().take_while(|&&b| b == b'`').count();
                match closing_run(s, i + len, len) {
                    Some(end) => {
                        out.push_str(&s[copied..i]);
                        out.push_str(&blank(&s[i..end]));
                        copied = end;
                        i = end;
                    }
                    None => i += len,
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[copied.min(s.len())..]);
    out
}

/// The end of the run of exactly `len` backticks that closes a code span
/// opened before `from`, if there is one before the paragraph ends.
fn closing_run(s: &str, from: usize, len: usize) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => {
                let run = bytes[i..].iter().take_while(|&&b| b == b'`').count();
                if run == len {
                    return Some(i + run);
                }
                i += run;
            }
            b'\n' if s[i + 1..].split('\n').next().is_some_and(|l| l.trim().is_empty()) => {
                return None;
            }
            _ => i += 1,
        }
    }
    None
}

/// Spaces in place of every character of `s` but line breaks (same byte length).
fn blank(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' => c.to_string(),
            _ => " ".repeat(c.len_utf8()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dests(markdown: &str) -> Vec<(usize, String)> {
        extract_links(markdown)
            .into_iter()
            .map(|l| (l.line, l.dest))
            .collect()
    }

    fn link(line: usize, dest: &str) -> (usize, String) {
        (line, dest.to_string())
    }

    #[test]
    fn inline_links_images_and_definitions() {
        let md = "# Title\n\
                  See [the docs](docs/semantics.md) and [a section](docs/semantics.md#cut-over).\n\
                  ![a chart](docs/cutover.svg \"Cut-over\")\n\
                  [web](https://example.com/x) [mail](mailto:a@b.c) [here](#usage)\n\
                  [angled](<docs/with space.md>) [parens](a_(b).md)\n\
                  \n\
                  [ref]: config/proxy.toml\n\
                  [^note]: a footnote, not a link\n";
        assert_eq!(
            dests(md),
            vec![
                link(2, "docs/semantics.md"),
                link(2, "docs/semantics.md#cut-over"),
                link(3, "docs/cutover.svg"),
                link(4, "https://example.com/x"),
                link(4, "mailto:a@b.c"),
                link(4, "#usage"),
                link(5, "docs/with space.md"),
                link(5, "a_(b).md"),
                link(7, "config/proxy.toml"),
            ]
        );
    }

    #[test]
    fn fenced_code_and_inline_code_are_skipped() {
        let md = "before [a](a.md)\n\
                  ```rust\n\
                  let x = [b](b.md);\n\
                  ```\n\
                  ~~~~\n\
                  [c](c.md)\n\
                  ```\n\
                  [still code](d.md)\n\
                  ~~~~\n\
                  inline `[e](e.md)` and ``[f](f.md) with ` inside`` but [g](g.md)\n\
                  a lone ` backtick then [h](h.md)\n";
        assert_eq!(
            dests(md),
            vec![link(1, "a.md"), link(10, "g.md"), link(11, "h.md")]
        );
    }

    #[test]
    fn a_code_span_does_not_cross_a_blank_line() {
        let md = "an open ` here\n\nthen [i](i.md) and `code`\n";
        assert_eq!(dests(md), vec![link(3, "i.md")]);
    }

    #[test]
    fn local_paths_drop_anchors_queries_and_external_links() {
        assert_eq!(
            local_path("docs/semantics.md#cut-over").as_deref(),
            Some("docs/semantics.md")
        );
        assert_eq!(
            local_path("docs/cutover.svg?raw=true").as_deref(),
            Some("docs/cutover.svg")
        );
        assert_eq!(
            local_path("docs/with%20space.md").as_deref(),
            Some("docs/with space.md")
        );
        assert_eq!(local_path("../README.md").as_deref(), Some("../README.md"));
        for external in [
            "https://example.com",
            "http://x/y.md",
            "mailto:a@b.c",
            "//cdn/x.png",
            "#anchor",
            "",
        ] {
            assert_eq!(local_path(external), None, "{external}");
        }
    }

    #[test]
    fn broken_links_are_reported_with_their_line() {
        let md = "[ok](docs/semantics.md#x)\n\
                  ![img](docs/cutover.svg)\n\
                  [gone](docs/missing.md#anchor)\n\
                  ![gone too](img/missing.png)\n\
                  [web](https://example.com/missing.md)\n\
                  ```\n\
                  [in code](nowhere.md)\n\
                  ```\n";
        let exists = |p: &str| ["docs/semantics.md", "docs/cutover.svg"].contains(&p);
        assert_eq!(
            broken_links(md, exists),
            vec![link(3, "docs/missing.md#anchor"), link(4, "img/missing.png")]
        );
    }

    #[test]
    fn pointers_outside_the_project_are_found() {
        let text = format!(
            "fine\nsee {} for more\nas in `{}`, and {}x.md\nfine\n",
            OUTSIDE[0], OUTSIDE[1], OUTSIDE[2]
        );
        assert_eq!(
            outside_pointers(&text),
            vec![(2, OUTSIDE[0]), (3, OUTSIDE[1]), (3, OUTSIDE[2])]
        );
        assert!(outside_pointers("README.md and docs/semantics.md\n").is_empty());
    }
}
