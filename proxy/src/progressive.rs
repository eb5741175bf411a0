//! Progressive delivery at request time: which pool of the table a request
//! goes to when the table has `[preview]`, a split or a sticky cookie. The
//! order is the design's: preview (from an allowed address) first, then the
//! sticky cookie (while its pool has a share and is usable), then the
//! weights (a draw against the table's cumulative table), else the active
//! pool. No lock, and no allocation unless a request carries one of our
//! cookies (its `Cookie` header is then rebuilt without them).
//!
//! The control side (weights as routing intent, the automatic rollback)
//! is in [`crate::control`]; the table holds what is decided here
//! ([`RoutingTable::split`], [`RoutingTable::sticky`], [`RoutingTable::preview`]).

use std::cell::Cell;
use std::net::IpAddr;

use http::{header, HeaderMap, HeaderValue};

use crate::table::RoutingTable;

/// Where a request goes, by index in the table's pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The pool's index in [`RoutingTable::pools`].
    pub pool: usize,
    /// Whether the answer sets the sticky cookie (a split is active, the
    /// table has one, and the request did not already carry this pool).
    pub set_cookie: bool,
}

/// Why a preview request is answered by the proxy (503): it never falls back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreviewRefused {
    /// The header or cookie names no pool of the table.
    #[error("preview: `{0}` is not a pool")]
    UnknownPool(String),
    /// The pool has no usable endpoint.
    #[error("preview: pool `{0}` has no usable endpoint")]
    NotUsable(String),
}

/// Whether the table needs [`choose`] at all (else the active pool serves).
pub fn needed(table: &RoutingTable) -> bool {
    table.split.is_some() || table.preview.is_some() || table.sticky.is_some()
}

/// Chooses the pool of a request from `peer` with `headers` (see the module
/// doc), and removes the preview header and our cookies from `headers`
/// (always, whoever sent them). `rng` is this core's random state.
pub fn choose(
    table: &RoutingTable,
    headers: &mut HeaderMap,
    peer: IpAddr,
    rng: &Cell<u64>,
) -> Result<Choice, PreviewRefused> {
    let preview = table.preview.as_deref();
    let sticky = table.sticky.as_deref();
    let mut previewed = None;
    if let Some(p) = preview {
        let named = headers
            .get(&p.header)
            .and_then(|v| v.to_str().ok())
            .or_else(|| p.cookie.as_deref().and_then(|c| cookie(headers, c)))
            .map(str::trim);
        if let Some(name) = named.filter(|_| p.allow.iter().any(|n| n.contains(&peer))) {
            let Some(i) = index(table, name) else {
                return Err(PreviewRefused::UnknownPool(printable(name)));
            };
            if !usable(table, i) {
                return Err(PreviewRefused::NotUsable(table.pools[i].name.clone()));
            }
            previewed = Some(i);
        }
        headers.remove(&p.header);
    }
    let chosen = match (previewed, &table.split) {
        (Some(i), _) => Choice {
            pool: i,
            set_cookie: false,
        },
        (None, None) => Choice {
            pool: table.active,
            set_cookie: false,
        },
        (None, Some(pick)) => {
            let kept = sticky
                .and_then(|s| cookie(headers, &s.name))
                .and_then(|name| index(table, name))
                .filter(|i| table.weights[*i] > 0 && usable(table, *i));
            match kept {
                Some(i) => Choice {
                    pool: i,
                    set_cookie: false,
                },
                None => Choice {
                    pool: draw(table, pick, rng),
                    set_cookie: sticky.is_some(),
                },
            }
        }
    };
    let names = [
        preview.and_then(|p| p.cookie.as_deref()),
        sticky.map(|s| s.name.as_str()),
    ];
    strip_cookies(headers, &names);
    Ok(chosen)
}

/// The index of the pool named `name` in the table's pools.
fn index(table: &RoutingTable, name: &str) -> Option<usize> {
    table.pools.iter().position(|q| q.name == name)
}

/// A draw against the split's cumulative table: a pool in proportion to its
/// weight; one that is not usable gives way to the first usable pool with a
/// share (a split only sends to a usable pool while there is one).
fn draw(table: &RoutingTable, pick: &[u16], rng: &Cell<u64>) -> usize {
    let r = next(rng);
    // The high 32 bits scaled to 0..len: no modulo bias worth the name.
    let at = usize::try_from(((r >> 32) * pick.len() as u64) >> 32).unwrap_or(0);
    let i = pick.get(at).map_or(table.active, |i| usize::from(*i));
    if usable(table, i) {
        return i;
    }
    (0..table.pools.len())
        .find(|j| table.weights[*j] > 0 && usable(table, *j))
        .unwrap_or(i)
}

/// xorshift64*: a per-core generator, no lock, no syscall.
fn next(rng: &Cell<u64>) -> u64 {
    let mut x = rng.get();
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng.set(x);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A seed for core `core`'s generator (never 0, which xorshift keeps at 0).
pub fn seed(core: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ (core as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

/// Whether pool `i` can take a request: it has an endpoint routing uses
/// (unknown or healthy).
pub fn usable(table: &RoutingTable, i: usize) -> bool {
    table
        .pools
        .get(i)
        .is_some_and(|p| p.endpoints.iter().any(|e| e.health.get().usable()))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Removes the cookies named in `names` from the `Cookie` headers; other
/// cookies are kept (in order, joined with `; `), and a header left empty
/// is removed. Allocates only when one of them is present.
pub fn strip_cookies(headers: &mut HeaderMap, names: &[Option<&str>]) {
    if names.iter().all(Option::is_none) || !headers.contains_key(header::COOKIE) {
        return;
    }
    let ours = |pair: &str| {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k).trim();
        names.iter().flatten().any(|n| *n == k)
    };
    let present = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(';').any(ours));
    if !present {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(|pair| !pair.trim().is_empty() && !ours(pair))
        .map(|pair| pair.trim().to_string())
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// A name from a request, safe to put in an answer and a log line: at most
/// 64 characters of `a-z0-9-_`, others replaced by `?`.
fn printable(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_and_only_ours_are_stripped() {
        let mut h = headers(&["a=1; switchyard-pool=green", "b=2;preview=blue"]);
        assert_eq!(cookie(&h, "switchyard-pool"), Some("green"));
        assert_eq!(cookie(&h, "preview"), Some("blue"));
        assert_eq!(cookie(&h, "c"), None);
        strip_cookies(&mut h, &[Some("switchyard-pool"), Some("preview")]);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2"]);
        let mut only = headers(&["switchyard-pool=green"]);
        strip_cookies(&mut only, &[Some("switchyard-pool"), None]);
        assert!(only.get(header::COOKIE).is_none());
        let mut none = headers(&["x=1"]);
        strip_cookies(&mut none, &[Some("switchyard-pool")]);
        assert_eq!(none.get(header::COOKIE).unwrap(), "x=1");
    }

    #[test]
    fn the_generator_spreads_over_the_range() {
        let rng = Cell::new(seed(3));
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[(((next(&rng) >> 32) * 10) >> 32) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (9_000..11_000).contains(c)), "{counts:?}");
    }
}
