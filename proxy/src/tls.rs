//! TLS termination: the `rustls` server configuration of the HTTPS
//! listener (TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`, the `ring`
//! crypto provider), and its certificates, which are reloaded without a
//! restart.
//!
//! The certificates sit behind one `ArcSwap` that the resolver loads once
//! per handshake ([`Resolver`]): a reload builds the whole new set, then
//! stores it, so a handshake sees the old set or the new one, and a
//! connection already open keeps the certificate it was made with. A new
//! pair is checked before it can be stored — it parses, its key matches its
//! certificate, it has not expired — and a pair that fails is rejected with
//! its reason (in `/status`, the log and `tls_reloads_total{result="error"}`)
//! while the old pair keeps serving. What triggers a reload (the watch on
//! the files' directories, the periodic re-read, SIGHUP) is the watcher's
//! job (`watch`), run from `server`; this module only reads, checks and
//! swaps.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertFiles, ConfigError};
use crate::metrics::Metrics;
use crate::status::TlsStatus;

/// Largest certificate or key file read; anything bigger is rejected.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// ALPN protocols offered, in the server's order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate pair cannot be served: the file, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct PairError {
    /// The certificate or key file at fault.
    pub file: std::path::PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// A checked certificate pair, ready to serve.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The chain and signing key rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of the leaf certificate (SANs, else its common name).
    pub names: Vec<String>,
    /// The leaf's `notAfter`, in Unix seconds.
    pub not_after: i64,
}

/// The crypto provider: `ring` (see docs/tls.md for why not aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads `files`' certificate and key (each at most [`MAX_PEM_BYTES`]).
fn read_files(files: &CertFiles) -> Result<(Vec<u8>, Vec<u8>), PairError> {
    Ok((read_pem(&files.cert)?, read_pem(&files.key)?))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, PairError> {
    use std::io::Read;
    let failed = |e: std::io::Error| PairError {
        file: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(failed)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(PairError {
            file: path.to_path_buf(),
            reason: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// Checks a pair read from `files` at `now`: the certificate file holds at
/// least one PEM certificate (the leaf first), the key file a PEM private
/// key the provider can sign with, the key is the certificate's, and the
/// leaf has not expired.
pub fn check_pair(
    files: &CertFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    now: SystemTime,
    provider: &CryptoProvider,
) -> Result<Pair, PairError> {
    let cert_error = |reason: String| PairError {
        file: files.cert.clone(),
        reason,
    };
    let key_error = |reason: String| PairError {
        file: files.key.clone(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error("no PEM certificate in the file".into()));
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| cert_error(format!("the first certificate does not parse: {e}")))?;
    let not_after = parsed.validity().not_after.timestamp();
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if not_after <= now_secs {
        return Err(cert_error(format!(
            "the certificate expired at {}",
            rfc3339(not_after)
        )));
    }
    let names = names_of(&parsed);
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| key_error(format!("no PEM private key in the file: {e}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(key_error(format!(
                "the key does not match the certificate {}",
                files.cert.display()
            )))
        }
        Err(e) => return Err(cert_error(format!("unusable certificate: {e}"))),
    }
    Ok(Pair {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// The DNS names a certificate is for: its subject alternative names, else
/// its common name.
fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !sans.is_empty() {
        return sans;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(ToString::to_string))
        .collect()
}

/// Unix seconds as RFC 3339.
fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

fn hash_of(parts: &[&[u8]]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// The certificates served, by server name: what one handshake loads.
#[derive(Debug)]
struct Served {
    /// `[tls]` itself: for clients that name no server or an unknown one.
    default: Arc<CertifiedKey>,
    /// `[[tls.sni]]` names, lower case, exact.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` entries, by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Served {
    fn of(entries: &[Entry]) -> Served {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for e in entries.iter().skip(1) {
            for name in &e.files.names {
                let key = Arc::clone(&e.pair.key);
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_string(), key),
                    None => exact.insert(name.clone(), key),
                };
            }
        }
        Served {
            default: Arc::clone(&entries[0].pair.key),
            exact,
            wildcard,
        }
    }

    fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        // rustls hands the name over lower-cased and checked as a DNS name.
        if let Some(k) = self.exact.get(name) {
            return k;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k;
            }
        }
        &self.default
    }
}

/// rustls' certificate resolver: one `ArcSwap` load per handshake.
#[derive(Debug)]
pub struct Resolver(ArcSwap<Served>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.0.load().choose(hello.server_name())))
    }
}

/// One certificate of `[tls]`: its files, the pair it serves, and what the
/// last read of its files found.
struct Entry {
    files: CertFiles,
    pair: Pair,
    /// Hash of what the last read found (the bytes, or the error): a file
    /// read again unchanged is not checked, logged or counted again.
    seen: u64,
    last_error: Option<String>,
}

/// The HTTPS listener's TLS: its server configuration (shared by every
/// core's handshakes) and its certificates.
pub struct Tls {
    /// What each core's handshakes run with.
    pub acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    /// Only the reloader (control runtime) and `/status` take this lock;
    /// a handshake never does (it loads the resolver's `ArcSwap`).
    entries: Mutex<Vec<Entry>>,
}

impl Tls {
    /// Loads and checks every certificate of `[tls]` (`certs`: the default
    /// first, as `Settings::certs` lists them); every failure is listed.
    pub fn load(certs: &[CertFiles]) -> Result<Tls, Vec<ConfigError>> {
        let provider = provider();
        let now = SystemTime::now();
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for files in certs {
            let loaded = read_files(files).and_then(|(c, k)| {
                let pair = check_pair(files, &c, &k, now, &provider)?;
                Ok((pair, hash_of(&[&c, &k])))
            });
            match loaded {
                Ok((pair, seen)) => entries.push(Entry {
                    files: files.clone(),
                    pair,
                    seen,
                    last_error: None,
                }),
                Err(e) => errors.push(ConfigError::Invalid {
                    file: e.file,
                    line: None,
                    reason: format!("[tls] {}: {}", files.name, e.reason),
                }),
            }
        }
        if entries.is_empty() && errors.is_empty() {
            errors.push(ConfigError::Invalid {
                file: std::path::PathBuf::from("proxy.toml"),
                line: None,
                reason: "[tls] has no certificate".into(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let resolver = Arc::new(Resolver(ArcSwap::from_pointee(Served::of(&entries))));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| {
                vec![ConfigError::Invalid {
                    file: std::path::PathBuf::from("proxy.toml"),
                    line: None,
                    reason: format!("[tls]: {e}"),
                }]
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            resolver,
            provider,
            entries: Mutex::new(entries),
        })
    }

    /// Sets `tls_cert_expiry_timestamp_seconds` for what is served now.
    pub fn publish(&self, metrics: &Metrics) {
        metrics.tls_init();
        for e in self.lock().iter() {
            metrics.tls_expiry(&e.files.name, e.pair.not_after);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding it cannot leave an entry half-written (each
        // field is replaced whole), so a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Re-reads every certificate's files: a pair that changed since the
    /// last read is checked and, if good, served to new handshakes (one
    /// store for all of them); if bad, rejected with its reason, and the old
    /// pair keeps serving. Returns how many pairs were accepted and rejected.
    pub fn reload(&self, metrics: &Metrics) -> (usize, usize) {
        let mut entries = self.lock();
        let now = SystemTime::now();
        let (mut accepted, mut rejected) = (0, 0);
        for e in entries.iter_mut() {
            let read = read_files(&e.files);
            let seen = match &read {
                Ok((c, k)) => hash_of(&[c, k]),
                Err(err) => hash_of(&[err.to_string().as_bytes()]),
            };
            if seen == e.seen {
                continue;
            }
            e.seen = seen;
            match read.and_then(|(c, k)| check_pair(&e.files, &c, &k, now, &self.provider)) {
                Ok(pair) => {
                    tracing::info!(
                        certificate = %e.files.name,
                        names = ?pair.names,
                        not_after = %rfc3339(pair.not_after),
                        "TLS certificate reloaded; new handshakes get it"
                    );
                    metrics.tls_reload("ok");
                    metrics.tls_expiry(&e.files.name, pair.not_after);
                    e.pair = pair;
                    e.last_error = None;
                    accepted += 1;
                }
                Err(err) => {
                    tracing::warn!(
                        certificate = %e.files.name,
                        error = %err,
                        "TLS certificate pair rejected; the old one keeps serving"
                    );
                    metrics.tls_reload("error");
                    e.last_error = Some(err.to_string());
                    rejected += 1;
                }
            }
        }
        if accepted > 0 {
            self.resolver.0.store(Arc::new(Served::of(&entries)));
        }
        (accepted, rejected)
    }

    /// Every file a reload reads (what the watcher watches the directories of).
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.lock()
            .iter()
            .flat_map(|e| [e.files.cert.clone(), e.files.key.clone()])
            .collect()
    }

    /// `/status` `tls`: each certificate, the default first.
    pub fn status(&self) -> Vec<TlsStatus> {
        self.lock()
            .iter()
            .map(|e| TlsStatus {
                name: e.files.name.clone(),
                names: e.pair.names.clone(),
                not_after: rfc3339(e.pair.not_after),
                last_error: e.last_error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
