//! Hostile input (issue 16, item 4): request smuggling shapes, bad header
//! bytes, a trickled head and body, a client that never reads a large
//! answer, and a 10 MB garbage configuration. Each case asserts what the
//! client sees (a status, or the connection closed), what is counted, what
//! the upstream received (read off the wire by a strict raw upstream,
//! [`testkit::upstream::recorder`]), and that the next normal request, on
//! a fresh connection, is served. The outcomes are listed in
//! docs/hostile-input.md.
#![allow(clippy::unwrap_used)]

mod hostile {
    pub mod config;
    pub mod slow;
    pub mod smuggling;
}

use std::net::SocketAddr;
use std::time::Duration;

use testkit::config::{ProxyConfig, Upstreams};
use testkit::http::{get_text, metric, Client};
use testkit::process::Switchyard;
use testkit::upstream::{self, End, Recorder};
use testkit::wait::eventually;

pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Every reason of `switchyard_rejected_total` (docs/configuration.md).
const REASONS: [&str; 7] = [
    "bad_request",
    "uri_too_long",
    "head_too_large",
    "method_not_allowed",
    "send_timeout",
    "tunnel_idle",
    "body_timeout",
];

/// The `switchyard` binary in front of a [`Recorder`] (pool `blue`).
pub struct Edge {
    pub proxy: Switchyard,
    pub upstream: Recorder,
}

impl Edge {
    /// Starts the binary with `config`, its one pool the recorder.
    pub fn start(config: ProxyConfig) -> Edge {
        let upstream = upstream::recorder();
        let proxy = Switchyard::start(BIN, config.upstreams(Upstreams::blue(upstream.addr)));
        Edge { proxy, upstream }
    }

    pub fn http(&self) -> SocketAddr {
        self.proxy.http
    }

    /// A scrape of `/metrics`.
    pub async fn metrics(&self) -> String {
        let (code, text) = get_text(self.proxy.admin, "/metrics").await;
        assert_eq!(code, 200, "{text}");
        text
    }

    /// `/status`.
    pub async fn status(&self) -> serde_json::Value {
        let (code, st) = testkit::http::admin(self.proxy.admin, "GET", "/status", "", None).await;
        assert_eq!(code, 200, "{st}");
        st
    }

    /// `switchyard_rejected_total` by reason, in the order of [`REASONS`].
    pub async fn rejected(&self) -> [f64; 7] {
        let m = self.metrics().await;
        REASONS.map(|r| metric(&m, &format!("switchyard_rejected_total{{reason=\"{r}\"}}")))
    }

    /// Waits until `switchyard_rejected_total` is `before` plus one for
    /// `reason` (if any), every other reason unchanged.
    pub async fn wait_rejected(&self, before: [f64; 7], reason: Option<&str>, what: &str) {
        let mut want = before;
        if let Some(r) = reason {
            let i = REASONS.iter().position(|x| *x == r).unwrap();
            want[i] += 1.0;
        }
        eventually(
            Duration::from_secs(10),
            &format!("{what}: rejected_total"),
            || async { self.rejected().await == want },
        )
        .await;
    }

    /// A normal `GET /next-…` on a new connection: served (200 `ok` from
    /// the upstream), and the upstream's last request is exactly that one,
    /// whole.
    pub async fn next_is_served(&self, what: &str) {
        let path = format!(
            "/next-{}",
            what.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        );
        let mut c = Client::connect(self.http()).await.unwrap();
        let (status, _, body) = c.get(&path).await.unwrap();
        assert_eq!(
            (status.as_u16(), &body[..]),
            (200, &b"ok"[..]),
            "{what}: the next request"
        );
        let last = self.upstream.requests().pop().unwrap();
        assert_eq!(
            (last.line.as_str(), &last.end),
            (format!("GET {path} HTTP/1.1").as_str(), &End::Complete),
            "{what}"
        );
    }

    /// The upstream's requests from index `from` on, once at least `n`
    /// have ended there.
    pub async fn upstream_saw(&self, from: usize, n: usize, what: &str) -> Vec<upstream::Recorded> {
        eventually(
            Duration::from_secs(10),
            &format!("{what}: {n} request(s) upstream"),
            || async { self.upstream.requests().len() >= from + n },
        )
        .await;
        self.upstream.requests().split_off(from)
    }
}

/// `switchyard_upstream_errors_total` of pool blue, all kinds summed.
pub fn upstream_errors(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_upstream_errors_total{") && l.contains("pool=\"blue\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
