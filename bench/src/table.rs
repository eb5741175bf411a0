//! The report as plain text tables.

use std::fmt::Write;

use loadgen::report::{CutoverReport, Totals};
use loadgen::stats::Latency;

/// Formats rows as columns: the first `left` columns left-aligned, the others right-aligned.
pub fn format_table(header: &[&str], left: usize, rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            let pad = width[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if i < left {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for r in rows {
        line(&mut out, &mut r.iter().map(String::as_str));
    }
    out
}

/// `12.34`, or `-` for nothing.
pub fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// The whole report: one table of the cut-overs' correctness figures, one of
/// throughput and latency before, during and after each, and the totals.
pub fn format_report(cutovers: &[CutoverReport], totals: &Totals) -> String {
    let rows: Vec<Vec<String>> = cutovers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.how.clone(),
                c.source.clone(),
                format!(
                    "{} -> {}",
                    c.from.as_deref().unwrap_or("?"),
                    c.to.as_deref().unwrap_or("?")
                ),
                c.requests.to_string(),
                c.failed.to_string(),
                c.stale_after_ack.to_string(),
                num(c.ack_ms, 2),
                num(c.switch_to_first_new_ms, 2),
                num(c.mixed_window_ms, 2),
                num(c.gap_ms, 2),
            ]
        })
        .collect();
    let mut out = format_table(
        &[
            "cut-over",
            "how",
            "source",
            "versions",
            "requests",
            "failed",
            "stale_after_ack",
            "ack_ms",
            "switch_to_first_new_ms",
            "mixed_window_ms",
            "gap_ms",
        ],
        4,
        &rows,
    );
    out.push('\n');
    let mut rows = Vec::new();
    for c in cutovers {
        for (seg, rps, l) in [
            ("before", c.rps.before, &c.latency.before),
            ("during", c.rps.during, &c.latency.during),
            ("after", c.rps.after, &c.latency.after),
        ] {
            let name = if seg == "before" {
                c.name.clone()
            } else {
                String::new()
            };
            rows.push(latency_row(name, seg, rps, l));
        }
    }
    out.push_str(&format_table(
        &[
            "cut-over", "segment", "rps", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms",
        ],
        2,
        &rows,
    ));
    let _ = writeln!(
        out,
        "\ntotal: {} requests, failed: {}, {:.1} s, {:.0} requests/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        totals.requests,
        totals.failed,
        totals.elapsed_s,
        totals.rps,
        totals.latency.p50_ms,
        totals.latency.p99_ms,
        totals.latency.max_ms
    );
    out
}

fn latency_row(name: String, seg: &str, rps: Option<f64>, l: &Latency) -> Vec<String> {
    let ms = |v: f64| {
        if l.count == 0 {
            "-".to_string()
        } else {
            format!("{v:.2}")
        }
    };
    vec![
        name,
        seg.to_string(),
        num(rps, 0),
        ms(l.p50_ms),
        ms(l.p90_ms),
        ms(l.p99_ms),
        ms(l.p99_9_ms),
        ms(l.max_ms),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let t = format_table(
            &["name", "n"],
            1,
            &[
                vec!["a".into(), "1".into()],
                vec!["long name".into(), "123".into()],
            ],
        );
        assert_eq!(t, "name         n\na            1\nlong name  123\n");
    }
}
