//! The thin switchyard adapter: a `switchyard::Proxy` in-process, started
//! from the files `testkit::config` writes, and real translation-api
//! upstreams. Everything else the tests use comes from `testkit`.
//! (bench's tests include this file too.)
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use switchyard::config::Settings;
use switchyard::Proxy;
pub use testkit::config::{ProxyConfig, ProxyFiles, Upstreams};

#[path = "../../../translation-api/tests/support/mod.rs"]
mod translation_api_support;

/// A real translation-api (one worker) answering `/version` with `version`.
pub fn api(version: &str) -> translation_api::Running {
    translation_api_support::start(|c| c.version = version.into())
}

/// A switchyard (two cores) started from written files, which it keeps.
pub struct TestProxy {
    pub proxy: Proxy,
    pub files: ProxyFiles,
}

impl TestProxy {
    /// Writes `config` and starts a proxy from it.
    pub fn start(config: ProxyConfig) -> TestProxy {
        let files = config.write();
        let settings = Settings::load(&files.proxy_toml).unwrap();
        let proxy = Proxy::start_with(settings, 2).unwrap();
        TestProxy { proxy, files }
    }

    pub fn http(&self) -> SocketAddr {
        self.proxy.http_addr()
    }

    pub fn admin(&self) -> SocketAddr {
        self.proxy.admin_addr()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http())
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin())
    }

    pub fn generation(&self) -> u64 {
        self.proxy.shared().table.load().generation
    }

    pub fn active(&self) -> String {
        self.proxy.shared().table.load().active_pool().name.clone()
    }

    /// The metrics as rendered now, without asking the cores for what they
    /// buffer: for the control-plane series (reloads, switches), in sync code.
    pub fn control_metrics(&self) -> String {
        String::from_utf8(self.proxy.shared().metrics.render()).unwrap()
    }

    /// The metrics as a scrape of `/metrics` sees them.
    pub async fn metrics(&self) -> String {
        let (status, text) = testkit::http::get_text(self.admin(), "/metrics").await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// `/status` now (which must answer 200).
    pub async fn status(&self) -> serde_json::Value {
        let (code, st) = testkit::http::admin(self.admin(), "GET", "/status", "", None).await;
        assert_eq!(code, 200, "{st}");
        st
    }

    /// `POST /switch {"to": pool}`, which must answer 200; its answer.
    pub async fn switch(&self, pool: &str) -> serde_json::Value {
        let body = format!(r#"{{"to":"{pool}"}}"#);
        let (code, answer) = testkit::http::admin(self.admin(), "POST", "/switch", &body, None).await;
        assert_eq!(code, 200, "{answer}");
        answer
    }
}

/// Blue (`0.0.1`) and green (`0.0.2`) translation-apis and a switchyard
/// configured by `config` in front of them, blue active.
pub fn blue_green_proxy(
    config: ProxyConfig,
) -> (translation_api::Running, translation_api::Running, TestProxy) {
    let blue = api("0.0.1");
    let green = api("0.0.2");
    let tp = TestProxy::start(config.upstreams(Upstreams::blue_green("blue", blue.addr(), green.addr())));
    (blue, green, tp)
}
