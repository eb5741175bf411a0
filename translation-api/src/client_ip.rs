//! Who the client is.
//!
//! The client address is the peer address of the connection. Only when the
//! peer is a trusted proxy is `X-Forwarded-For` believed, and then it is read
//! from the right: each proxy appends the address it received the request
//! from, so the right-most entry that is not itself a trusted proxy is the
//! first address no trusted party vouches for being a proxy: the client.
//! The left-most entry is whatever the client chose to send and is never
//! used.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether `ip` lies in one of the `trusted` networks.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client address of a request that arrived from `peer` with `headers`.
///
/// - `peer` not trusted: `peer` (its `X-Forwarded-For` is ignored).
/// - `peer` trusted: walk `X-Forwarded-For` (all its header lines, in order)
///   from the right, skipping trusted addresses; the first untrusted address
///   is the client. If every entry is trusted, the left-most one (the
///   farthest hop known). An entry that is not an address stops the walk at
///   the last address known to be good: nothing to the left of garbage is
///   believed.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are treated as IPv4.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut nearest = peer;
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else {
            return nearest;
        };
        for entry in line.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return nearest;
            };
            let ip = ip.to_canonical();
            if !is_trusted(ip, trusted) {
                return ip;
            }
            nearest = ip;
        }
    }
    nearest
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    fn loopback() -> Vec<IpNet> {
        crate::default_trusted_proxies()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &loopback()), ip("198.51.100.1"));
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &loopback()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn right_most_untrusted_entry_wins_not_the_forged_left_most() {
        let h = headers(&["6.6.6.6, 1.1.1.1, 203.0.113.7"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &loopback()), ip("203.0.113.7"));
    }

    #[test]
    fn trusted_hops_are_skipped_across_header_lines() {
        let trusted = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let h = headers(&["6.6.6.6, 203.0.113.7", "10.1.2.3 , 10.9.9.9"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("203.0.113.7"));
    }

    #[test]
    fn all_trusted_gives_the_left_most_trusted_hop() {
        let trusted = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let h = headers(&["10.0.0.5, 10.0.0.6"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("10.0.0.5"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_address() {
        let trusted = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let h = headers(&["6.6.6.6, unknown, 10.0.0.5"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("10.0.0.5"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let h = headers(&["[2001:db8::1]:443"]);
        assert_eq!(client_ip(ip("::1"), &h, &loopback()), ip("2001:db8::1"));
        let h = headers(&["203.0.113.9:5555"]);
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &h, &loopback()),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("::ffff:198.51.100.3"), &HeaderMap::new(), &loopback()),
            ip("198.51.100.3")
        );
    }

    #[test]
    fn nothing_is_trusted_with_an_empty_list() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &[]), ip("127.0.0.1"));
    }
}
