//! The one helper of translation-api's tests that needs the crate itself:
//! the service in-process. Everything else comes from `testkit`. (The
//! proxy's tests include this file too, for their real upstreams.)
#![allow(dead_code, clippy::unwrap_used)]

use translation_api::{spawn, Config, Running};

/// The service in-process on `127.0.0.1:0` with one worker, version
/// `0.0.1`, and `tweak` applied.
pub fn start(tweak: impl FnOnce(&mut Config)) -> Running {
    let mut c = Config::new("127.0.0.1:0".parse().unwrap(), "0.0.1");
    c.workers = 1;
    tweak(&mut c);
    spawn(c).expect("translation-api starts")
}
