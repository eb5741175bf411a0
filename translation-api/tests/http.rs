//! The HTTP contract, byte for byte, against the service on a real socket
//! (and once without a socket, through `app`).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::start;
use testkit::http::{get, raw, request};

#[test]
fn version() {
    let api = start(|_| {});
    let r = get(api.addr(), "/version", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"{"version":"0.0.1","errors":[]}"#);
    assert_eq!(r.headers["content-type"], "application/json");
}

#[test]
fn version_is_the_configured_one_and_escaped() {
    let api = start(|c| c.version = "2.0.0-\"green\"".into());
    let r = get(api.addr(), "/version", &[]);
    assert_eq!(r.body, r#"{"version":"2.0.0-\"green\"","errors":[]}"#);
}

#[test]
fn every_phrase_translates() {
    let api = start(|_| {});
    let table = [
        ("Victory%20or%20Death", "Victory or Death", "Lok'Tar Ogar"),
        ("Lol", "Lol", "Kek"),
        ("Okay", "Okay", "Zug Zug"),
        ("Hey", "Hey", "Es"),
        ("I+obey", "I obey", "Dabu"),
        ("By%20my%20Axe", "By my Axe", "Gol'Kosh"),
        ("Well+Met", "Well Met", "Throm-Ka"),
    ];
    for (query, phrase, translation) in table {
        let r = get(api.addr(), &format!("/api/v1/translate?phrase={query}"), &[]);
        assert_eq!(r.status, 200, "{phrase}");
        assert_eq!(
            r.body,
            format!(r#"{{"phrase":"{phrase}","translation":"{translation}","errors":[]}}"#)
        );
        assert_eq!(r.headers["content-type"], "application/json");
    }
}

#[test]
fn plus_and_percent_20_both_decode() {
    let api = start(|_| {});
    let expected = r#"{"phrase":"By my Axe","translation":"Gol'Kosh","errors":[]}"#;
    for q in ["By%20my%20Axe", "By+my+Axe", "By+my%20Axe", "%42y%20my%20%41xe"] {
        let r = get(api.addr(), &format!("/api/v1/translate?phrase={q}"), &[]);
        assert_eq!((r.status, r.body.as_str()), (200, expected), "{q}");
    }
    // Other parameters around it do not matter; the first `phrase` counts.
    let r = get(api.addr(), "/api/v1/translate?x=1&phrase=Lol&phrase=Hey", &[]);
    assert_eq!(r.body, r#"{"phrase":"Lol","translation":"Kek","errors":[]}"#);
}

#[test]
fn missing_or_empty_phrase_is_400() {
    let api = start(|_| {});
    let expected = r#"{"phrase":null,"translation":null,"errors":["Missing phrase parameter"]}"#;
    for path in [
        "/api/v1/translate",
        "/api/v1/translate?",
        "/api/v1/translate?phrase=",
        "/api/v1/translate?phrase",
        "/api/v1/translate?other=Lol",
    ] {
        let r = get(api.addr(), path, &[]);
        assert_eq!((r.status, r.body.as_str()), (400, expected), "{path}");
        assert_eq!(r.headers["content-type"], "application/json");
    }
}

#[test]
fn unknown_phrase_is_404_with_the_phrase_echoed() {
    let api = start(|_| {});
    let r = get(api.addr(), "/api/v1/translate?phrase=lol", &[]);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        r#"{"phrase":"lol","translation":null,"errors":["Translation not available"]}"#
    );
    // Decoded, then escaped as JSON.
    let r = get(
        api.addr(),
        "/api/v1/translate?phrase=say+%22hi%22%5C%0A%C3%A9",
        &[],
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        r.body,
        r#"{"phrase":"say \"hi\"\\\né","translation":null,"errors":["Translation not available"]}"#
    );
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["phrase"], "say \"hi\"\\\né");
}

#[test]
fn other_paths_are_404_json() {
    let api = start(|_| {});
    for path in [
        "/",
        "/nope",
        "/version/",
        "/api/v1/translate/Lol",
        "/api/v2/translate?phrase=Lol",
    ] {
        let r = get(api.addr(), path, &[]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (404, r#"{"errors":["Not found"]}"#),
            "{path}"
        );
        assert_eq!(r.headers["content-type"], "application/json");
    }
}

#[test]
fn wrong_method_is_405_json_with_allow() {
    let api = start(|_| {});
    for (method, path) in [
        ("POST", "/version"),
        ("DELETE", "/api/v1/translate?phrase=Lol"),
        ("PUT", "/healthz"),
        ("POST", "/readyz"),
    ] {
        let r = request(api.addr(), method, path, &[("Content-Length", "0")]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (405, r#"{"errors":["Method not allowed"]}"#),
            "{method} {path}"
        );
        assert_eq!(r.headers["allow"], "GET, HEAD");
        assert_eq!(r.headers["content-type"], "application/json");
    }
}

#[test]
fn head_answers_without_a_body() {
    let api = start(|_| {});
    let r = request(api.addr(), "HEAD", "/version", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "");
    assert_eq!(r.headers["content-length"], "31");
}

#[test]
fn health_and_readiness() {
    let api = start(|_| {});
    let r = get(api.addr(), "/healthz", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
    let r = get(api.addr(), "/readyz", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ready"}"#));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let api = start(|_| {});
    let mut s = TcpStream::connect(api.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let expected = r#"{"phrase":"Hey","translation":"Es","errors":[]}"#;
    for _ in 0..3 {
        s.write_all(b"GET /api/v1/translate?phrase=Hey HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&buf).ends_with(expected) {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}

#[test]
fn several_workers_share_the_port() {
    let api = start(|c| c.workers = 3);
    for _ in 0..30 {
        assert_eq!(get(api.addr(), "/version", &[]).status, 200);
    }
}

#[test]
fn http_1_0_and_garbage() {
    let api = start(|_| {});
    let r = raw(api.addr(), b"GET /api/v1/translate?phrase=Okay HTTP/1.0\r\n\r\n");
    assert_eq!(r.body, r#"{"phrase":"Okay","translation":"Zug Zug","errors":[]}"#);
    let r = raw(api.addr(), b"NOT HTTP\r\n\r\n");
    assert_eq!(r.status, 400);
}

/// The router without a socket (what `app(state)` is for).
#[test]
fn app_without_a_socket() {
    use http_body_util::BodyExt;
    use hyper::service::Service;
    use translation_api::{app, default_trusted_proxies, AppState};

    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let state = AppState::new("7.7.7", default_trusted_proxies());
        let svc = hyper_util::service::TowerToHyperService::new(app(state.clone()));
        let call = |uri: &str| {
            let req = http::Request::get(uri)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            svc.call(req)
        };
        let res = call("/version").await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"version":"7.7.7","errors":[]}"#);

        let res = call("/api/v1/translate?phrase=Well%20Met").await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"phrase":"Well Met","translation":"Throm-Ka","errors":[]}"#
        );

        state.set_ready(false);
        let res = call("/readyz").await.unwrap();
        assert_eq!(res.status(), 503);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"status":"shutting down"}"#);
    });
}
