//! The admin listener: `/switch`, `/rollback`, `/status`, `/metrics`,
//! `/healthz`, `/readyz` (see docs/configuration.md). It runs on the control
//! runtime, never on a data-plane core.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::control::{Command, SwitchError, SwitchOutcome};
use crate::shared::Shared;
use crate::status::Status;

/// Largest admin request body read.
const MAX_BODY: usize = 64 * 1024;

/// What the admin handlers need.
pub struct Admin {
    /// State shared with the data plane.
    pub shared: Arc<Shared>,
    /// The writer's mailbox.
    pub writer: mpsc::Sender<Command>,
    /// The bearer token POSTs need, when `token_file` is set.
    pub token: Option<String>,
    /// `timeouts.admin_body`: longest wait for a request body (408 after).
    pub body_timeout: Duration,
}

type Resp = Response<Full<Bytes>>;

fn json_bytes(status: StatusCode, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Resp {
    json_bytes(status, Bytes::from(body.to_string()))
}

fn error(status: StatusCode, detail: &str) -> Resp {
    crate::error::respond(status, detail)
}

fn method_not_allowed(allow: &'static str) -> Resp {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    to: Option<String>,
    if_generation: Option<u64>,
    force: Option<bool>,
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let path = req.uri().path();
        match (path, req.method()) {
            ("/healthz", &Method::GET | &Method::HEAD) => {
                json_response(StatusCode::OK, &json!({"status": "ok"}))
            }
            ("/healthz", _) => method_not_allowed("GET"),
            ("/readyz", &Method::GET | &Method::HEAD) => {
                if self.shared.ready.load(Ordering::Acquire) {
                    json_response(StatusCode::OK, &json!({"ready": true}))
                } else {
                    json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"ready": false}))
                }
            }
            ("/readyz", _) => method_not_allowed("GET"),
            ("/metrics", &Method::GET) => {
                let mut r = Response::new(Full::new(Bytes::from(self.shared.render_metrics().await)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            ("/metrics", _) => method_not_allowed("GET"),
            ("/status", &Method::GET) => json_response(
                StatusCode::OK,
                &serde_json::to_value(self.status()).unwrap_or_default(),
            ),
            ("/status", _) => method_not_allowed("GET"),
            ("/switch" | "/rollback", &Method::POST) => {
                if let Some(r) = self.unauthorized(&req) {
                    tracing::warn!(target: "switchyard::audit", client = %peer, path, "refused: missing or wrong bearer token");
                    return r;
                }
                let rollback = path == "/rollback";
                let query_to = query_param(req.uri().query(), "to");
                let body = match read_body(req, self.body_timeout).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let body: SwitchBody = if body.iter().all(u8::is_ascii_whitespace) {
                    SwitchBody::default()
                } else {
                    match serde_json::from_slice(&body) {
                        Ok(b) => b,
                        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")),
                    }
                };
                if body.force.is_some() {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "`force` is not supported yet (it comes with health checks)",
                    );
                }
                let (reply, rx) = oneshot::channel();
                let who = peer.to_string();
                let cmd = if rollback {
                    if body.to.is_some() || query_to.is_some() {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "/rollback takes no `to`: it returns to the previous pool",
                        );
                    }
                    Command::Rollback {
                        if_generation: body.if_generation,
                        who,
                        reply,
                    }
                } else {
                    let to = match (body.to, query_to) {
                        (Some(a), Some(b)) if a != b => {
                            return error(StatusCode::BAD_REQUEST, "`to` in the query and the body differ")
                        }
                        (Some(to), _) | (None, Some(to)) => to,
                        (None, None) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "missing `to`: send {\"to\":\"<pool>\"} or ?to=<pool>",
                            )
                        }
                    };
                    Command::Switch {
                        to,
                        if_generation: body.if_generation,
                        who,
                        reply,
                    }
                };
                if self.writer.send(cmd).await.is_err() {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &SwitchError::Unavailable.to_string(),
                    );
                }
                match rx.await {
                    Ok(Ok(outcome)) => switch_response(&outcome),
                    Ok(Err(e)) => {
                        let status = match e {
                            SwitchError::UnknownPool { .. } => StatusCode::BAD_REQUEST,
                            SwitchError::Conflict { .. } | SwitchError::NothingToRollBack => {
                                StatusCode::CONFLICT
                            }
                            SwitchError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                        };
                        error(status, &e.to_string())
                    }
                    Err(_) => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &SwitchError::Unavailable.to_string(),
                    ),
                }
            }
            ("/switch" | "/rollback", _) => method_not_allowed("POST"),
            _ => error(StatusCode::NOT_FOUND, &format!("no such admin endpoint: {path}")),
        }
    }

    fn unauthorized(&self, req: &Request<Incoming>) -> Option<Resp> {
        let token = self.token.as_ref()?;
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let ok: bool = subtle::ConstantTimeEq::ct_eq(given, token.as_bytes()).into();
        if ok {
            return None;
        }
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs Authorization: Bearer <token>",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(r)
    }

    /// The `/status` document, from one load of the table.
    pub fn status(&self) -> Status {
        let mut status = Status::of(&self.shared.table.load());
        if let Some(tls) = &self.shared.tls {
            status.tls = tls.status();
        }
        status
    }
}

fn switch_response(o: &SwitchOutcome) -> Resp {
    json_response(StatusCode::OK, &serde_json::to_value(o).unwrap_or_default())
}

async fn read_body(req: Request<Incoming>, within: Duration) -> Result<Bytes, Resp> {
    match tokio::time::timeout(within, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
        )),
        Err(_) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the body did not arrive within {within:?} (timeouts.admin_body)"),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(r)
        }
    }
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}
