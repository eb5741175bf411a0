//! loadgen: keep-alive HTTP/1.1 load with every request recorded, and the
//! arithmetic that turns the recorded requests into a cut-over report (the
//! stale-answer check among it).
//!
//! One implementation for everyone who drives load through switchyard:
//! bench's `testclient` and `cutover` binaries, and the tests of every crate
//! (through `testkit`).
//!
//! Layout:
//! - [`clock`]     one monotonic clock for every timestamp of a run
//! - [`target`]    a `http://` URL split into connect address, `Host` and path
//! - [`sample`]    what is recorded per request; the version body parser
//! - [`generator`] N keep-alive connections on their own threads, closed or open loop
//! - [`stats`]     latency percentiles (hdrhistogram)
//! - [`report`]    the cut-over arithmetic: pure functions over samples

pub mod clock;
pub mod generator;
pub mod report;
pub mod sample;
pub mod stats;
pub mod target;

pub use generator::{LoadConfig, LoadGen, Recorder, Sink};
