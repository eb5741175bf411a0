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
//! Layout:
//! - [`clock`]    one monotonic clock for every timestamp of a run
//! - [`target`]   a `http://` URL split into connect address, `Host` and path
//! - [`sample`]   what is recorded per request; the version body parser
//! - [`loadgen`]  N keep-alive connections on their own threads, closed or open loop
//! - [`stats`]    latency percentiles (hdrhistogram)
//! - [`report`]   the cut-over arithmetic: pure functions over samples
//! - [`plot`]     the SVG timeline
//! - [`table`]    the report as a text table
//! - [`admin`]    a timed client for switchyard's admin API
//! - [`upstreams`] switching by file: temp file + rename, the ConfigMap `..data` swap
//! - [`driver`]   a scenario: load through a proxy while switching it, phase by phase

pub mod admin;
pub mod clock;
pub mod driver;
pub mod loadgen;
pub mod plot;
pub mod report;
pub mod sample;
pub mod stats;
pub mod table;
pub mod target;
pub mod upstreams;
