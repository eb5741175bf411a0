//! The report's arithmetic: pure functions over recorded samples.
//!
//! Definitions (docs/cutover.md, "What is measured"):
//! - **stale after ack**: requests *sent* after the acknowledgement and
//!   answered by the old version. For an admin switch the acknowledgement
//!   is the moment the `POST` response was fully received. A file switch has
//!   no acknowledgement; its observable one is the first answer of the new
//!   version: no request sent after that may be answered by the old one.
//! - **mixed window**: from the first answer of the new version to the last
//!   answer of the old one (0 when they do not overlap).
//! - **gap**: when they do not overlap, from the last answer of the old
//!   version to the first of the new one: a pause in which no request was
//!   answered at all (0 when they overlap).
//! - **switch to first new**: from issuing the switch (the `POST` written,
//!   the file renamed, `..data` swapped) to the first answer of the new version.
//! - **before / during / after**: requests answered more than 100 ms before
//!   the switch was issued, within ±100 ms of it, and more than 100 ms after.

use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::{diff_ms, ms};
use crate::sample::Sample;
use crate::stats::{latency_of, Latency};

/// Half the width of the "during" segment around a switch.
pub const DURING_HALF_WIDTH_NS: u64 = 100_000_000;

/// One cut-over as the orchestrator performed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Switch {
    /// A name for people, e.g. "admin switch".
    pub name: String,
    /// Who made the switch, as the proxy names it: `admin`, `file`, `rollback`.
    pub source: String,
    /// How it was made, e.g. "POST /switch", "rename", "..data swap".
    pub how: String,
    /// When it was issued: just before the `POST` was written, or right after
    /// the rename returned.
    pub issued_ns: u64,
    /// When the admin API's answer was fully received; `None` for file switches.
    pub ack_ns: Option<u64>,
    /// The requests *answered* in this range belong to this cut-over.
    pub phase: Range<u64>,
    /// The generation the proxy reported for the switch, when known.
    pub generation: Option<u64>,
    /// The version that should answer after the switch, when known.
    pub expected: Option<String>,
    /// Why the switch could not be made, if it could not.
    pub error: Option<String>,
}

/// A value before, during (±100 ms) and after a switch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Segments<T> {
    pub before: T,
    pub during: T,
    pub after: T,
}

/// What the acknowledgement of a cut-over was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    /// The admin API's response, fully received.
    Response,
    /// The first answer of the new version (file switches).
    FirstNewAnswer,
    /// No acknowledgement: the new version never answered.
    None,
}

/// The measured result of one cut-over; the `--json` shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CutoverReport {
    pub name: String,
    pub source: String,
    pub how: String,
    /// The version answering before the switch (the last answer before it was issued).
    pub from: Option<String>,
    /// The version answering at the end of the phase.
    pub to: Option<String>,
    pub generation: Option<u64>,
    /// Requests answered (or failed) in this phase.
    pub requests: u64,
    pub failed: u64,
    pub stale_after_ack: u64,
    pub ack: Ack,
    /// From issuing the switch to its acknowledgement.
    pub ack_ms: Option<f64>,
    pub mixed_window_ms: Option<f64>,
    /// The pause with no answer between the last old answer and the first new one.
    pub gap_ms: Option<f64>,
    pub switch_to_first_new_ms: Option<f64>,
    /// Requests answered per second.
    pub rps: Segments<Option<f64>>,
    /// Latency percentiles (from the intended send time) of the requests answered in each segment.
    pub latency: Segments<Latency>,
    /// The version that should answer after the switch, when known.
    pub expected: Option<String>,
    /// Why the switch could not be made, if it could not.
    pub error: Option<String>,
}

impl CutoverReport {
    /// True when the switch was made, the version changed (to the expected
    /// one, when known), nothing failed and nothing was stale.
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.failed == 0
            && self.stale_after_ack == 0
            && self.changed()
            && (self.expected.is_none() || self.expected == self.to)
    }

    /// True when the new version answered and differs from the old one.
    pub fn changed(&self) -> bool {
        self.to.is_some() && self.from != self.to && self.switch_to_first_new_ms.is_some()
    }
}

/// Measures one cut-over from the samples of the run it happened in.
pub fn cutover_report(samples: &[Sample], switch: &Switch) -> CutoverReport {
    let in_phase: Vec<&Sample> = samples
        .iter()
        .filter(|s| switch.phase.contains(&s.done_ns))
        .collect();
    let failed = in_phase.iter().filter(|s| !s.ok()).count() as u64;
    let last_ok = |it: &mut dyn Iterator<Item = &&Sample>| -> Option<Arc<str>> {
        it.filter(|s| s.ok())
            .max_by_key(|s| s.done_ns)
            .and_then(|s| s.version.clone())
    };
    let from = last_ok(&mut in_phase.iter().filter(|s| s.done_ns < switch.issued_ns));
    let to = last_ok(&mut in_phase.iter());
    let new = to.as_ref().filter(|to| Some(*to) != from.as_ref());

    let of_version = |v: &Arc<str>| {
        let v = v.clone();
        in_phase
            .iter()
            .copied()
            .filter(move |s| s.ok_version() == Some(&*v))
    };
    let first_new = new.and_then(|v| of_version(v).map(|s| s.done_ns).min());
    let last_old = from.as_ref().and_then(|v| of_version(v).map(|s| s.done_ns).max());

    let (ack, ack_ns) = match (switch.ack_ns, first_new) {
        (Some(a), _) => (Ack::Response, Some(a)),
        (None, Some(f)) => (Ack::FirstNewAnswer, Some(f)),
        (None, None) => (Ack::None, None),
    };
    let stale_after_ack = match (ack_ns, &from, new) {
        (Some(a), Some(old), Some(_)) => of_version(old).filter(|s| s.sent_ns > a).count() as u64,
        _ => 0,
    };
    let (mixed_window_ms, gap_ms) = match (first_new, last_old) {
        (Some(f), Some(l)) => (Some(diff_ms(l, f).max(0.0)), Some(diff_ms(f, l).max(0.0))),
        _ => (None, None),
    };

    let p = &switch.phase;
    let lo = switch
        .issued_ns
        .saturating_sub(DURING_HALF_WIDTH_NS)
        .clamp(p.start, p.end);
    let hi = switch
        .issued_ns
        .saturating_add(DURING_HALF_WIDTH_NS)
        .clamp(p.start, p.end);
    let ranges = Segments {
        before: p.start..lo,
        during: lo..hi,
        after: hi..p.end,
    };
    let seg = |r: &Range<u64>| -> Vec<&Sample> {
        in_phase
            .iter()
            .copied()
            .filter(|s| r.contains(&s.done_ns))
            .collect()
    };
    let rps = |r: &Range<u64>| {
        let len = r.end.saturating_sub(r.start);
        (len > 0).then(|| seg(r).len() as f64 / (len as f64 / 1e9))
    };
    let lat = |r: &Range<u64>| latency_of(seg(r).into_iter().map(|s| s.latency_ns()));

    CutoverReport {
        name: switch.name.clone(),
        source: switch.source.clone(),
        how: switch.how.clone(),
        from: from.as_deref().map(str::to_string),
        to: to.as_deref().map(str::to_string),
        generation: switch.generation,
        requests: in_phase.len() as u64,
        failed,
        stale_after_ack,
        ack,
        ack_ms: switch.ack_ns.map(|a| diff_ms(a, switch.issued_ns)),
        mixed_window_ms,
        gap_ms,
        switch_to_first_new_ms: first_new.map(|f| diff_ms(f, switch.issued_ns)),
        rps: Segments {
            before: rps(&ranges.before),
            during: rps(&ranges.during),
            after: rps(&ranges.after),
        },
        latency: Segments {
            before: lat(&ranges.before),
            during: lat(&ranges.during),
            after: lat(&ranges.after),
        },
        expected: switch.expected.clone(),
        error: switch.error.clone(),
    }
}

/// Totals over every sample of a run (warm-up and gaps between phases included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub failed: u64,
    /// From the first send to the last answer.
    pub elapsed_s: f64,
    pub rps: f64,
    pub latency: Latency,
}

/// Totals of `samples` (which may come from several runs).
pub fn totals(samples: &[Sample]) -> Totals {
    let first = samples.iter().map(|s| s.intended_ns).min().unwrap_or(0);
    let last = samples.iter().map(|s| s.done_ns).max().unwrap_or(0);
    let elapsed = ms(last.saturating_sub(first)) / 1e3;
    Totals {
        requests: samples.len() as u64,
        failed: samples.iter().filter(|s| !s.ok()).count() as u64,
        elapsed_s: elapsed,
        rps: if elapsed > 0.0 {
            samples.len() as f64 / elapsed
        } else {
            0.0
        },
        latency: latency_of(samples.iter().map(|s| s.latency_ns())),
    }
}

/// Answers per time bucket, by version, for the timeline plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub bucket_ns: u64,
    /// Start of the first bucket (a multiple of `bucket_ns`).
    pub start_ns: u64,
    /// The versions, in order of first answer.
    pub versions: Vec<Arc<str>>,
    pub buckets: Vec<Bucket>,
}

/// One bucket of the [`Timeline`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bucket {
    /// Successful answers per version, indexed like [`Timeline::versions`].
    pub per_version: Vec<u32>,
    pub failed: u32,
}

/// Buckets the samples by answer time.
pub fn timeline(samples: &[Sample], bucket_ns: u64) -> Timeline {
    assert!(bucket_ns > 0, "bucket width must be positive");
    let mut sorted: Vec<&Sample> = samples.iter().collect();
    sorted.sort_by_key(|s| s.done_ns);
    let mut versions: Vec<Arc<str>> = Vec::new();
    for s in &sorted {
        if let Some(v) = s.ok_version() {
            if !versions.iter().any(|x| &**x == v) {
                versions.push(s.version.clone().expect("ok_version implies a version"));
            }
        }
    }
    let (Some(first), Some(last)) = (sorted.first(), sorted.last()) else {
        return Timeline {
            bucket_ns,
            start_ns: 0,
            versions,
            buckets: Vec::new(),
        };
    };
    let start_ns = first.done_ns / bucket_ns * bucket_ns;
    let n = ((last.done_ns - start_ns) / bucket_ns + 1) as usize;
    let mut buckets = vec![
        Bucket {
            per_version: vec![0; versions.len()],
            failed: 0,
        };
        n
    ];
    for s in sorted {
        let b = &mut buckets[((s.done_ns - start_ns) / bucket_ns) as usize];
        match s.ok_version() {
            Some(v) => {
                let i = versions
                    .iter()
                    .position(|x| &**x == v)
                    .expect("every version was collected");
                b.per_version[i] += 1;
            }
            None => b.failed += 1,
        }
    }
    Timeline {
        bucket_ns,
        start_ns,
        versions,
        buckets,
    }
}

#[cfg(test)]
mod tests;
