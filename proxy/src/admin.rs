//! The admin listener: `/switch`, `/rollback`, `/status`, `/metrics`,
//! `/healthz`, `/readyz` (see docs/configuration.md). It runs on the control
//! runtime, never on a data-plane core.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How often a `"wait":"drained"` switch looks at the pools' in-flight counts.
pub const DRAIN_POLL: Duration = Duration::from_millis(2);

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
                let (parts, body) = req.into_parts();
                let body = match read_body(body, self.body_timeout).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                let asked = match parse_switch(rollback, parts.uri.query(), &body) {
                    Ok(asked) => asked,
                    Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
                };
                let (reply, rx) = oneshot::channel();
                let who = peer.to_string();
                let wait = match &asked {
                    SwitchRequest::Rollback { wait_drained, .. }
                    | SwitchRequest::Switch { wait_drained, .. } => *wait_drained,
                };
                let cmd = match asked {
                    SwitchRequest::Rollback {
                        if_generation, force, ..
                    } => Command::Rollback {
                        if_generation,
                        force,
                        who,
                        reply,
                    },
                    SwitchRequest::Switch {
                        to,
                        if_generation,
                        force,
                        weight,
                        ..
                    } => Command::Switch {
                        to,
                        if_generation,
                        force,
                        weight,
                        who,
                        reply,
                    },
                };
                if self.writer.send(cmd).await.is_err() {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &SwitchError::Unavailable.to_string(),
                    );
                }
                match rx.await {
                    Ok(Ok(outcome)) => match wait {
                        None => switch_response(&outcome),
                        Some(within) => self.wait_drained(&outcome, within).await,
                    },
                    Ok(Err(e)) => {
                        let status = match e {
                            SwitchError::UnknownPool { .. } | SwitchError::BadWeight(_) => {
                                StatusCode::BAD_REQUEST
                            }
                            SwitchError::Conflict { .. }
                            | SwitchError::NothingToRollBack
                            | SwitchError::NotReady(_) => StatusCode::CONFLICT,
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

    /// Answers a switch that asked `"wait":"drained"`: once every pool other
    /// than the one now active has nothing in flight (tunnels included),
    /// 200 with the outcome and `drain_ms` (from the switch's answer to the
    /// drain); past `within`, 504 with the outcome, the pools still in
    /// flight, and the error (the switch itself stays). Runs on the admin
    /// connection's task: it polls the pools' counts every
    /// [`DRAIN_POLL`] from the table, never asking the writer.
    async fn wait_drained(&self, outcome: &SwitchOutcome, within: Duration) -> Resp {
        let started = Instant::now();
        loop {
            let busy: Vec<(String, i64)> = {
                let table = self.shared.table.load();
                table
                    .pools
                    .iter()
                    .filter(|p| p.name != outcome.active)
                    .map(|p| (p.name.clone(), p.inflight()))
                    .filter(|(_, n)| *n > 0)
                    .collect()
            };
            let elapsed = started.elapsed();
            let mut body = serde_json::to_value(outcome).unwrap_or_default();
            if busy.is_empty() {
                body["drain_ms"] = json!(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
                return json_response(StatusCode::OK, &body);
            }
            if elapsed >= within {
                let list: Vec<String> = busy.iter().map(|(p, n)| format!("{p}: {n}")).collect();
                let detail = format!(
                    "not drained within {}: still in flight {}; the switch to {} stays",
                    humantime::format_duration(within),
                    list.join(", "),
                    outcome.active
                );
                body["error"] = json!(StatusCode::GATEWAY_TIMEOUT.canonical_reason());
                body["errors"] = json!([detail]);
                body["inflight"] = busy
                    .into_iter()
                    .map(|(p, n)| (p, json!(n)))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                return json_response(StatusCode::GATEWAY_TIMEOUT, &body);
            }
            tokio::time::sleep(DRAIN_POLL.min(within - elapsed)).await;
        }
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

async fn read_body(body: Incoming, within: Duration) -> Result<Bytes, Resp> {
    match tokio::time::timeout(within, Limited::new(body, MAX_BODY).collect()).await {
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

/// What a `POST /switch` or `POST /rollback` asks, read from its query and
/// body by [`parse_switch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchRequest {
    /// `POST /switch`: to pool `to`.
    Switch {
        /// The target pool (not checked here: the writer knows the pools).
        to: String,
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
        /// Switch even if the pool is not ready (the gate).
        force: bool,
        /// `"weight":N` (0-100): a split, `to` gets N % of the requests.
        weight: Option<u8>,
        /// `"wait":"drained"`: answer once every other pool has nothing in
        /// flight, waiting at most this long (`timeout`, default
        /// [`DEFAULT_DRAIN_WAIT`]).
        wait_drained: Option<Duration>,
    },
    /// `POST /rollback`: back to the previous pool.
    Rollback {
        /// Compare-and-swap on the generation.
        if_generation: Option<u64>,
        /// Roll back even if the previous pool is not ready (the gate).
        force: bool,
        /// As for a switch.
        wait_drained: Option<Duration>,
    },
}

/// `timeout` of a `"wait":"drained"` switch when none is given.
pub const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(30);
/// The longest `timeout` a `"wait":"drained"` switch may ask for.
pub const MAX_DRAIN_WAIT: Duration = Duration::from_secs(300);

/// Why a `/switch` or `/rollback` request was refused before it reached the
/// writer (each is answered 400 with this text).
#[derive(Debug, thiserror::Error)]
pub enum BadSwitchRequest {
    /// The body is neither empty (whitespace only) nor the JSON object.
    #[error("invalid JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// `force` in the query is neither `true` nor `false`.
    #[error("`force` in the query must be true or false, not `{0}`")]
    ForceValue(String),
    /// `force` in the query and in the body differ.
    #[error("`force` in the query and the body differ")]
    ForceDiffers,
    /// `/rollback` with a `to`.
    #[error("/rollback takes no `to`: it returns to the previous pool")]
    RollbackTo,
    /// `to` in the query and in the body name different pools.
    #[error("`to` in the query and the body differ")]
    ToDiffers,
    /// `/switch` without a `to`.
    #[error("missing `to`: send {{\"to\":\"<pool>\"}} or ?to=<pool>")]
    MissingTo,
    /// `wait` is not `"drained"`.
    #[error("`wait` must be \"drained\", not `{0}`")]
    WaitValue(String),
    /// `weight` is not an integer 0-100, or was sent to `/rollback`.
    #[error("`weight` must be an integer from 0 to 100 (the share of `to`), not `{0}`")]
    WeightValue(String),
    /// `/rollback` with a `weight`.
    #[error("/rollback takes no `weight`: it returns to the previous route")]
    RollbackWeight,
    /// `timeout` without `"wait":"drained"`.
    #[error("`timeout` is the longest wait of `\"wait\":\"drained\"`; it needs `wait`")]
    TimeoutWithoutWait,
    /// `timeout` is not a duration, is 0, or is beyond [`MAX_DRAIN_WAIT`].
    #[error("`timeout` must be a duration from 1ms to 5m such as \"30s\", not `{0}`")]
    TimeoutValue(String),
}

/// The JSON body of `/switch` and `/rollback` (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    to: Option<String>,
    if_generation: Option<u64>,
    force: Option<bool>,
    weight: Option<serde_json::Number>,
    wait: Option<String>,
    timeout: Option<String>,
}

/// Reads what a `POST /switch` (`rollback` false) or `POST /rollback` asks
/// from the request's query (`to=<pool>`, taken as it is, never decoded;
/// `force=true|false`) and its whole body (empty or whitespace, or a JSON
/// object with `to`, `if_generation`, `force`, `weight` (0-100), `wait` (`"drained"`) and
/// `timeout` (humantime, 1ms to 5m, default 30s, only with `wait`)); pure,
/// so it is unit-tested and fuzzed on its own.
pub fn parse_switch(
    rollback: bool,
    query: Option<&str>,
    body: &[u8],
) -> Result<SwitchRequest, BadSwitchRequest> {
    let query_to = query_param(query, "to");
    let body: SwitchBody = if body.iter().all(u8::is_ascii_whitespace) {
        SwitchBody::default()
    } else {
        serde_json::from_slice(body)?
    };
    let query_force = match query_param(query, "force").as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(BadSwitchRequest::ForceValue(other.to_string())),
    };
    let force = match (body.force, query_force) {
        (Some(a), Some(b)) if a != b => return Err(BadSwitchRequest::ForceDiffers),
        (Some(f), _) | (None, Some(f)) => f,
        (None, None) => false,
    };
    let wait_drained = match (body.wait.as_deref(), body.timeout.as_deref()) {
        (None, None) => None,
        (None, Some(_)) => return Err(BadSwitchRequest::TimeoutWithoutWait),
        (Some("drained"), None) => Some(DEFAULT_DRAIN_WAIT),
        (Some("drained"), Some(t)) => match humantime::parse_duration(t) {
            Ok(d) if !d.is_zero() && d <= MAX_DRAIN_WAIT => Some(d),
            _ => return Err(BadSwitchRequest::TimeoutValue(t.to_string())),
        },
        (Some(other), _) => return Err(BadSwitchRequest::WaitValue(other.to_string())),
    };
    let weight = match &body.weight {
        None => None,
        Some(n) => match n.as_u64().filter(|w| *w <= 100) {
            Some(w) => u8::try_from(w).ok(),
            None => return Err(BadSwitchRequest::WeightValue(n.to_string())),
        },
    };
    if rollback {
        if body.to.is_some() || query_to.is_some() {
            return Err(BadSwitchRequest::RollbackTo);
        }
        if weight.is_some() {
            return Err(BadSwitchRequest::RollbackWeight);
        }
        return Ok(SwitchRequest::Rollback {
            if_generation: body.if_generation,
            force,
            wait_drained,
        });
    }
    let to = match (body.to, query_to) {
        (Some(a), Some(b)) if a != b => return Err(BadSwitchRequest::ToDiffers),
        (Some(to), _) | (None, Some(to)) => to,
        (None, None) => return Err(BadSwitchRequest::MissingTo),
    };
    Ok(SwitchRequest::Switch {
        to,
        if_generation: body.if_generation,
        force,
        weight,
        wait_drained,
    })
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch(to: &str, if_generation: Option<u64>) -> SwitchRequest {
        SwitchRequest::Switch {
            to: to.into(),
            if_generation,
            force: false,
            weight: None,
            wait_drained: None,
        }
    }

    #[test]
    fn switch_takes_to_from_the_query_or_the_body() {
        let ok = |rollback, query, body: &str| parse_switch(rollback, query, body.as_bytes()).unwrap();
        assert_eq!(ok(false, Some("to=green"), ""), switch("green", None));
        assert_eq!(ok(false, None, " {\"to\":\"green\"}\n"), switch("green", None));
        assert_eq!(
            ok(
                false,
                Some("a=1&to=green"),
                "{\"to\":\"green\",\"if_generation\":7}"
            ),
            switch("green", Some(7))
        );
        // The query is taken as it is: the first `to` wins, nothing is decoded.
        assert_eq!(ok(false, Some("to=a%20b&to=c"), ""), switch("a%20b", None));
        assert_eq!(ok(false, Some("to"), ""), switch("", None));
        assert_eq!(
            ok(true, None, " \t\r\n"),
            SwitchRequest::Rollback {
                if_generation: None,
                force: false,
                wait_drained: None
            }
        );
        assert_eq!(
            ok(true, Some("x=1"), "{\"if_generation\":3}"),
            SwitchRequest::Rollback {
                if_generation: Some(3),
                force: false,
                wait_drained: None
            }
        );
        assert_eq!(
            ok(false, Some("to=green&force=true"), ""),
            SwitchRequest::Switch {
                to: "green".into(),
                if_generation: None,
                force: true,
                weight: None,
                wait_drained: None
            }
        );
        assert_eq!(
            ok(true, None, "{\"force\":true}"),
            SwitchRequest::Rollback {
                if_generation: None,
                force: true,
                wait_drained: None
            }
        );
        let waits = |body: &str| match parse_switch(false, Some("to=green"), body.as_bytes()).unwrap() {
            SwitchRequest::Switch { wait_drained, .. } => wait_drained,
            other => panic!("{other:?}"),
        };
        assert_eq!(waits("{\"wait\":\"drained\"}"), Some(DEFAULT_DRAIN_WAIT));
        assert_eq!(
            waits("{\"wait\":\"drained\",\"timeout\":\"1m 30s\"}"),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            waits("{\"wait\":\"drained\",\"timeout\":\"5m\"}"),
            Some(MAX_DRAIN_WAIT)
        );
        assert_eq!(
            ok(true, None, "{\"wait\":\"drained\",\"timeout\":\"250ms\"}"),
            SwitchRequest::Rollback {
                if_generation: None,
                force: false,
                wait_drained: Some(Duration::from_millis(250))
            }
        );
    }

    #[test]
    fn each_bad_request_says_what_is_wrong() {
        let err = |rollback, query, body: &str| {
            parse_switch(rollback, query, body.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(err(false, None, "{to:1}").starts_with("invalid JSON body: "));
        assert!(err(false, None, "{\"to\":\"a\",\"extra\":1}").contains("unknown field `extra`"));
        assert!(err(false, None, "{\"if_generation\":-1}").starts_with("invalid JSON body: "));
        assert_eq!(
            err(false, Some("to=a&force=yes"), ""),
            "`force` in the query must be true or false, not `yes`"
        );
        assert_eq!(
            err(false, Some("to=a&force=false"), "{\"force\":true}"),
            "`force` in the query and the body differ"
        );
        assert_eq!(
            err(true, Some("to=a"), ""),
            "/rollback takes no `to`: it returns to the previous pool"
        );
        assert_eq!(
            err(true, None, "{\"to\":\"a\"}"),
            "/rollback takes no `to`: it returns to the previous pool"
        );
        assert_eq!(
            err(false, Some("to=a"), "{\"to\":\"b\"}"),
            "`to` in the query and the body differ"
        );
        assert_eq!(
            err(false, Some("too=a"), "{}"),
            "missing `to`: send {\"to\":\"<pool>\"} or ?to=<pool>"
        );
        assert_eq!(
            err(false, Some("to=a"), "{\"wait\":\"done\"}"),
            "`wait` must be \"drained\", not `done`"
        );
        assert_eq!(
            err(false, Some("to=a"), "{\"timeout\":\"3s\"}"),
            "`timeout` is the longest wait of `\"wait\":\"drained\"`; it needs `wait`"
        );
        for bad in ["soon", "0s", "5m 1s", "1h"] {
            assert_eq!(
                err(
                    false,
                    Some("to=a"),
                    &format!("{{\"wait\":\"drained\",\"timeout\":\"{bad}\"}}")
                ),
                format!("`timeout` must be a duration from 1ms to 5m such as \"30s\", not `{bad}`")
            );
        }
    }
}
