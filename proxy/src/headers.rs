//! The header rules of the data plane, as pure functions of a request's
//! method, version, target and header map: which requests are refused
//! ([`check_request`]: `CONNECT`, a missing or repeated `Host` on HTTP/1.1,
//! a malformed `Host`), the absolute-form target that replaces `Host`
//! ([`origin_form`]), hop-by-hop removal (both ways, with the headers
//! `Connection` names, except those it can never strip), the client-sent
//! forwarding headers the proxy drops, `X-Forwarded-For` / `-Proto` /
//! `-Host` (and the trusted-proxies rule that decides whether they are
//! extended or replaced), the request id (kept if valid, else generated),
//! and the labels every answer gets.
//!
//! Nothing here does I/O or knows about connections, pools or tables; the
//! request flow (`forward`) calls these on each request and response.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_SWITCHYARD_POOL: HeaderName = HeaderName::from_static("x-switchyard-pool");
static X_SWITCHYARD_GENERATION: HeaderName = HeaderName::from_static("x-switchyard-generation");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// How many of [`REMOVED`] are hop-by-hop (RFC 9110 §7.6.1 and the usual
/// extras, `Proxy-Authenticate` among them): never forwarded, either way.
const HOP_BY_HOP: usize = 9;

/// The headers the proxy removes: the first [`HOP_BY_HOP`] both ways
/// (`Connection` first: [`strip`] relies on it), the rest from requests
/// only: forwarding headers a client may not set, since the proxy does not
/// vouch for them (`Forwarded`, `X-Real-IP`; `X-Forwarded-*` are rewritten
/// by [`forwarded`] instead).
static REMOVED: [&HeaderName; 11] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
    &header::FORWARDED,
    &X_REAL_IP,
];

/// Headers that `Connection` can never remove, whatever it names: the
/// request's target (`Host`) and its framing (`Content-Length`;
/// `Transfer-Encoding` is hop-by-hop, and hyper re-frames the body).
static NEVER_NAMED: [&HeaderName; 3] = [&header::HOST, &header::CONTENT_LENGTH, &header::TRANSFER_ENCODING];

/// Why a request is refused before it is routed (see [`check_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `CONNECT`: the proxy opens no tunnel to an address a client names (405).
    Connect,
    /// An HTTP/1.1 request without `Host` (400, RFC 9112 §3.2).
    NoHost,
    /// More than one `Host` line (400, RFC 9112 §3.2).
    TwoHosts,
    /// A `Host` that is no `host[:port]`, or an absolute-form target with
    /// user information (400).
    BadHost,
    /// A `Transfer-Encoding` that is not exactly `chunked` (400): hyper
    /// refuses one whose last coding is not `chunked`; this refuses any
    /// other coding before it (`gzip, chunked`, `chunked, chunked`), whose
    /// body hyper would un-chunk once and the upstream would get, re-framed,
    /// without its coding (`Transfer-Encoding` is hop-by-hop).
    TransferCoding,
}

impl Refusal {
    /// The status the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::NoHost | Refusal::TwoHosts | Refusal::BadHost | Refusal::TransferCoding => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// What the client is told (and the log says).
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Connect => "CONNECT is not allowed",
            Refusal::NoHost => "an HTTP/1.1 request needs a Host header",
            Refusal::TwoHosts => "more than one Host header",
            Refusal::BadHost => "invalid Host",
            Refusal::TransferCoding => "only the chunked transfer coding is supported",
        }
    }
}

/// Whether the proxy forwards a request at all: not `CONNECT` (405); on
/// HTTP/1.1 exactly one `Host` (HTTP/1.0 may omit it, HTTP/2 may carry
/// `:authority` instead, none may repeat it),
/// which must be a valid `host[:port]` (or empty, as RFC 9112 allows);
/// an absolute-form target must not carry user information; a
/// `Transfer-Encoding`, if any, is `chunked` alone. One lookup of `Host`
/// and one of `Transfer-Encoding`, no allocation.
pub fn check_request(
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    if method == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        // HTTP/2's `:authority` (in the target) stands for `Host`.
        (None, _) if version == Version::HTTP_2 && uri.authority().is_some() => {}
        (None, _) if version >= Version::HTTP_11 => return Err(Refusal::NoHost),
        (None, _) => {}
        (Some(_), Some(_)) => return Err(Refusal::TwoHosts),
        (Some(host), None) if !valid_host(host.as_bytes()) => return Err(Refusal::BadHost),
        (Some(_), None) => {}
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Refusal::BadHost);
    }
    if !only_chunked(headers.get_all(header::TRANSFER_ENCODING)) {
        return Err(Refusal::TransferCoding);
    }
    Ok(())
}

/// Whether the `Transfer-Encoding` lines (RFC 9112 §6.1), taken together,
/// name no coding or exactly one, `chunked` (any case; empty list elements
/// ignored).
fn only_chunked(lines: header::GetAll<'_, HeaderValue>) -> bool {
    let mut codings = lines
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(c), None) => c.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// A `Host` value: a registered name, an IPv4 or a bracketed IPv6 address,
/// and an optional port (RFC 3986 `host [ ":" port ]`), or empty; checked
/// by its characters (one table lookup each), not parsed.
pub fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|c| HOST_BYTES[usize::from(*c)])
}

/// The bytes a `Host` value may hold: RFC 3986's unreserved, sub-delims,
/// `%` (pct-encoded), `:` and the brackets of an IPv6 literal.
static HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    let extra = b"-._~!$&'()*+,;=%:[]";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
};

/// An absolute-form target (`GET http://a/x`) replaces `Host` with its
/// authority (RFC 9112 §3.2.2) and becomes origin-form (`/x`), as the
/// upstream gets it. Any other target is left alone (one check).
pub fn origin_form(uri: &mut Uri, headers: &mut HeaderMap) {
    let Some(authority) = uri.authority() else {
        return;
    };
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        headers.insert(header::HOST, host);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *uri = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
}

/// `listen.redirect_https`: where a request of the plain listener is sent,
/// `https://` + its host (from `Host`, or an absolute-form target; the
/// port dropped) + `:https_port` unless 443 + its path and query. `None`
/// without a host (an HTTP/1.0 request may have none).
pub fn https_location(uri: &Uri, headers: &HeaderMap, https_port: u16) -> Option<HeaderValue> {
    let host = match uri.authority() {
        Some(a) => a.host(),
        None => {
            let h = headers.get(header::HOST)?.to_str().ok()?;
            // `[v6]:port`, `name:port`, or either without the port.
            match h.rfind(':') {
                Some(i) if !h[i..].contains(']') => &h[..i],
                _ => h,
            }
        }
    };
    if host.is_empty() {
        return None;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    HeaderValue::from_str(&location).ok()
}

/// What [`rewrite_request`] found out about a request.
pub struct Rewritten {
    /// The request asks for a protocol upgrade that is tunnelled (one of
    /// `[limits] upgrade_protocols`): its `Upgrade` and `Connection:
    /// upgrade` were kept. Any other upgrade was stripped.
    pub upgrade: bool,
    /// `X-Request-Id` as sent upstream: the client's if valid, else a new one.
    pub request_id: HeaderValue,
}

/// Applies every header rule of a request (one [`check_request`] let
/// through, and whose target [`origin_form`] settled), in order: hop-by-hop
/// removal (keeping the upgrade headers of an upgrade handshake to one of
/// `upgrade_protocols`, lower-cased, and stripping any other) and that of
/// client-sent `Forwarded` and `X-Real-IP`, `X-Forwarded-*` for a client
/// whose address header value is `peer` (extended when `trusted`, else
/// replaced), and the request id (`new_id` makes one when the client sent
/// none or an invalid one).
pub fn rewrite_request(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    trusted: bool,
    https: bool,
    upgrade_protocols: &[String],
    new_id: impl FnOnce() -> HeaderValue,
) -> Rewritten {
    let upgrade = wants_upgrade(headers) && upgrade_allowed(headers, upgrade_protocols);
    strip(headers, upgrade, &REMOVED);
    // Room for the X-Forwarded-* headers and the request id in one step.
    headers.reserve(4);
    forwarded(headers, peer, trusted, https);
    let request_id = request_id(headers, new_id);
    Rewritten { upgrade, request_id }
}

/// Whether the request asks for a protocol upgrade (WebSocket…).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        })
}

/// Whether every protocol the request's `Upgrade` offers (its name, before
/// any `/version`, case-insensitive) is one of `protocols` (lower-cased):
/// offered anything else, the upstream could switch to it, so the upgrade
/// is not tunnelled.
pub fn upgrade_allowed(headers: &HeaderMap, protocols: &[String]) -> bool {
    let mut offered = false;
    for v in headers.get_all(header::UPGRADE) {
        let Ok(v) = v.to_str() else { return false };
        for token in v.split(',') {
            let name = token.split('/').next().unwrap_or_default().trim();
            if name.is_empty() {
                continue;
            }
            if !protocols.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                return false;
            }
            offered = true;
        }
    }
    offered
}

/// Removes the hop-by-hop headers and those that `Connection` names (never
/// `Host`, `Content-Length` or `Transfer-Encoding`); with `keep_upgrade` (an
/// upgrade handshake) `Upgrade` and `Connection: upgrade` stay. Used on
/// responses; requests get the same through [`rewrite_request`].
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, &REMOVED[..HOP_BY_HOP]);
}

/// Removes the headers of `list` (a prefix of [`REMOVED`]) and those that
/// `Connection` names. One pass over the names finds which are present;
/// only those are removed (each removal is a hash lookup).
fn strip(headers: &mut HeaderMap, keep_upgrade: bool, list: &[&HeaderName]) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = list.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    if present & 1 != 0 {
        // Names that `Connection` lists, beyond the options that name no
        // header of their own (`close`), those removed anyway, and those it
        // can never remove.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in headers.get_all(header::CONNECTION) {
            for token in v.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || REMOVED[..HOP_BY_HOP]
                        .iter()
                        .chain(&NEVER_NAMED)
                        .any(|h| h.as_str().eq_ignore_ascii_case(token))
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in list.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `X-Forwarded-*`: for a `trusted` proxy `X-Forwarded-For` becomes one
/// line, every line it sent (joined with `, `) then `peer`, and `-Proto` /
/// `-Host` are kept when present, else set; for anyone else all three are
/// replaced (`-Host` by `Host`, or removed without one). `-Proto` is
/// `https` for a request that arrived over TLS (`https`), else `http`.
pub fn forwarded(headers: &mut HeaderMap, peer: &HeaderValue, trusted: bool, https: bool) {
    let proto = HeaderValue::from_static(if https { "https" } else { "http" });
    if trusted {
        let lines = headers.get_all(&X_FORWARDED_FOR);
        let xff = if lines.iter().next().is_none() {
            peer.clone()
        } else {
            let len: usize = lines.iter().map(|v| v.len() + 2).sum();
            let mut v = Vec::with_capacity(len + peer.len());
            for line in lines {
                v.extend_from_slice(line.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.clone())
        };
        headers.insert(&X_FORWARDED_FOR, xff);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, proto);
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            if let Some(host) = headers.get(header::HOST).cloned() {
                headers.insert(&X_FORWARDED_HOST, host);
            }
        }
    } else {
        headers.insert(&X_FORWARDED_FOR, peer.clone());
        headers.insert(&X_FORWARDED_PROTO, proto);
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(&X_FORWARDED_HOST, host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
}

/// The request's id: its `X-Request-Id` if valid, else one from `new_id`,
/// which then replaces (or becomes) the header.
pub fn request_id(headers: &mut HeaderMap, new_id: impl FnOnce() -> HeaderValue) -> HeaderValue {
    match headers.entry(&X_REQUEST_ID) {
        header::Entry::Occupied(e) if valid_request_id(e.get()) => e.get().clone(),
        header::Entry::Occupied(mut e) => {
            let id = new_id();
            e.insert(id.clone());
            id
        }
        header::Entry::Vacant(e) => e.insert(new_id()).clone(),
    }
}

/// A request id the proxy keeps: 1 to 128 of ASCII letters, digits, `-_.:`.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// The labels every answer gets: `X-Request-Id`, and with `expose` (`[headers]
/// expose`, on by default) `X-Switchyard-Pool` and `-Generation`.
pub fn label_response(
    headers: &mut HeaderMap,
    expose: bool,
    pool: &HeaderValue,
    generation: HeaderValue,
    request_id: HeaderValue,
) {
    headers.reserve(3);
    if expose {
        headers.insert(&X_SWITCHYARD_POOL, pool.clone());
        headers.insert(&X_SWITCHYARD_GENERATION, generation);
    }
    headers.insert(&X_REQUEST_ID, request_id);
}

/// The labels of an answer to a refused request (see [`check_request`]):
/// its `X-Request-Id`, and `Connection: close`.
pub fn label_refusal(headers: &mut HeaderMap, request_id: HeaderValue) {
    headers.insert(&X_REQUEST_ID, request_id);
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// The address a client is known by: an IPv4-mapped IPv6 address as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The trusted-proxies rule: whether a client at `ip` (canonical, see
/// [`canonical_ip`]) is in `[headers] trusted_proxies`, so that its
/// `X-Forwarded-*` headers are extended rather than replaced.
pub fn is_trusted(trusted_proxies: &[IpNet], ip: IpAddr) -> bool {
    trusted_proxies.iter().any(|n| n.contains(&ip))
}

/// `ip` as a header value (`X-Forwarded-For`), made once per connection.
pub fn peer_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Length of a request id made by the proxy: 32 hex digits.
const ID_LEN: usize = 32;
/// Request ids made at once.
const IDS_PER_BLOCK: usize = 64;

/// One core's maker of request ids: its random prefix and a counter, in hex.
pub struct RequestIds {
    /// Request id prefix of this core (random per process and core).
    prefix: u64,
    /// Request id counter of this core.
    next: Cell<u64>,
    /// The next request ids of this core, made [`IDS_PER_BLOCK`] at a time
    /// in one buffer that each id is a slice of: one allocation per block
    /// instead of one per id and one more for its first clone.
    block: RefCell<Bytes>,
}

impl RequestIds {
    /// Ids starting with `prefix` (16 hex digits), then a counter from 1.
    pub fn new(prefix: u64) -> RequestIds {
        RequestIds {
            prefix,
            next: Cell::new(0),
            block: RefCell::new(Bytes::new()),
        }
    }

    /// A new request id.
    pub fn next_id(&self) -> HeaderValue {
        let mut ids = self.block.borrow_mut();
        if ids.is_empty() {
            let mut block = vec![0u8; ID_LEN * IDS_PER_BLOCK];
            for id in block.chunks_exact_mut(ID_LEN) {
                let n = self.next.get().wrapping_add(1);
                self.next.set(n);
                hex16(self.prefix, &mut id[..16]);
                hex16(n, &mut id[16..]);
            }
            *ids = Bytes::from(block);
        }
        let take = ID_LEN.min(ids.len());
        let id = ids.split_to(take);
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

fn hex16(v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests;
