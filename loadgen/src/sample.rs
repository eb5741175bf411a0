//! What is recorded for each request.

use std::sync::Arc;

/// One request as the load generator saw it. Times are nanoseconds on the
/// run's [`Clock`](crate::clock::Clock).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the request was meant to be sent: its slot in the schedule with
    /// `--rate` (open loop), else the same as `sent_ns`. Latency is measured
    /// from here, so a slow server cannot hide queueing (coordinated omission).
    pub intended_ns: u64,
    /// Taken just before the request's first byte is written.
    pub sent_ns: u64,
    /// Taken when the response is complete (body included), or when the
    /// request failed.
    pub done_ns: u64,
    /// The HTTP status; 0 when no response came (connect error, reset, timeout).
    pub status: u16,
    /// `version` from the JSON body `{"version":"..."}`, when there was one.
    pub version: Option<Arc<str>>,
    /// The pool switchyard says answered (its `X-Switchyard-Pool` header), when it said.
    pub pool: Option<Arc<str>>,
    /// The value of the kept cookie sent with the request
    /// ([`LoadConfig::cookie`](crate::LoadConfig::cookie)), when one was sent.
    pub cookie: Option<Arc<str>>,
    /// Why the request failed at the transport level, if it did.
    pub error: Option<Box<str>>,
}

impl Sample {
    /// A successful answer (2xx) carrying `version`; handy in tests.
    pub fn answered(sent_ns: u64, done_ns: u64, version: &str) -> Self {
        Self {
            intended_ns: sent_ns,
            sent_ns,
            done_ns,
            status: 200,
            version: Some(Arc::from(version)),
            pool: None,
            cookie: None,
            error: None,
        }
    }

    /// A request that got no answer; handy in tests.
    pub fn transport_error(sent_ns: u64, done_ns: u64, error: &str) -> Self {
        Self {
            intended_ns: sent_ns,
            sent_ns,
            done_ns,
            status: 0,
            version: None,
            pool: None,
            cookie: None,
            error: Some(error.into()),
        }
    }

    /// True unless the request failed: a transport error, a non-2xx status,
    /// or a body without a version.
    pub fn ok(&self) -> bool {
        self.error.is_none() && (200..300).contains(&self.status) && self.version.is_some()
    }

    /// From the intended send time to the complete answer.
    pub fn latency_ns(&self) -> u64 {
        self.done_ns.saturating_sub(self.intended_ns)
    }

    /// The version, when the request succeeded.
    pub fn ok_version(&self) -> Option<&str> {
        if self.ok() {
            self.version.as_deref()
        } else {
            None
        }
    }

    /// A one-line description of why it failed, for logs.
    pub fn failure(&self) -> Option<String> {
        if let Some(e) = &self.error {
            Some(format!("error: {e}"))
        } else if !(200..300).contains(&self.status) {
            Some(format!("status {}", self.status))
        } else if self.version.is_none() {
            Some(format!("status {} without a version in the body", self.status))
        } else {
            None
        }
    }
}

/// Reads `version` out of a JSON body such as `{"version":"0.0.1","errors":[]}`.
pub fn parse_version(body: &[u8]) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        version: &'a str,
    }
    serde_json::from_slice::<Body<'_>>(body).ok().map(|b| b.version)
}

/// Hands out shared copies of the versions (or pool names) seen, so that
/// recording a sample does not allocate (a run sees two or three distinct ones).
#[derive(Debug, Default)]
pub struct VersionInterner {
    seen: Vec<Arc<str>>,
}

impl VersionInterner {
    /// A shared copy of `v`.
    pub fn intern(&mut self, v: &str) -> Arc<str> {
        if let Some(s) = self.seen.iter().find(|s| ***s == *v) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(v);
        self.seen.push(s.clone());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_version_body() {
        assert_eq!(
            parse_version(br#"{"version":"0.0.1","errors":[]}"#),
            Some("0.0.1")
        );
        assert_eq!(
            parse_version(br#"{"errors":[],"version":"0.0.2"}"#),
            Some("0.0.2")
        );
        assert_eq!(
            parse_version(br#"{"error":"upstream failed","errors":["x"]}"#),
            None
        );
        assert_eq!(parse_version(b"not json"), None);
        assert_eq!(parse_version(b""), None);
    }

    #[test]
    fn failures() {
        assert!(Sample::answered(0, 1, "a").ok());
        assert!(!Sample::transport_error(0, 1, "refused").ok());
        let mut s = Sample::answered(0, 1, "a");
        s.status = 502;
        assert!(!s.ok());
        assert_eq!(s.failure().as_deref(), Some("status 502"));
        s.status = 200;
        s.version = None;
        assert!(!s.ok());
    }

    #[test]
    fn interner_shares() {
        let mut i = VersionInterner::default();
        let a = i.intern("0.0.1");
        let b = i.intern("0.0.1");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*i.intern("0.0.2"), "0.0.2");
    }
}
