//! Deadlines: poll a condition until it holds, or fail the test naming what
//! was awaited. One polling rule ([`Poll`]) behind a blocking and an async
//! front.

use std::time::{Duration, Instant};

/// How often a condition is checked.
pub const POLL_EVERY: Duration = Duration::from_millis(5);

/// The state of one wait: when it gives up and what it waits for.
#[derive(Debug)]
pub struct Poll {
    deadline: Instant,
    within: Duration,
    what: String,
}

impl Poll {
    /// A wait of at most `within` for `what` (named in the panic message).
    pub fn new(within: Duration, what: &str) -> Self {
        Self {
            deadline: Instant::now() + within,
            within,
            what: what.to_string(),
        }
    }

    /// Whether the deadline has passed.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Fails the test: the deadline passed; `details` (e.g. the output so far) is appended.
    pub fn fail(&self, details: &str) -> ! {
        panic!(
            "timed out after {:?} waiting for: {}{details}",
            self.within, self.what
        )
    }

    /// The pause before the next check; fails the test once the deadline has passed.
    pub fn next_pause(&self) -> Duration {
        if self.expired() {
            self.fail("");
        }
        POLL_EVERY
    }
}

/// Blocks until `cond` holds; panics after `within`, naming `what`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let poll = Poll::new(within, what);
    while !cond() {
        std::thread::sleep(poll.next_pause());
    }
}

/// As [`wait_until`], sleeping on the tokio timer between checks.
pub async fn wait_until_async(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let poll = Poll::new(within, what);
    while !cond() {
        tokio::time::sleep(poll.next_pause()).await;
    }
}

/// As [`wait_until_async`], for a condition that is itself async (a scrape,
/// an admin call).
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let poll = Poll::new(within, what);
    while !check().await {
        tokio::time::sleep(poll.next_pause()).await;
    }
}
