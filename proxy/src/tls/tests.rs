#![allow(clippy::unwrap_used)]
use super::*;

fn pair(names: &[&str], not_after: (i32, u8, u8)) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn files(dir: &Path, name: &str) -> CertFiles {
    CertFiles {
        name: name.into(),
        names: Vec::new(),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

#[test]
fn a_good_pair_is_checked_with_its_names_and_expiry() {
    let (cert, key) = pair(&["api.example.com", "www.example.com"], (2999, 1, 1));
    let f = files(Path::new("/x"), "default");
    let p = check_pair(
        &f,
        cert.as_bytes(),
        key.as_bytes(),
        SystemTime::now(),
        &provider(),
    )
    .unwrap();
    assert_eq!(p.names, ["api.example.com", "www.example.com"]);
    assert_eq!(rfc3339(p.not_after), "2999-01-01T00:00:00Z");
}

#[test]
fn bad_pairs_are_rejected_with_the_reason() {
    let f = files(Path::new("/x"), "default");
    let now = SystemTime::now();
    let (cert, key) = pair(&["a.example"], (2999, 1, 1));
    let (_, other_key) = pair(&["a.example"], (2999, 1, 1));
    let e = check_pair(&f, cert.as_bytes(), other_key.as_bytes(), now, &provider()).unwrap_err();
    assert!(e.reason.contains("does not match"), "{e}");
    assert_eq!(e.file, f.key);
    let e = check_pair(&f, b"garbage", key.as_bytes(), now, &provider()).unwrap_err();
    assert!(e.reason.contains("no PEM certificate"), "{e}");
    assert_eq!(e.file, f.cert);
    let e = check_pair(&f, cert.as_bytes(), b"garbage", now, &provider()).unwrap_err();
    assert!(e.reason.contains("no PEM private key"), "{e}");
    let (old, old_key) = pair(&["a.example"], (2001, 1, 1));
    let e = check_pair(&f, old.as_bytes(), old_key.as_bytes(), now, &provider()).unwrap_err();
    assert!(e.reason.contains("expired at 2001-01-01"), "{e}");
}

#[test]
fn a_reload_swaps_a_good_pair_and_keeps_the_old_one_for_a_bad_pair() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path(), "default");
    let (cert, key) = pair(&["one.example"], (2999, 1, 1));
    std::fs::write(&f.cert, &cert).unwrap();
    std::fs::write(&f.key, &key).unwrap();
    let tls = Tls::load(std::slice::from_ref(&f)).unwrap();
    let metrics = Metrics::new();
    assert_eq!(
        tls.reload(&metrics),
        (0, 0),
        "unchanged files are not read as new"
    );
    let (cert2, key2) = pair(&["two.example"], (2999, 1, 1));
    std::fs::write(&f.cert, &cert2).unwrap();
    std::fs::write(&f.key, &key2).unwrap();
    assert_eq!(tls.reload(&metrics), (1, 0));
    assert_eq!(tls.status()[0].names, ["two.example"]);
    std::fs::write(&f.key, &key).unwrap();
    assert_eq!(tls.reload(&metrics), (0, 1));
    assert_eq!(tls.reload(&metrics), (0, 0), "the same bad pair is judged once");
    let s = &tls.status()[0];
    assert_eq!(s.names, ["two.example"], "the old pair still serves");
    assert!(
        s.last_error.as_deref().unwrap().contains("does not match"),
        "{s:?}"
    );
    std::fs::write(&f.key, &key2).unwrap();
    assert_eq!(tls.reload(&metrics), (1, 0));
    assert_eq!(tls.status()[0].last_error, None);
}

#[test]
fn server_names_choose_the_sni_entry_or_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for (name, names) in [
        ("default", vec![]),
        ("api.example.com", vec!["api.example.com", "*.apps.example.com"]),
    ] {
        let mut f = files(dir.path(), name);
        f.names = names.iter().map(|n| n.to_string()).collect();
        let (cert, key) = pair(&[name], (2999, 1, 1));
        std::fs::write(&f.cert, cert).unwrap();
        std::fs::write(&f.key, key).unwrap();
        all.push(f);
    }
    let tls = Tls::load(&all).unwrap();
    let served = tls.resolver.0.load();
    let default = Arc::as_ptr(&served.default);
    let api = Arc::as_ptr(served.choose(Some("api.example.com")));
    assert_ne!(default, api);
    assert_eq!(Arc::as_ptr(served.choose(Some("x.apps.example.com"))), api);
    assert_eq!(
        Arc::as_ptr(served.choose(Some("a.b.apps.example.com"))),
        default,
        "a wildcard covers one label"
    );
    assert_eq!(Arc::as_ptr(served.choose(Some("other.example.com"))), default);
    assert_eq!(Arc::as_ptr(served.choose(None)), default);
}
