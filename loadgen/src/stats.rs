//! Latency percentiles with `hdrhistogram`.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Latency {
    /// How many latencies were recorded.
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    #[serde(rename = "p99.9_ms")]
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

/// Records latencies at microsecond resolution, 3 significant digits, up
/// to one hour (longer ones are clamped).
#[derive(Debug, Clone)]
pub struct LatencyRecorder {
    hist: Histogram<u64>,
}

const MAX_US: u64 = 3_600_000_000;

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("constant histogram bounds are valid"),
        }
    }

    /// Records one latency given in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1_000).clamp(1, MAX_US);
        self.hist.saturating_record(us);
    }

    /// Adds another recorder's latencies.
    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of latencies recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles (all 0 when empty).
    pub fn summary(&self) -> Latency {
        if self.hist.is_empty() {
            return Latency::default();
        }
        let q = |q: f64| self.hist.value_at_quantile(q) as f64 / 1e3;
        Latency {
            count: self.hist.len(),
            p50_ms: q(0.5),
            p90_ms: q(0.9),
            p99_ms: q(0.99),
            p99_9_ms: q(0.999),
            max_ms: self.hist.max() as f64 / 1e3,
        }
    }
}

/// Percentiles of the given latencies (nanoseconds).
pub fn latency_of(latencies_ns: impl IntoIterator<Item = u64>) -> Latency {
    let mut r = LatencyRecorder::new();
    for ns in latencies_ns {
        r.record_ns(ns);
    }
    r.summary()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_thousand_ms() {
        // 1 ms .. 1000 ms: p50 = 500 ms, p90 = 900 ms, p99 = 990, max = 1000 (3 significant digits).
        let l = latency_of((1..=1000).map(|ms| ms * 1_000_000));
        assert_eq!(l.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(l.p50_ms, 500.0), "{l:?}");
        assert!(close(l.p90_ms, 900.0), "{l:?}");
        assert!(close(l.p99_ms, 990.0), "{l:?}");
        assert!(close(l.p99_9_ms, 999.0), "{l:?}");
        assert!(close(l.max_ms, 1000.0), "{l:?}");
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(latency_of([]), Latency::default());
    }
}
