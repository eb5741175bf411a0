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

/// What went wrong forwarding one request; mapped to 400/408/502/503/504. Its
/// `Display` has the details (endpoint addresses, OS errors) and goes to the
/// log only; the client gets [`ForwardError::public_message`].
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
    /// The client's request body could not be read while it was being sent
    /// upstream: its chunked framing is malformed (a chunk size that is no
    /// number, or overflows), or the client closed the connection before
    /// its end (`gone`). The client's fault, not the upstream's: 400, no
    /// `upstream_errors_total`, never retried; the upstream's copy of the
    /// request is cut (its connection closed), never complete.
    #[error("the client's request body failed: {reason}")]
    ClientBody {
        /// Why (hyper's text).
        reason: String,
        /// The client closed its connection before the body's end.
        gone: bool,
    },
    /// `timeouts.request` passed while the upstream connection waited for
    /// the client's next request body bytes: the client's fault, not the
    /// upstream's. 408 with `Connection: close` (the rest of the body is
    /// never read), `rejected_total{reason="body_timeout"}`, no
    /// `upstream_errors_total`, never an ejection input; the upstream's
    /// copy of the request is cut.
    #[error("the client's request body did not arrive within {}", humantime::format_duration(*after))]
    ClientBodyTimeout {
        /// The request timeout.
        after: std::time::Duration,
    },
    /// The endpoint had `limits.upstream_max_connections` connections open
    /// and none came free within `timeouts.connect`: the proxy's own limit,
    /// not a failure of the upstream.
    #[error("upstream {endpoint}: {max} connections open (limits.upstream_max_connections), none came free within timeouts.connect")]
    UpstreamConnectionLimit {
        /// The endpoint.
        endpoint: String,
        /// The limit.
        max: usize,
    },
}

impl ForwardError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ForwardError::NoEndpoint { .. } | ForwardError::UpstreamConnectionLimit { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ForwardError::Connect { .. } | ForwardError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ForwardError::ClientBody { .. } => StatusCode::BAD_REQUEST,
            ForwardError::ClientBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `switchyard_upstream_errors_total` kind, if the upstream failed.
    pub fn kind(&self) -> Option<crate::metrics::ErrorKind> {
        use crate::metrics::ErrorKind;
        match self {
            ForwardError::NoEndpoint { .. }
            | ForwardError::ClientBody { .. }
            | ForwardError::ClientBodyTimeout { .. }
            | ForwardError::UpstreamConnectionLimit { .. } => None,
            ForwardError::Connect { .. } => Some(ErrorKind::Connect),
            ForwardError::Timeout { .. } => Some(ErrorKind::Timeout),
            ForwardError::Upstream { .. } => Some(ErrorKind::Reset),
        }
    }

    /// What the client is told: a fixed, generic sentence per kind, never
    /// an address, a pool name or an OS error's text (those are in the
    /// log line of the request, under its id).
    pub fn public_message(&self) -> &'static str {
        match self {
            ForwardError::NoEndpoint { .. } => "no upstream endpoint is available",
            ForwardError::Connect { .. } => "cannot connect to the upstream",
            ForwardError::Timeout { .. } => "the upstream did not answer in time",
            ForwardError::Upstream { .. } => "the upstream failed",
            ForwardError::ClientBody { .. } => "the request body is malformed",
            ForwardError::ClientBodyTimeout { .. } => "the request body did not arrive in time",
            ForwardError::UpstreamConnectionLimit { .. } => "no upstream connection came free in time",
        }
    }

    /// The `switchyard_rejected_total` reason, when the proxy refused the
    /// request itself (one of its limits) rather than the upstream failing.
    pub fn rejected(&self) -> Option<crate::metrics::Reject> {
        match self {
            ForwardError::UpstreamConnectionLimit { .. } => {
                Some(crate::metrics::Reject::UpstreamConnectionLimit)
            }
            ForwardError::ClientBody { gone: false, .. } => Some(crate::metrics::Reject::BadRequest),
            ForwardError::ClientBodyTimeout { .. } => Some(crate::metrics::Reject::BodyTimeout),
            _ => None,
        }
    }

    /// Whether the client's connection is closed after the answer: the
    /// rest of the request's body is never read.
    pub fn closes(&self) -> bool {
        matches!(self, ForwardError::ClientBodyTimeout { .. })
    }

    /// A failed send whose cause is the client's request body (see
    /// [`ForwardError::ClientBody`]), from the error hyper's upstream
    /// connection returned; `None` when the upstream side failed. The only
    /// body the proxy sends is the client's, so a body error that hyper
    /// reports as the user's (`is_user`) with a cause of hyper's own (the
    /// client connection's read) is that body's.
    pub fn from_client_body(e: &hyper::Error) -> Option<ForwardError> {
        use std::error::Error as _;
        if !e.is_user() {
            return None;
        }
        let read = e.source()?.downcast_ref::<hyper::Error>()?;
        let io = read.source().and_then(|c| c.downcast_ref::<std::io::Error>());
        let gone = read.is_incomplete_message()
            || io.is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
        let reason = match io {
            Some(io) => format!("{read}: {io}"),
            None => read.to_string(),
        };
        Some(ForwardError::ClientBody { reason, gone })
    }

    /// The answer the client gets: [`respond_to`] with this error's status,
    /// its public message and the request's id.
    pub fn response<B: From<Bytes>>(&self, request_id: &HeaderValue) -> Response<B> {
        respond_to(self.status(), self.public_message(), request_id)
    }
}

/// Why hyper's HTTP/1 parser ended a client connection, as a
/// `switchyard_rejected_total` reason, or `None` when something else ended
/// it (the client went away, an I/O error). hyper has then answered by
/// itself, without calling the proxy: 414 for a request target over its
/// limit (64 KiB), 431 for a head over `limits.max_header_bytes` or with
/// more header lines than `limits.max_headers` (one error for both), 400
/// for any other malformed head.
///
/// hyper tells 414 from 431 only by the error's text (`is_parse_too_large`
/// covers both); that text is hyper's own, of the minor version pinned in
/// the workspace's `Cargo.toml`, and a test sends both.
pub fn parse_rejection(e: &hyper::Error) -> Option<crate::metrics::Reject> {
    use crate::metrics::Reject;
    if !e.is_parse() {
        return None;
    }
    if !e.is_parse_too_large() {
        return Some(Reject::BadRequest);
    }
    if e.to_string().starts_with("URI too long") {
        Some(Reject::UriTooLong)
    } else {
        Some(Reject::HeadTooLarge)
    }
}

/// The proxy's own answer to a request it could not serve, for the data
/// plane and the admin API alike: `status`, `Content-Type:
/// application/json` and the body [`json_error`] makes. With the one below,
/// the one place an error becomes an HTTP response.
pub fn respond<B: From<Bytes>>(status: StatusCode, detail: &str) -> Response<B> {
    json_response(status, json_error(status, detail))
}

/// [`respond`] for a request of the data plane: the body also carries the
/// request's id (`"request_id"`), the key to the log line with the details.
pub fn respond_to<B: From<Bytes>>(status: StatusCode, detail: &str, request_id: &HeaderValue) -> Response<B> {
    let id = request_id.to_str().unwrap_or("-");
    json_response(status, error_body(status, detail, Some(id)))
}

fn json_response<B: From<Bytes>>(status: StatusCode, body: Bytes) -> Response<B> {
    let mut r = Response::new(B::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The proxy's own JSON error shape:
/// `{"error":"<status reason>","errors":["<detail>"]}`.
pub fn json_error(status: StatusCode, detail: &str) -> Bytes {
    error_body(status, detail, None)
}

/// The JSON error shape, with `"request_id"` when there is one.
fn error_body(status: StatusCode, detail: &str, request_id: Option<&str>) -> Bytes {
    let error = status.canonical_reason().unwrap_or("error");
    let v = match request_id {
        Some(id) => serde_json::json!({ "error": error, "errors": [detail], "request_id": id }),
        None => serde_json::json!({ "error": error, "errors": [detail] }),
    };
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
    fn forward_errors_map_to_400_408_502_503_504() {
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
            (
                ForwardError::ClientBody {
                    reason: "invalid chunk size".into(),
                    gone: false,
                },
                StatusCode::BAD_REQUEST,
            ),
            (
                ForwardError::ClientBodyTimeout {
                    after: std::time::Duration::from_secs(30),
                },
                StatusCode::REQUEST_TIMEOUT,
            ),
        ];
        let id = HeaderValue::from_static("rid-1");
        for (e, status) in cases {
            let r: Response<Bytes> = e.response(&id);
            assert_eq!(r.status(), status, "{e}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
            let v: serde_json::Value = serde_json::from_slice(r.body()).expect("JSON body");
            assert_eq!(v["error"], status.canonical_reason().unwrap_or_default(), "{v}");
            assert_eq!(v["errors"][0], e.public_message(), "{v}");
            assert_eq!(v["request_id"], "rid-1", "{v}");
            // The details stay out of the answer (they are in the log).
            let body = std::str::from_utf8(r.body()).expect("UTF-8 body");
            for secret in ["e:1", "refused", "reset", "blue", "30s"] {
                assert!(!body.contains(secret), "{secret} in {body}");
            }
        }
    }
}
