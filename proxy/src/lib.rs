//! switchyard: an HTTP edge proxy that cuts a service over from its blue
//! pool to its green one atomically, by itself.
//!
//! Layout:
//! - [`config`]: serde shapes of `proxy.toml` / `upstreams.toml`;
//! - [`table`]: the immutable [`table::RoutingTable`] and its validation;
//! - [`pool`]: endpoints, round-robin, in-flight counts;
//! - [`client`]: the per-core upstream connection pool;
//! - [`body`]: the bodies of the data plane and the per-request record;
//! - [`forward`]: one request, end to end;
//! - [`listener`]: per-core runtimes, accept loops, graceful drain;
//! - [`balance`]: the cores' open connections, kept even by handing a
//!   newly accepted one to the least loaded core;
//! - [`control`]: the control plane: [`control::decide()`] (the switching
//!   rules, pure) and its single writer of the table;
//! - [`watch`]: the upstreams file watcher (and SIGHUP);
//! - [`status`]: the typed `/status` document;
//! - [`admin`]: the admin API; [`metrics`]: Prometheus; [`error`]: errors.
//!
//! Request flow: a core's listener accepts → hyper reads the request →
//! [`forward::handle`] loads the table once and takes its active pool →
//! picks an endpoint round-robin and a pooled connection of this core →
//! streams the request and the answer, recording metrics when it ends.
//!
//! Start-up: [`Checked`] reads and validates the files (what `switchyard
//! check` checks), [`Listeners`] binds the sockets, [`run`] (or
//! [`Proxy::spawn`] for a handle) runs the proxy until its shutdown future
//! completes; [`Proxy::start`] does all three from a `proxy.toml` path.

pub mod admin;
pub mod balance;
pub mod body;
pub mod client;
pub mod config;
pub mod control;
pub mod deadline;
pub mod error;
pub mod forward;
pub mod listener;
pub mod local;
pub mod metrics;
pub mod pool;
pub mod server;
pub mod shared;
pub mod status;
pub mod table;
pub mod watch;

pub use control::{ReloadOutcome, SwitchError, SwitchOutcome};
pub use error::{ConfigError, ConfigErrors, Error};
pub use server::{default_cores, run, Checked, Listeners, Proxy, Reloader};
pub use shared::{DataOpts, Shared};
