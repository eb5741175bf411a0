//! TLS for tests: a certificate authority made on the spot (`rcgen`), the
//! certificates it issues (written as PEM files, as a `kubernetes.io/tls`
//! Secret holds them), and an HTTPS client trusting it that speaks HTTP/1.1
//! or HTTP/2 (chosen by ALPN) and tells which certificate the server showed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

use crate::http::Answer;

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM, and the certificate's DER (what a
/// client compares the server's certificate with).
#[derive(Clone)]
pub struct Leaf {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The certificate (DER).
    pub der: Vec<u8>,
}

impl Leaf {
    /// Writes `tls.crt` and `tls.key` into `dir` (the Secret's file names).
    pub fn write_to(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &self.key_pem).unwrap();
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

impl Ca {
    /// A new CA (ECDSA P-256).
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "switchyard test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    /// The CA certificate (DER).
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `names`, valid until 2999, with common name `cn`.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> Leaf {
        self.issue(cn, names, (2999, 1, 1))
    }

    /// A certificate for `names` that expired on 2001-01-01.
    pub fn expired(&self, cn: &str, names: &[&str]) -> Leaf {
        self.issue(cn, names, (2001, 1, 1))
    }

    fn issue(&self, cn: &str, names: &[&str], until: (i32, u8, u8)) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A client configuration trusting this CA, offering `alpn` (in
    /// order), and only `versions` when given (else TLS 1.3 and 1.2).
    pub fn client(
        &self,
        alpn: &[&[u8]],
        versions: Option<&[&'static SupportedProtocolVersion]>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions = versions.unwrap_or(rustls::DEFAULT_VERSIONS);
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// One HTTPS connection: HTTP/1.1 or HTTP/2 as ALPN chose, with what the
/// handshake settled.
pub struct TlsClient {
    sender: Sender,
    host: String,
    /// The certificate the server presented (DER).
    pub peer_cert: Vec<u8>,
    /// The ALPN protocol chosen (`h2`, `http/1.1`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The TLS version negotiated.
    pub version: Option<rustls::ProtocolVersion>,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl TlsClient {
    /// Connects to `addr`, asks for `server_name` (SNI), makes the handshake
    /// with `config`, then HTTP/2 if the server chose `h2`, else HTTP/1.1.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> std::io::Result<TlsClient> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_string()).map_err(std::io::Error::other)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let peer_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let version = session.protocol_version();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            Sender::H1(sender)
        };
        Ok(TlsClient {
            sender,
            host: server_name.to_string(),
            peer_cert,
            alpn,
            version,
        })
    }

    /// Sends `req` (HTTP/1.1: with `Host` = the server name unless set;
    /// HTTP/2: with an `https://server-name` authority unless the target has
    /// one) and reads the whole answer.
    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Result<Answer, String> {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                if !req.headers().contains_key(http::header::HOST) {
                    req.headers_mut()
                        .insert(http::header::HOST, self.host.parse().unwrap());
                }
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())?
            }
            Sender::H2(s) => {
                if req.uri().authority().is_none() {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("https://{}{path}", self.host).parse().unwrap();
                }
                *req.version_mut() = http::Version::HTTP_2;
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await.map_err(|e| e.to_string())?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Answer, String> {
        self.send(Request::get(path).body(Full::default()).unwrap()).await
    }
}
