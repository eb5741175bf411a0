//! Error types, and the one mapping from an error to an HTTP answer.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// Configuration errors live with the configuration ([`crate::config`]);
/// re-exported here, where the other error types are.
pub use crate::config::{ConfigError, ConfigErrors};

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

    /// The answer the client gets: [`respond`] with this error's status and
    /// message.
    pub fn response<B: From<Bytes>>(&self) -> Response<B> {
        respond(self.status(), &self.to_string())
    }
}

/// The proxy's own answer to a request it could not serve, for the data
/// plane and the admin API alike: `status`, `Content-Type:
/// application/json` and the body [`json_error`] makes. The one place an
/// error becomes an HTTP response.
pub fn respond<B: From<Bytes>>(status: StatusCode, detail: &str) -> Response<B> {
    let mut r = Response::new(B::from(json_error(status, detail)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The proxy's own JSON error shape:
/// `{"error":"<status reason>","errors":["<detail>"]}`.
pub fn json_error(status: StatusCode, detail: &str) -> Bytes {
    let error = status.canonical_reason().unwrap_or("error");
    let v = serde_json::json!({ "error": error, "errors": [detail] });
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respond_is_status_json_type_and_json_body() {
        let r: Response<Bytes> = respond(StatusCode::NOT_FOUND, "no such admin endpoint: /x");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(r.body()).expect("JSON body");
        assert_eq!(
            v,
            serde_json::json!({"error": "Not Found", "errors": ["no such admin endpoint: /x"]})
        );
    }

    #[test]
    fn forward_errors_map_to_502_503_504() {
        let cases = [
            (
                ForwardError::NoEndpoint { pool: "blue".into() },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                ForwardError::Connect {
                    endpoint: "e:1".into(),
                    reason: "refused".into(),
                },
                StatusCode::BAD_GATEWAY,
            ),
            (
                ForwardError::Upstream {
                    endpoint: "e:1".into(),
                    reason: "reset".into(),
                },
                StatusCode::BAD_GATEWAY,
            ),
            (
                ForwardError::Timeout {
                    pool: "blue".into(),
                    after: std::time::Duration::from_secs(30),
                },
                StatusCode::GATEWAY_TIMEOUT,
            ),
        ];
        for (e, status) in cases {
            let r: Response<Bytes> = e.response();
            assert_eq!(r.status(), status, "{e}");
            let v: serde_json::Value = serde_json::from_slice(r.body()).expect("JSON body");
            assert_eq!(v["errors"][0], e.to_string());
        }
    }
}
