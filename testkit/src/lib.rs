//! testkit: what the tests of every switchyard crate share.
//!
//! A dev-only crate: `switchyard`, `translation-api` and `bench` use it as a
//! dev-dependency, so it depends on none of them. What needs one of them (a
//! `switchyard::Proxy` started from the files [`config`] writes, a real
//! `translation_api::Running`) stays in that crate's own tests, a few lines
//! each.
//!
//! Layout:
//! - [`wait`]     `wait_until` / `wait_until_async`: poll a condition against a deadline
//! - [`process`]  a built binary as a child process: its log read line by line,
//!   the address it listens on taken from its "listening" line, killed on drop
//! - [`config`]   typed builders for `proxy.toml` and `upstreams.toml`, written into a temp dir
//! - [`upstream`] small real upstreams: echo, slow, header echo, upgrade echo, ones that close
//!   or stall or cut an answer mid-body (faulty), one that records every request as read
//!   off the wire (recorder)
//! - [`http`]     clients: a keep-alive hyper client, the admin API, raw HTTP/1.1 (one
//!   answer off a raw socket, the rest until it closes), metrics
//! - [`net`]      sockets: a port nothing listens on, slow clients, what a server has read
//! - [`load`]     keep-alive load through `loadgen` (the one load generator), with progress
//! - [`dns`]      a real DNS server on loopback whose zone a test changes at run time
//! - [`redis`]    a real `redis-server` on loopback
//! - [`tls`]      a test CA (`rcgen`), its certificates as PEM files, and an HTTPS client
//!   (HTTP/1.1 or HTTP/2 by ALPN) that tells which certificate it was shown
#![allow(clippy::unwrap_used)] // a test helper that cannot do its job fails the test

pub mod config;
pub mod dns;
pub mod http;
pub mod load;
pub mod net;
pub mod process;
pub mod redis;
pub mod tls;
pub mod upstream;
pub mod wait;

pub use loadgen;
pub use wait::{eventually, wait_until, wait_until_async};
