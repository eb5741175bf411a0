//! The HTTP interface: routes, handlers and their exact bodies.
//!
//! | method, path | answer |
//! | --- | --- |
//! | `GET /version` | 200 `{"version":"0.0.1","errors":[]}` |
//! | `GET /api/v1/translate?phrase=Lol` | 200 `{"phrase":"Lol","translation":"Kek","errors":[]}`; 400 no or empty phrase; 404 unknown phrase |
//! | `GET /healthz` | 200 `{"status":"ok"}` while the process runs |
//! | `GET /readyz` | 200 `{"status":"ready"}`; 503 `{"status":"shutting down"}` once shutdown began |
//! | other method on these paths | 405 `{"errors":["Method not allowed"]}` with `Allow: GET, HEAD` |
//! | any other path | 404 `{"errors":["Not found"]}` |
//!
//! Every answer is `application/json` and comes from one synchronous
//! function, [`respond`]: the fixed bodies are `static` or pre-built once per
//! worker, the 404 of an unknown phrase is the only body assembled per
//! request. The server calls it straight from its hyper service (no routing
//! framework, no boxed future, no allocation for a known phrase: cheaper
//! than an axum `Router` on the hot path); [`app`] wraps the same
//! function in an axum `Router` for socket-free tests and embedding.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::Router;
use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use http_body_util::Full;
use ipnet::IpNet;

use crate::client_ip::client_ip;
use crate::stats::Recorder;

/// The translation of `phrase`, if the table has one.
pub fn translate(phrase: &str) -> Option<&'static str> {
    PHRASES.iter().find(|(p, _)| *p == phrase).map(|(_, t)| *t)
}

/// Defines the phrase table once: [`PHRASES`] and each phrase's 200 body,
/// serialised at compile time.
macro_rules! phrase_table {
    ($(($p:literal, $t:literal)),* $(,)?) => {
        /// The phrase table of the original service: exact, case-sensitive keys.
        pub const PHRASES: [(&str, &str); [$($p),*].len()] = [$(($p, $t)),*];

        /// The 200 body of each known phrase.
        fn ok_body(phrase: &str) -> Option<&'static [u8]> {
            match phrase {
                $($p => Some(concat!(r#"{"phrase":""#, $p, r#"","translation":""#, $t, r#"","errors":[]}"#).as_bytes()),)*
                _ => None,
            }
        }
    };
}

phrase_table!(
    ("Victory or Death", "Lok'Tar Ogar"),
    ("Lol", "Kek"),
    ("Okay", "Zug Zug"),
    ("Hey", "Es"),
    ("I obey", "Dabu"),
    ("By my Axe", "Gol'Kosh"),
    ("Well Met", "Throm-Ka"),
);

const MISSING_PHRASE: &[u8] = br#"{"phrase":null,"translation":null,"errors":["Missing phrase parameter"]}"#;
const NOT_FOUND: &[u8] = br#"{"errors":["Not found"]}"#;
const METHOD_NOT_ALLOWED: &[u8] = br#"{"errors":["Method not allowed"]}"#;
const HEALTHY: &[u8] = br#"{"status":"ok"}"#;
const READY: &[u8] = br#"{"status":"ready"}"#;
const NOT_READY: &[u8] = br#"{"status":"shutting down"}"#;

/// What the handlers share: the version body, readiness, the trusted
/// proxies and the Redis recorder.
///
/// Cheap to clone (one `Arc`). The server gives each worker runtime its own
/// copy (`AppState::for_worker`) so that the reference counts touched per
/// request stay on one core.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    /// `{"version":"...","errors":[]}`, serialised once.
    version_body: Bytes,
    /// `false` once shutdown has begun: `/readyz` answers 503. Shared by all
    /// workers and the [`Running`](crate::Running) handle.
    ready: Arc<AtomicBool>,
    /// Peers whose `X-Forwarded-For` is believed.
    trusted: Arc<[IpNet]>,
    /// Queue to the Redis task; `None` without Redis.
    stats: Option<Recorder>,
    /// `--fail-ratio`: shared by every worker, so the spacing is exact
    /// over the whole service. `None` (the default) touches nothing.
    fail: Option<Arc<FailRatio>>,
}

/// `--fail-ratio r` (a testing aid): of the translate requests, numbered
/// 1, 2, 3… over the whole service, request n fails when
/// `floor(n·r) > floor((n−1)·r)`, so failures are spread evenly and exactly
/// `floor(N·r)` of the first N fail (0.2: requests 5, 10, 15…; 0.25: every 4th).
#[derive(Debug)]
pub struct FailRatio {
    /// The ratio in millionths.
    per_million: u64,
    /// Translate requests seen.
    seen: AtomicU64,
}

impl FailRatio {
    /// For a ratio 0.0-1.0 (clamped).
    pub fn new(ratio: f64) -> FailRatio {
        FailRatio {
            per_million: (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u64,
            seen: AtomicU64::new(0),
        }
    }

    /// Whether the next translate request fails.
    pub fn next_fails(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        n * self.per_million / 1_000_000 > (n - 1) * self.per_million / 1_000_000
    }
}

impl AppState {
    /// State for a service reporting `version`, believing `X-Forwarded-For`
    /// from `trusted_proxies`, ready, without Redis.
    pub fn new(version: &str, trusted_proxies: Vec<IpNet>) -> Self {
        Self::with_parts(
            version,
            Arc::new(AtomicBool::new(true)),
            trusted_proxies.into(),
            None,
        )
    }

    pub(crate) fn with_parts(
        version: &str,
        ready: Arc<AtomicBool>,
        trusted: Arc<[IpNet]>,
        stats: Option<Recorder>,
    ) -> Self {
        let mut body = Vec::with_capacity(version.len() + 32);
        body.extend_from_slice(br#"{"version":"#);
        push_json_string(&mut body, version);
        body.extend_from_slice(br#","errors":[]}"#);
        AppState {
            inner: Arc::new(Inner {
                version_body: Bytes::from(body),
                ready,
                trusted,
                stats,
                fail: None,
            }),
        }
    }

    /// The same state with `--fail-ratio ratio` (0 turns it off).
    pub fn with_fail_ratio(self, ratio: f64) -> Self {
        let fail = (ratio > 0.0).then(|| Arc::new(FailRatio::new(ratio)));
        AppState {
            inner: Arc::new(Inner {
                version_body: self.inner.version_body.clone(),
                ready: self.inner.ready.clone(),
                trusted: self.inner.trusted.clone(),
                stats: self.inner.stats.clone(),
                fail,
            }),
        }
    }

    /// A copy for one worker runtime: same readiness flag, trusted list and
    /// Redis queue, but its own `Arc` and its own copy of the version body.
    pub(crate) fn for_worker(&self) -> Self {
        AppState {
            inner: Arc::new(Inner {
                version_body: Bytes::copy_from_slice(&self.inner.version_body),
                ready: self.inner.ready.clone(),
                trusted: self.inner.trusted.clone(),
                stats: self.inner.stats.clone(),
                fail: self.inner.fail.clone(),
            }),
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Sets what `/readyz` answers (the server clears it when shutdown begins).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// The proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.inner.trusted
    }
}

/// The service's axum router: every path and method go to [`respond`]. It
/// needs no socket: tests can call it with `tower::ServiceExt::oneshot` or
/// hyper-util's `TowerToHyperService`. The client address comes from the
/// request's [`ConnectInfo<SocketAddr>`] extension when there is one;
/// without one nothing is counted in Redis.
pub fn app(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

async fn handle(State(state): State<AppState>, req: Request) -> axum::response::Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    respond(&state, req.method(), req.uri(), req.headers(), peer).map(Body::new)
}

/// The answer to one request: route on the path, then the method.
///
/// `peer` is the connection's remote address; with it (and Redis
/// configured) a translate request counts one for its client address.
/// A HEAD request gets the GET answer; hyper leaves the body out.
pub fn respond(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Response<Full<Bytes>> {
    let path = uri.path();
    let known = matches!(path, "/version" | "/api/v1/translate" | "/healthz" | "/readyz");
    if !known {
        return json(StatusCode::NOT_FOUND, Bytes::from_static(NOT_FOUND));
    }
    if method != Method::GET && method != Method::HEAD {
        let mut res = json(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(METHOD_NOT_ALLOWED),
        );
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    match path {
        "/version" => json(StatusCode::OK, state.inner.version_body.clone()),
        "/api/v1/translate" => {
            if let (Some(stats), Some(peer)) = (&state.inner.stats, peer) {
                stats.record(client_ip(peer.ip(), headers, &state.inner.trusted));
            }
            if state.inner.fail.as_ref().is_some_and(|f| f.next_fails()) {
                return json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Bytes::from_static(INJECTED_FAILURE),
                );
            }
            translate_response(uri.query())
        }
        "/healthz" => json(StatusCode::OK, Bytes::from_static(HEALTHY)),
        _ if state.is_ready() => json(StatusCode::OK, Bytes::from_static(READY)),
        _ => json(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(NOT_READY)),
    }
}

/// The answer of a translate request that `--fail-ratio` fails.
const INJECTED_FAILURE: &[u8] =
    br#"{"phrase":null,"translation":null,"errors":["Injected failure (--fail-ratio)"]}"#;

#[cfg(test)]
mod fail_ratio_tests {
    use super::*;

    #[test]
    fn failures_are_evenly_spaced_and_exact() {
        let f = FailRatio::new(0.2);
        let fails: Vec<usize> = (1..=20).filter(|_| f.next_fails()).collect();
        assert_eq!(fails, [5, 10, 15, 20]);
        let f = FailRatio::new(0.25);
        assert_eq!((0..1000).filter(|_| f.next_fails()).count(), 250);
        let none = FailRatio::new(0.0);
        assert!((0..1000).all(|_| !none.next_fails()));
    }

    #[test]
    fn only_translate_requests_fail() {
        let state = AppState::new("1", Vec::new()).with_fail_ratio(1.0);
        let get = |uri: &str| {
            respond(
                &state,
                &Method::GET,
                &uri.parse().unwrap(),
                &HeaderMap::new(),
                None,
            )
            .status()
        };
        assert_eq!(
            get("/api/v1/translate?phrase=Lol"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(get("/version"), StatusCode::OK);
        assert_eq!(get("/readyz"), StatusCode::OK);
    }
}

fn translate_response(query: Option<&str>) -> Response<Full<Bytes>> {
    match query_param(query, "phrase") {
        Some(phrase) if !phrase.is_empty() => match ok_body(&phrase) {
            Some(body) => json(StatusCode::OK, Bytes::from_static(body)),
            None => json(StatusCode::NOT_FOUND, Bytes::from(unknown_phrase_body(&phrase))),
        },
        _ => json(StatusCode::BAD_REQUEST, Bytes::from_static(MISSING_PHRASE)),
    }
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn unknown_phrase_body(phrase: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(phrase.len() + 72);
    body.extend_from_slice(br#"{"phrase":"#);
    push_json_string(&mut body, phrase);
    body.extend_from_slice(br#","translation":null,"errors":["Translation not available"]}"#);
    body
}

/// The first value of `name` in a query string, form-decoded (`+` is a
/// space, then percent-decoding; invalid UTF-8 becomes U+FFFD). `None` when
/// the parameter is absent; `?phrase` and `?phrase=` give `Some("")`.
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(key) == name).then(|| form_decode(value))
    })
}

fn form_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'+' || b == b'%') {
        return Cow::Borrowed(s);
    }
    let spaced: Vec<u8> = s.bytes().map(|b| if b == b'+' { b' ' } else { b }).collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
    match String::from_utf8(decoded) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Appends `s` as a JSON string literal (quotes, escapes) to `out`, with
/// serde_json writing straight into the buffer.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing into a `Vec` cannot fail, nor can serialising a `str`.
    serde_json::to_writer(out, s).expect("a string serialises into a Vec");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn compiled_bodies_are_the_contract_json() {
        for (p, t) in PHRASES {
            let expected = format!(r#"{{"phrase":"{p}","translation":"{t}","errors":[]}}"#);
            assert_eq!(ok_body(p), Some(expected.as_bytes()), "{p}");
            assert_eq!(translate(p), Some(t));
        }
        assert_eq!(ok_body("lol"), None);
    }

    #[test]
    fn query_decoding() {
        assert_eq!(query_param(Some("phrase=Lol"), "phrase").as_deref(), Some("Lol"));
        assert_eq!(
            query_param(Some("phrase=By+my%20Axe"), "phrase").as_deref(),
            Some("By my Axe")
        );
        assert_eq!(
            query_param(Some("x=1&phrase=Hey&phrase=Okay"), "phrase").as_deref(),
            Some("Hey")
        );
        assert_eq!(
            query_param(Some("phr%61se=Hey"), "phrase").as_deref(),
            Some("Hey")
        );
        assert_eq!(query_param(Some("phrase"), "phrase").as_deref(), Some(""));
        assert_eq!(query_param(Some("phrases=Hey"), "phrase"), None);
        assert_eq!(query_param(None, "phrase"), None);
        assert_eq!(
            query_param(Some("phrase=%FF"), "phrase").as_deref(),
            Some("\u{fffd}")
        );
        assert_eq!(
            query_param(Some("phrase=a%2Bb"), "phrase").as_deref(),
            Some("a+b")
        );
    }

    #[test]
    fn every_ascii_character_is_escaped_as_before() {
        // The escapes of the hand-written escaper serde_json replaced.
        for b in 0u8..0x80 {
            let expected = match b {
                b'"' => "\\\"".to_string(),
                b'\\' => "\\\\".to_string(),
                b'\n' => "\\n".to_string(),
                b'\r' => "\\r".to_string(),
                b'\t' => "\\t".to_string(),
                0x08 => "\\b".to_string(),
                0x0c => "\\f".to_string(),
                0x00..=0x1f => format!("\\u{b:04x}"),
                _ => char::from(b).to_string(),
            };
            let mut out = Vec::new();
            push_json_string(&mut out, &char::from(b).to_string());
            assert_eq!(out, format!("\"{expected}\"").into_bytes(), "byte {b:#04x}");
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let body = unknown_phrase_body("a\"b\\c\n\u{1}é");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["phrase"], "a\"b\\c\n\u{1}é");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"phrase":"a\"b\\c\n\u0001é","translation":null,"errors":["Translation not available"]}"#
        );
    }
}
