//! Error types, and the one mapping from a forwarding error to an HTTP answer.

use std::path::PathBuf;

use bytes::Bytes;
use http::StatusCode;

/// Something wrong with a configuration file. Its `Display` names the file,
/// the line when known, and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not valid.
    #[error("{}{}: {reason}", file.display(), line.map(|l| format!(": line {l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line, when the error points at one.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// Wraps a TOML syntax or shape error, keeping its line.
    pub fn toml(file: &std::path::Path, text: &str, err: &toml::de::Error) -> ConfigError {
        let line = err.span().map(|s| crate::config::line_of(text, s.start));
        // The first line of toml's message repeats the position; keep the reason.
        let message = err.message().trim().to_string();
        ConfigError::Invalid {
            file: file.to_path_buf(),
            line,
            reason: message,
        }
    }
}

/// Several configuration errors, listed one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file is invalid.
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A thread or runtime could not be started.
    #[error("cannot start {what}: {source}")]
    Runtime {
        /// Which part.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A setting is refused at start.
    #[error("{0}")]
    Refused(String),
}

/// What went wrong forwarding one request; mapped to 502/503/504.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No endpoint could be tried.
    #[error("no endpoint available in pool {pool}")]
    NoEndpoint {
        /// The pool.
        pool: String,
    },
    /// Connecting to the endpoint failed (nothing was sent).
    #[error("cannot connect to upstream {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// No upstream of the pool answered within `timeouts.request`.
    #[error("no answer from pool {pool} within {}", humantime::format_duration(*after))]
    Timeout {
        /// The pool.
        pool: String,
        /// The request timeout.
        after: std::time::Duration,
    },
    /// The upstream connection failed after the request was sent.
    #[error("upstream {endpoint} failed: {reason}")]
    Upstream {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

impl ForwardError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::NoEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::Connect { .. } | ForwardError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `switchyard_upstream_errors_total` kind, if the upstream failed.
    pub fn kind(&self) -> Option<crate::metrics::ErrorKind> {
        use crate::metrics::ErrorKind;
        match self {
            ForwardError::NoEndpoint { .. } => None,
            ForwardError::Connect { .. } => Some(ErrorKind::Connect),
            ForwardError::Timeout { .. } => Some(ErrorKind::Timeout),
            ForwardError::Upstream { .. } => Some(ErrorKind::Reset),
        }
    }

    /// The JSON body: `{"error":"...","errors":["..."]}`.
    pub fn body(&self) -> Bytes {
        json_error(self.status(), &self.to_string())
    }
}

/// The proxy's own JSON error shape, for the data plane and the admin API:
/// `{"error":"<status reason>","errors":["<detail>"]}`.
pub fn json_error(status: StatusCode, detail: &str) -> Bytes {
    let error = status.canonical_reason().unwrap_or("error");
    let v = serde_json::json!({ "error": error, "errors": [detail] });
    Bytes::from(v.to_string())
}
