//! Where requests go: a plain-HTTP URL split into what a connection needs.

use anyhow::{bail, Context};

/// A `http://host[:port]/path` URL, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` to connect to (brackets kept for IPv6 literals).
    pub connect: String,
    /// The `Host` header value (the URL's authority).
    pub authority: String,
    /// Path and query to request.
    pub path: String,
}

impl Target {
    /// Parses a URL; only `http` is supported (the bench measures the proxy,
    /// not TLS). The port defaults to 80 and the path to `/`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!("{url}: only http:// URLs are supported, not {other}://"),
            None => bail!("{url}: the URL needs a scheme, like http://127.0.0.1:8080/version"),
        }
        let authority = uri.authority().with_context(|| format!("{url}: no host"))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let connect = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Ok(Self {
            connect,
            authority: authority.as_str().to_string(),
            path: if path.is_empty() { "/".into() } else { path },
        })
    }

    /// The same host with another path (e.g. the admin API's `/switch`).
    pub fn with_path(&self, path: &str) -> Self {
        Self {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let t = Target::parse("http://127.0.0.1:8080/version").unwrap();
        assert_eq!(t.connect, "127.0.0.1:8080");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/version");
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(t.connect, "localhost:80");
        assert_eq!(t.path, "/");
        let t = Target::parse("http://[::1]:9901/status?x=1").unwrap();
        assert_eq!(t.connect, "[::1]:9901");
        assert_eq!(t.path, "/status?x=1");
        assert!(Target::parse("https://x/").is_err());
        assert!(Target::parse("127.0.0.1:8080").is_err());
    }
}
