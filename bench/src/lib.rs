//! bench: switchyard's test client and its cut-over measurement.
//!
//! Two binaries sit on this library:
//! - `testclient [URL]` — the original project's test client, kept: requests
//!   as fast as it can (or at `--rate`), a line per 1000 requests, per failure
//!   and per version change, a summary on Ctrl-C.
//! - `cutover` — starts blue, green and switchyard in-process (or targets a
//!   running deployment), drives load through the proxy, switches four ways
//!   and reports what each cut-over cost.
//!
//! The load generator, its samples, clock and latency statistics, and the
//! cut-over arithmetic live in the `loadgen` crate, which the tests of every
//! crate share (through `testkit`).
//!
//! Layout:
//! - [`plot`]     the SVG timeline
//! - [`table`]    the report as a text table
//! - [`admin`]    a timed client for switchyard's admin API
//! - [`upstreams`] switching by file: temp file + rename, the ConfigMap `..data` swap
//! - [`driver`]   the full story: load through a proxy while switching it, phase by phase
//! - [`scenario`] `cutover --scenario NAME`: the other stories (broken green, a fleet)

pub mod admin;
pub mod driver;
pub mod plot;
pub mod scenario;
pub mod table;
pub mod upstreams;
