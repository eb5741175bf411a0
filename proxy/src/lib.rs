//! switchyard: an HTTP edge proxy that cuts a service over from its blue
//! pool to its green one atomically, by itself.
//!
//! Layout (one concern per module; the import graph has no circle, see
//! docs/architecture.md):
//! - [`config`]: serde shapes of `proxy.toml` / `upstreams.toml`, their errors;
//! - [`table`]: the immutable [`table::RoutingTable`] and its validation;
//! - [`pool`]: a blue/green pool: endpoints and their health, the
//!   spreading rule (least in flight, ties by rotation), in-flight counts;
//! - [`progressive`]: preview, sticky cookie and split draw at request time;
//! - [`discovery`]: DNS names resolved at start and every `[discovery] every`;
//! - [`health`]: active checks, passive ejection, the one task that moves
//!   an endpoint's health;
//! - [`client`]: per-core upstream connections per endpoint (kept open and
//!   idle for reuse), and the request body sent upstream;
//! - [`headers`]: the request and response header rules (pure);
//! - [`conn`]: one client connection's context; [`worker`]: one core's;
//! - [`body`]: the response body and the per-request record;
//! - [`forward`]: one request, end to end (its sending and retry policy
//!   in `forward::send` and `forward::retry`);
//! - [`listener`]: per-core runtimes, accept loops (plain and HTTPS, with
//!   the TLS handshake and HTTP/1.1 or HTTP/2), graceful drain;
//! - [`tls`]: the rustls server configuration and its certificates,
//!   checked and swapped when their files change;
//! - [`balance`]: the cores' open connections, kept even by handing a
//!   newly accepted one to the least loaded core;
//! - [`local`], [`deadline`]: per-core metric buffers and coarse timers;
//! - [`control`]: the control plane: [`control::decide()`] (the switching
//!   rules, pure) and its single writer of the table;
//! - [`watch`]: the upstreams file watcher (and SIGHUP);
//! - [`status`]: the typed `/status` document; [`admin`]: the admin API;
//! - [`fleet`]: `switchyard switch` / `status` over many replicas (the
//!   admin API's client side);
//! - [`shared`]: what the cores and the control plane share;
//!   [`server`]: start-up and shutdown;
//! - [`metrics`]: Prometheus; [`error`]: errors and the one error → HTTP
//!   answer mapping;
//! - `fuzzing` (only with the `fuzzing` feature, and in unit tests): the
//!   entry functions of the fuzz targets in `fuzz/`.
//!
//! Request flow: a core's listener accepts → hyper reads the request →
//! [`forward::handle`] loads the table once and takes its active pool (or,
//! with a preview, a sticky cookie or a split, the one [`progressive`] picks) →
//! picks the usable endpoint with the fewest requests in flight on this core
//! and an idle upstream connection of this core (or opens one) → streams the request and the answer, recording
//! metrics when it ends.
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
pub mod conn;
pub mod control;
pub mod deadline;
pub mod discovery;
pub mod error;
pub mod fleet;
pub mod forward;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod headers;
pub mod health;
pub mod listener;
pub mod local;
pub mod metrics;
pub mod pool;
pub mod progressive;
pub mod server;
pub mod shared;
pub mod status;
pub mod table;
pub mod tls;
pub mod watch;
pub mod worker;

pub use config::{ConfigError, ConfigErrors};
pub use control::{ReloadOutcome, SwitchError, SwitchOutcome};
pub use error::Error;
pub use server::{raise_open_files_limit, run, Checked, Listeners, Proxy, Reloader};
pub use shared::{DataOpts, Shared};
