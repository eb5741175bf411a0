use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
            HeaderValue::from_str(v).expect("test header value"),
        );
    }
    h
}

fn names(h: &HeaderMap) -> Vec<&str> {
    let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
    v.sort_unstable();
    v
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().expect("test header is text"))
}

#[test]
fn strips_hop_by_hop_and_what_connection_names() {
    let mut h = map(&[
        ("connection", "Keep-Alive, X-One"),
        ("connection", "close,  x-two ,upgrade"),
        ("keep-alive", "timeout=5"),
        ("x-one", "1"),
        ("x-two", "2"),
        ("te", "trailers"),
        ("transfer-encoding", "chunked"),
        ("proxy-authorization", "Basic eA=="),
        ("upgrade", "websocket"),
        ("x-kept", "yes"),
        ("host", "h"),
    ]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(names(&h), ["host", "x-kept"]);
}

#[test]
fn each_hop_by_hop_header_is_removed() {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    ] {
        let mut h = map(&[(name, "x"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["x-kept"], "{name}");
    }
}

#[test]
fn connection_never_strips_host_content_length_or_transfer_encoding() {
    // (what Connection names, what stays of host / content-length / x-named)
    let table: &[(&str, &[&str])] = &[
        ("host", &["content-length", "host", "x-named"]),
        ("Host, Content-Length", &["content-length", "host", "x-named"]),
        ("content-length, x-named", &["content-length", "host"]),
        ("transfer-encoding", &["content-length", "host", "x-named"]),
        ("close, HOST, x-named", &["content-length", "host"]),
    ];
    for (connection, kept) in table {
        let mut h = map(&[
            ("connection", connection),
            ("host", "a.example"),
            ("content-length", "5"),
            ("x-named", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), *kept, "Connection: {connection}");
        let mut h = map(&[
            ("connection", connection),
            ("host", "a.example"),
            ("content-length", "5"),
            ("x-named", "1"),
        ]);
        rewrite_request(
            &mut h,
            &HeaderValue::from_static("192.0.2.7"),
            false,
            false,
            &[],
            || HeaderValue::from_static("id"),
        );
        for name in *kept {
            assert!(h.contains_key(*name), "request, Connection: {connection}: {name}");
        }
    }
}

#[test]
fn client_sent_forwarded_and_x_real_ip_are_removed_from_requests_only() {
    let peer = HeaderValue::from_static("192.0.2.7");
    for trusted in [false, true] {
        let mut h = map(&[
            ("host", "a.example"),
            ("forwarded", "for=6.6.6.6"),
            ("Forwarded", "host=evil.example"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        rewrite_request(&mut h, &peer, trusted, false, &[], || {
            HeaderValue::from_static("id")
        });
        assert!(
            !h.contains_key("forwarded") && !h.contains_key("x-real-ip"),
            "trusted={trusted}: {h:?}"
        );
    }
    // An upstream's answer keeps them (they are not hop-by-hop).
    let mut h = map(&[("forwarded", "for=x"), ("x-real-ip", "1.2.3.4")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(names(&h), ["forwarded", "x-real-ip"]);
}

#[test]
fn check_request_refuses_connect_bad_hosts_and_transfer_codings() {
    use http::{Method, Version};
    let v11 = Version::HTTP_11;
    let v10 = Version::HTTP_10;
    let get = Method::GET;
    let post = Method::POST;
    /// (method, version, target, headers, verdict)
    type Case<'a> = (
        &'a Method,
        Version,
        &'a str,
        &'a [(&'a str, &'a str)],
        Result<(), Refusal>,
    );
    let cases: &[Case] = &[
        (&get, v11, "/", &[("host", "a.example")], Ok(())),
        (&get, v11, "/", &[("host", "a.example:8080")], Ok(())),
        (&get, v11, "/", &[("host", "[::1]:8080")], Ok(())),
        (&get, v11, "/", &[("host", "10.0.0.1")], Ok(())),
        (&get, v11, "/", &[("host", "")], Ok(())),
        (&get, v11, "/", &[], Err(Refusal::NoHost)),
        (&get, v10, "/", &[], Ok(())),
        (
            &get,
            v11,
            "/",
            &[("host", "a.example"), ("host", "a.example")],
            Err(Refusal::TwoHosts),
        ),
        (
            &get,
            v10,
            "/",
            &[("host", "a.example"), ("host", "b.example")],
            Err(Refusal::TwoHosts),
        ),
        (&get, v11, "/", &[("host", "a b")], Err(Refusal::BadHost)),
        (&get, v11, "/", &[("host", "a/b")], Err(Refusal::BadHost)),
        (&get, v11, "/", &[("host", "user@a")], Err(Refusal::BadHost)),
        (&get, v11, "http://a.example/x", &[("host", "b.example")], Ok(())),
        (
            &get,
            v11,
            "http://u:p@a.example/x",
            &[("host", "a.example")],
            Err(Refusal::BadHost),
        ),
        (&get, v11, "http://a.example/x", &[], Err(Refusal::NoHost)),
        (&get, v10, "http://a.example/x", &[], Ok(())),
        (
            &Method::CONNECT,
            v11,
            "127.0.0.1:22",
            &[("host", "127.0.0.1:22")],
            Err(Refusal::Connect),
        ),
        (&Method::CONNECT, v10, "127.0.0.1:22", &[], Err(Refusal::Connect)),
        (&Method::OPTIONS, v11, "*", &[("host", "a.example")], Ok(())),
        // Transfer-Encoding: `chunked` alone (hyper has already refused one
        // that does not end in `chunked`, and any on HTTP/1.0).
        (
            &post,
            v11,
            "/",
            &[("host", "a"), ("transfer-encoding", "chunked")],
            Ok(()),
        ),
        (
            &post,
            v11,
            "/",
            &[("host", "a"), ("transfer-encoding", "Chunked")],
            Ok(()),
        ),
        (
            &post,
            v11,
            "/",
            &[("host", "a"), ("transfer-encoding", " chunked , ")],
            Ok(()),
        ),
        (
            &post,
            v11,
            "/",
            &[("host", "a"), ("transfer-encoding", "gzip, chunked")],
            Err(Refusal::TransferCoding),
        ),
        (
            &post,
            v11,
            "/",
            &[("host", "a"), ("transfer-encoding", "chunked, chunked")],
            Err(Refusal::TransferCoding),
        ),
        (
            &post,
            v11,
            "/",
            &[
                ("host", "a"),
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            Err(Refusal::TransferCoding),
        ),
        (
            &post,
            v11,
            "/",
            &[("host", "a"), ("transfer-encoding", "identity")],
            Err(Refusal::TransferCoding),
        ),
    ];
    for (method, version, target, headers, want) in cases {
        let uri: Uri = target.parse().expect("test target");
        let got = check_request(method, *version, &uri, &map(headers));
        assert_eq!(got, *want, "{method} {target} {version:?} {headers:?}");
    }
    assert_eq!(Refusal::Connect.status(), StatusCode::METHOD_NOT_ALLOWED);
    for r in [
        Refusal::NoHost,
        Refusal::TwoHosts,
        Refusal::BadHost,
        Refusal::TransferCoding,
    ] {
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{r:?}");
    }
}

#[test]
fn absolute_form_target_replaces_host_and_becomes_origin_form() {
    // (target, Host sent, target sent upstream, Host sent upstream)
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        (
            "http://evil.example/x?q=1",
            Some("good.example"),
            "/x?q=1",
            Some("evil.example"),
        ),
        (
            "http://evil.example:8080",
            Some("good.example"),
            "/",
            Some("evil.example:8080"),
        ),
        ("https://[::1]:8443/a", None, "/a", Some("[::1]:8443")),
        ("/x?q=1", Some("good.example"), "/x?q=1", Some("good.example")),
        ("/", None, "/", None),
        ("*", Some("good.example"), "*", Some("good.example")),
    ];
    for (target, host, want_target, want_host) in cases {
        let mut uri: Uri = target.parse().expect("test target");
        let mut h = match host {
            Some(v) => map(&[("host", v)]),
            None => HeaderMap::new(),
        };
        origin_form(&mut uri, &mut h);
        assert_eq!(uri.to_string(), *want_target, "{target}");
        assert_eq!(get(&h, "host"), *want_host, "{target}");
        assert_eq!(h.get_all("host").iter().count(), usize::from(want_host.is_some()));
    }
}

#[test]
fn an_upgrade_keeps_upgrade_and_connection_upgrade() {
    let mut h = map(&[
        ("connection", "Upgrade, x-one"),
        ("upgrade", "websocket"),
        ("x-one", "1"),
        ("keep-alive", "timeout=5"),
    ]);
    strip_hop_by_hop(&mut h, true);
    assert_eq!(names(&h), ["connection", "upgrade"]);
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["upgrade"], "websocket");
}

#[test]
fn headers_without_hop_by_hop_names_are_untouched() {
    let mut h = map(&[("host", "h"), ("x-a", "1"), ("x-a", "2")]);
    let before = h.clone();
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h, before);
}

#[test]
fn wants_upgrade_needs_upgrade_and_a_connection_upgrade_token() {
    let cases: &[(&[(&str, &str)], bool)] = &[
        (&[("upgrade", "websocket"), ("connection", "Upgrade")], true),
        (
            &[("upgrade", "websocket"), ("connection", "keep-alive, upgrade")],
            true,
        ),
        (
            &[
                ("upgrade", "websocket"),
                ("connection", "keep-alive"),
                ("connection", "UPGRADE"),
            ],
            true,
        ),
        (&[("upgrade", "websocket")], false),
        (&[("connection", "upgrade")], false),
        (&[("upgrade", "websocket"), ("connection", "upgrades")], false),
        (&[], false),
    ];
    for (headers, want) in cases {
        assert_eq!(wants_upgrade(&map(headers)), *want, "{headers:?}");
    }
}

/// One row of the `X-Forwarded-*` table: what the client sent, whether it
/// is trusted, and the three headers the upstream gets.
struct Fwd {
    trusted: bool,
    sent: &'static [(&'static str, &'static str)],
    xff: Option<&'static str>,
    proto: Option<&'static str>,
    host: Option<&'static str>,
}

#[test]
fn x_forwarded_headers_are_replaced_unless_trusted() {
    let peer = HeaderValue::from_static("192.0.2.7");
    let table = [
        // Anyone else: all three replaced; a forged chain is dropped.
        Fwd {
            trusted: false,
            sent: &[("host", "a.example")],
            xff: Some("192.0.2.7"),
            proto: Some("http"),
            host: Some("a.example"),
        },
        Fwd {
            trusted: false,
            sent: &[
                ("host", "a.example"),
                ("x-forwarded-for", "10.9.9.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "forged.example"),
            ],
            xff: Some("192.0.2.7"),
            proto: Some("http"),
            host: Some("a.example"),
        },
        Fwd {
            trusted: false,
            sent: &[("x-forwarded-host", "forged.example")],
            xff: Some("192.0.2.7"),
            proto: Some("http"),
            host: None,
        },
        // A trusted proxy: the chain is extended, -Proto and -Host kept.
        Fwd {
            trusted: true,
            sent: &[("host", "a.example")],
            xff: Some("192.0.2.7"),
            proto: Some("http"),
            host: Some("a.example"),
        },
        Fwd {
            trusted: true,
            sent: &[
                ("host", "a.example"),
                ("x-forwarded-for", "203.0.113.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "front.example"),
            ],
            xff: Some("203.0.113.1, 192.0.2.7"),
            proto: Some("https"),
            host: Some("front.example"),
        },
        Fwd {
            trusted: true,
            sent: &[],
            xff: Some("192.0.2.7"),
            proto: Some("http"),
            host: None,
        },
        // Every X-Forwarded-For line of a trusted proxy is kept, in order,
        // as one line.
        Fwd {
            trusted: true,
            sent: &[
                ("x-forwarded-for", "203.0.113.1"),
                ("x-forwarded-for", "203.0.113.2, 198.51.100.3"),
            ],
            xff: Some("203.0.113.1, 203.0.113.2, 198.51.100.3, 192.0.2.7"),
            proto: Some("http"),
            host: None,
        },
        // ...and from anyone else every line is replaced.
        Fwd {
            trusted: false,
            sent: &[
                ("x-forwarded-for", "203.0.113.1"),
                ("x-forwarded-for", "203.0.113.2"),
            ],
            xff: Some("192.0.2.7"),
            proto: Some("http"),
            host: None,
        },
    ];
    for row in table {
        let mut h = map(row.sent);
        forwarded(&mut h, &peer, row.trusted, false);
        let what = format!("trusted={} sent={:?}", row.trusted, row.sent);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1, "{what}");
        assert_eq!(get(&h, "x-forwarded-for"), row.xff, "{what}");
        assert_eq!(get(&h, "x-forwarded-proto"), row.proto, "{what}");
        assert_eq!(get(&h, "x-forwarded-host"), row.host, "{what}");
    }
}

#[test]
fn trusted_proxies_rule() {
    let nets: Vec<IpNet> = ["10.0.0.0/8", "2001:db8::/32"]
        .iter()
        .map(|n| n.parse().expect("test CIDR"))
        .collect();
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let cases = [
        (v4(10, 1, 2, 3), true),
        (v4(11, 1, 2, 3), false),
        (IpAddr::V6("2001:db8::1".parse().expect("test address")), true),
        (IpAddr::V6("2001:db9::1".parse().expect("test address")), false),
        // An IPv4 client on a dual-stack listener counts by its IPv4 address.
        (
            canonical_ip(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped())),
            true,
        ),
    ];
    for (ip, want) in cases {
        assert_eq!(is_trusted(&nets, ip), want, "{ip}");
    }
    assert!(!is_trusted(&[], v4(10, 0, 0, 1)), "default: nobody is trusted");
}

#[test]
fn canonical_ip_unmaps_ipv4_only() {
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
    assert_eq!(canonical_ip(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    assert_eq!(canonical_ip(v6), v6);
    assert_eq!(peer_value(v6), "::1");
}

#[test]
fn request_id_is_kept_if_valid_else_generated() {
    let long = "a".repeat(129);
    let max = "b".repeat(128);
    let cases: &[(Option<&str>, bool)] = &[
        (Some("abc-123_x.y:z"), true),
        (Some(&max), true),
        (Some(&long), false),
        (Some(""), false),
        (Some("has space"), false),
        (Some("semi;colon"), false),
        (Some("slash/"), false),
        (None, false),
    ];
    for (sent, kept) in cases {
        let mut h = HeaderMap::new();
        if let Some(v) = sent {
            h.insert("x-request-id", HeaderValue::from_str(v).expect("test value"));
        }
        let id = request_id(&mut h, || HeaderValue::from_static("new-id"));
        let want = if *kept { sent.unwrap_or_default() } else { "new-id" };
        assert_eq!(id, want, "{sent:?}");
        assert_eq!(h["x-request-id"], want, "{sent:?}: the header carries the id");
        assert_eq!(h.get_all("x-request-id").iter().count(), 1);
    }
}

#[test]
fn rewrite_request_applies_every_rule() {
    let mut h = map(&[
        ("host", "a.example"),
        ("connection", "x-secret"),
        ("x-secret", "1"),
        ("x-forwarded-for", "10.9.9.9"),
    ]);
    let peer = HeaderValue::from_static("192.0.2.7");
    let ws = ["websocket".to_string()];
    let r = rewrite_request(&mut h, &peer, false, false, &ws, || {
        HeaderValue::from_static("id-1")
    });
    assert!(!r.upgrade);
    assert_eq!(r.request_id, "id-1");
    assert_eq!(
        names(&h),
        [
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-request-id"
        ]
    );
    assert_eq!(h["x-forwarded-for"], "192.0.2.7");

    let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
    let r = rewrite_request(&mut h, &peer, false, false, &ws, || {
        HeaderValue::from_static("id-2")
    });
    assert!(r.upgrade);
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
}

#[test]
fn only_the_listed_upgrade_protocols_are_kept_others_are_stripped() {
    let peer = HeaderValue::from_static("192.0.2.7");
    let ws = ["websocket".to_string()];
    for (upgrade, tunnelled) in [
        ("websocket", true),
        ("WebSocket", true),
        ("websocket/13", true),
        ("foo", false),
        ("h2c", false),
        ("websocket, foo", false),
        ("", false),
    ] {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("x-hop", "1"),
            ("upgrade", upgrade),
        ]);
        let r = rewrite_request(&mut h, &peer, false, false, &ws, || {
            HeaderValue::from_static("id")
        });
        assert_eq!(r.upgrade, tunnelled, "{upgrade:?}");
        if tunnelled {
            assert_eq!(
                (get(&h, "upgrade"), get(&h, "connection")),
                (Some(upgrade), Some("upgrade"))
            );
        } else {
            // Forwarded as a plain request: no Upgrade, no Connection, nor
            // what Connection named.
            for gone in ["upgrade", "connection", "x-hop"] {
                assert!(h.get(gone).is_none(), "{upgrade:?}: {gone} stays: {h:?}");
            }
        }
    }
    let h = map(&[("upgrade", "foo")]);
    assert!(!upgrade_allowed(&h, &[]), "an empty list tunnels nothing");
    assert!(upgrade_allowed(&h, &["foo".to_string()]));
}

#[test]
fn label_response_adds_labels_only_when_exposed() {
    let pool = HeaderValue::from_static("blue");
    for expose in [true, false] {
        let mut h = map(&[("x-request-id", "from-upstream")]);
        label_response(
            &mut h,
            expose,
            &pool,
            HeaderValue::from_static("7"),
            HeaderValue::from_static("rid"),
        );
        assert_eq!(
            h["x-request-id"], "rid",
            "the request's id replaces the upstream's"
        );
        assert_eq!(get(&h, "x-switchyard-pool"), expose.then_some("blue"));
        assert_eq!(get(&h, "x-switchyard-generation"), expose.then_some("7"));
    }
}

#[test]
fn request_ids_are_32_hex_digits_prefix_then_counter() {
    let ids = RequestIds::new(0x0123_4567_89ab_cdef);
    let first = ids.next_id();
    assert_eq!(first, "0123456789abcdef0000000000000001");
    let mut seen = std::collections::HashSet::new();
    seen.insert(first);
    // Past one block of ids: still unique and well formed.
    for _ in 0..(IDS_PER_BLOCK * 2) {
        let id = ids.next_id();
        assert_eq!(id.len(), ID_LEN);
        assert!(valid_request_id(&id));
        assert!(seen.insert(id), "ids are unique");
    }
}
