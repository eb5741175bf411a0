//! A small client for switchyard's admin API, timing what `cutover` needs:
//! the *issued* time (just before the request is written) and the *ack*
//! time (when the response has been fully received).

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use loadgen::clock::Clock;
use loadgen::target::Target;

/// An admin API answer with its timing.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Just before the request was handed to the connection (already open).
    pub issued_ns: u64,
    /// When the response body was complete.
    pub ack_ns: u64,
}

/// The admin API of one proxy: `POST /switch`, `POST /rollback`, `GET /status`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: Target,
    token: Option<String>,
    clock: Clock,
    timeout: Duration,
}

impl AdminClient {
    /// A client for the admin API at `base` (e.g. `http://127.0.0.1:9901`),
    /// sending `Authorization: Bearer <token>` on POSTs when a token is given.
    pub fn new(base: &str, token: Option<String>, clock: Clock) -> anyhow::Result<Self> {
        Ok(Self {
            base: Target::parse(base)?,
            token,
            clock,
            timeout: Duration::from_secs(10),
        })
    }

    /// `POST /switch {"to": pool}`; an error unless the answer is 200.
    pub async fn switch(&self, to: &str) -> anyhow::Result<Answer> {
        let body = serde_json::json!({ "to": to });
        self.expect_ok(
            self.request(Method::POST, "/switch", Some(body)).await?,
            "POST /switch",
        )
    }

    /// `POST /rollback`; an error unless the answer is 200.
    pub async fn rollback(&self) -> anyhow::Result<Answer> {
        self.expect_ok(
            self.request(Method::POST, "/rollback", None).await?,
            "POST /rollback",
        )
    }

    /// `GET /status`.
    pub async fn status(&self) -> anyhow::Result<Value> {
        Ok(self
            .expect_ok(self.request(Method::GET, "/status", None).await?, "GET /status")?
            .body)
    }

    fn expect_ok(&self, a: Answer, what: &str) -> anyhow::Result<Answer> {
        if a.status != 200 {
            bail!(
                "{what} at {} answered {}: {}",
                self.base.authority,
                a.status,
                a.body
            );
        }
        Ok(a)
    }

    /// One request on a fresh connection. The connection is open and ready
    /// before the issued time is taken.
    pub async fn request(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
        let work = async {
            let stream = TcpStream::connect(self.base.connect.as_str())
                .await
                .with_context(|| format!("connecting to the admin API at {}", self.base.connect))?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
            let conn = tokio::spawn(conn);
            sender.ready().await?;
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, self.base.authority.as_str());
            if body.is_some() {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            if let Some(token) = &self.token {
                req = req.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
            let req = req.body(Full::new(bytes))?;
            let issued_ns = self.clock.now_ns();
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let ack_ns = self.clock.now_ns();
            drop(sender);
            conn.abort();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            };
            Ok(Answer {
                status,
                body,
                issued_ns,
                ack_ns,
            })
        };
        tokio::time::timeout(self.timeout, work).await.with_context(|| {
            format!(
                "the admin API at {} did not answer within {:?}",
                self.base.authority, self.timeout
            )
        })?
    }
}

/// The pool names in a `/status` answer (`pools` as an object keyed by
/// name, or an array of objects with a `name`), sorted.
pub fn pools_of_status(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = match status.get("pools") {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names_from_status() {
        let s = serde_json::json!({"active":"blue","pools":{"green":{},"blue":{}}});
        assert_eq!(pools_of_status(&s), ["blue", "green"]);
        let s = serde_json::json!({"pools":[{"name":"b"},{"name":"a"}]});
        assert_eq!(pools_of_status(&s), ["a", "b"]);
        assert!(pools_of_status(&serde_json::json!({})).is_empty());
    }
}
