//! One monotonic clock for every timestamp of a run.
//!
//! The definitions of "Measuring a cut-over" compare send times, answer
//! times and acknowledgement times taken on different threads; they are only
//! comparable because all of them are nanoseconds since the same [`Instant`].

use std::time::{Duration, Instant};

/// A monotonic clock: nanoseconds since its origin (`CLOCK_MONOTONIC` on Linux).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since the origin.
    pub fn now_ns(&self) -> u64 {
        self.ns_of(Instant::now())
    }

    /// An instant, as nanoseconds since the origin (0 for instants before it).
    pub fn ns_of(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the origin.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }
}

/// Nanoseconds as (fractional) milliseconds, for reports.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A signed difference of two timestamps, in milliseconds.
pub fn diff_ms(later: u64, earlier: u64) -> f64 {
    (later as i128 - earlier as i128) as f64 / 1e6
}
