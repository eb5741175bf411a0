//! The entry functions of the fuzz targets (the `fuzz/` crate, run by
//! `cargo xtask test --long`), one per parser of operator input. Each takes
//! the fuzzer's bytes, runs them through the real parser, and panics when an
//! invariant breaks; a panic is what the fuzzer reports as a crash. The
//! regression test (`fuzzing/tests.rs`) replays every file under
//! `fuzz/regressions/<target>/` and `fuzz/seeds/<target>/` through the same
//! functions in the normal `cargo test`.
//!
//! Compiled only with the `fuzzing` feature (off by default; it brings
//! `arbitrary`) and in this crate's own unit tests.
//!
//! - [`upstreams`]: bytes → parse + validate an upstreams file → build the table;
//! - [`decide`]: bytes → a script of control-plane events driven through
//!   [`control::decide()`](crate::control::decide()) as the writer does;
//! - [`admin`]: `/switch?…` or `/rollback?…`, a newline, a body → [`parse_switch`];
//! - [`proxy_toml`]: bytes → `proxy.toml` parse + checks.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arbitrary::{Arbitrary, Unstructured};

use crate::admin::{parse_switch, BadSwitchRequest, SwitchRequest};
use crate::config::{ConfigError, Settings};
use crate::control::decide::{Reply, Store, Written};
use crate::control::writer::set_route;
use crate::control::{
    content_hash, decide as decide_fn, ControlState, Decision, Event, FileRead, ReloadOutcome, SwitchError,
};
use crate::metrics::Metrics;
use crate::table::{ControlFacts, Desired, Resolved, RoutingTable, Source, Spec};

/// No DNS name resolved: the fuzzers run without a resolver (a pool named
/// by DNS, or an endpoint that is a name, has no address).
static UNRESOLVED: std::sync::LazyLock<Resolved> = std::sync::LazyLock::new(Resolved::new);

/// The path the parsers are told they read (errors must name it).
const UPSTREAMS: &str = "fuzz/upstreams.toml";
/// Likewise for `proxy.toml`.
const PROXY: &str = "fuzz/proxy.toml";
/// Most events one `decide` input drives (keeps one run short).
const MAX_STEPS: usize = 64;

/// Every error names the file, and a line it names is a line of the text.
fn check_errors(path: &str, text: &[u8], errors: &[ConfigError]) {
    assert!(!errors.is_empty(), "a refusal lists at least one error");
    let lines = text.iter().filter(|b| **b == b'\n').count() + 1;
    for e in errors {
        let message = e.to_string();
        assert!(message.starts_with(path), "the error names the file: {message:?}");
        assert!(
            message.len() > path.len() + 2,
            "the error says what is wrong: {message:?}"
        );
        if let ConfigError::Invalid { line: Some(line), .. } = e {
            assert!((1..=lines).contains(line), "line {line} of {lines}: {message:?}");
        }
    }
}

/// What parsing `text` (the file `path`) gave: the value, or `None` once
/// the refusal's errors are checked ([`check_errors`]).
fn accepted<T>(path: &str, text: &[u8], parsed: Result<T, Vec<ConfigError>>) -> Option<T> {
    match parsed {
        Ok(value) => Some(value),
        Err(errors) => {
            check_errors(path, text, &errors);
            None
        }
    }
}

/// A TOML basic string holding `s`.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key for `s`: bare when it may be.
fn key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        s.to_string()
    } else {
        quote(s)
    }
}

/// An upstreams file's text for `active` and `pools`.
fn render(active: &str, pools: &[(String, Vec<String>)], comment: bool) -> String {
    let mut out = String::new();
    if comment {
        out.push_str("# written by the fuzzer\n");
    }
    let _ = writeln!(out, "active = {}", quote(active));
    for (name, endpoints) in pools {
        let eps: Vec<String> = endpoints.iter().map(|e| quote(e)).collect();
        let _ = write!(out, "\n[pools.{}]\nendpoints = [{}]\n", key(name), eps.join(", "));
    }
    out
}

/// The table `spec` describes must route as the spec says, and building it
/// again from itself must reuse every pool.
fn check_table(spec: &Spec<'_>, old: Option<&RoutingTable>, metrics: &Metrics) -> RoutingTable {
    let table = RoutingTable::build(spec, old, metrics);
    assert_eq!(
        table.active_pool().name,
        spec.active,
        "the active pool is the spec's"
    );
    assert_eq!(table.generation, spec.generation);
    assert_eq!(
        table.generation_header.to_str().ok(),
        Some(spec.generation.to_string().as_str())
    );
    assert_eq!(table.facts, spec.facts);
    assert_eq!(table.pools.len(), spec.file.pools.len());
    for (pool, (name, def)) in table.pools.iter().zip(&spec.file.pools) {
        assert_eq!(&pool.name, name, "pools keep the file's order");
        // Without a resolver, only the file's `ip:port` endpoints have an address.
        let literal: Vec<String> = match &def.dns {
            Some(_) => Vec::new(),
            None => def
                .endpoints
                .iter()
                .filter_map(|e| e.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.to_string())
                .collect(),
        };
        assert!(
            pool.endpoint_names().eq(literal.iter().map(String::as_str)),
            "pool {name} has the file's addresses in order"
        );
    }
    let again = RoutingTable::build(spec, Some(&table), metrics);
    for (a, b) in table.pools.iter().zip(&again.pools) {
        assert!(Arc::ptr_eq(a, b), "an unchanged pool is reused");
    }
    table
}

/// Target `upstreams`: arbitrary bytes as an upstreams file. Never panics;
/// a refusal names the file (and real lines); an accepted file names only
/// valid pools and endpoints, renders back to itself, and builds a table
/// that routes to its `active`. Returns whether the file was accepted.
pub fn upstreams(data: &[u8]) -> bool {
    let path = Path::new(UPSTREAMS);
    let Some(desired) = accepted(UPSTREAMS, data, Desired::parse(path, data)) else {
        return false;
    };
    assert!(desired.has_pool(&desired.active), "active names a pool");
    let mut names = std::collections::HashSet::new();
    for (name, def) in &desired.pools {
        assert!(names.insert(name.as_str()), "pool {name} is defined once");
        assert!(
            def.dns.is_some() == def.endpoints.is_empty(),
            "pool {name} has endpoints or a dns name"
        );
        for ep in &def.endpoints {
            assert!(
                crate::table::check_endpoint(ep).is_ok(),
                "endpoint {ep:?} is valid"
            );
        }
    }
    // What was accepted, written out again, is accepted as the same route
    // and pools (the renderer writes fixed endpoints only).
    if desired.pools.iter().all(|(_, d)| d.dns.is_none()) {
        let pools: Vec<(String, Vec<String>)> = desired
            .pools
            .iter()
            .map(|(n, d)| (n.clone(), d.endpoints.clone()))
            .collect();
        let text = render(&desired.active, &pools, false);
        match Desired::parse(path, text.as_bytes()) {
            Ok(again) => assert_eq!(
                (&again.active, &again.pools),
                (&desired.active, &desired.pools),
                "round trip through {text:?}"
            ),
            Err(e) => panic!("the accepted file, rendered as {text:?}, is refused: {e:?}"),
        }
    }
    let metrics = Metrics::new();
    let spec = Spec {
        file: &desired,
        active: &desired.active,
        split: &[],
        generation: 1,
        source: Source::File,
        switched_at: SystemTime::UNIX_EPOCH,
        facts: ControlFacts::default(),
        pending_since: None,
        resolved: &UNRESOLVED,
    };
    let table = check_table(&spec, None, &metrics);
    table.publish(None, &metrics);
    let rendered = String::from_utf8(metrics.render()).unwrap_or_default();
    let line = format!("switchyard_active_pool{{pool=\"{}\"}} 1", desired.active);
    assert!(rendered.contains(&line), "{line} in {rendered}");
    true
}

/// Target `proxy_toml`: arbitrary text as `proxy.toml`. Never panics; a
/// refusal names the file; accepted settings keep the checked rules.
/// Returns whether the file was accepted.
pub fn proxy_toml(data: &[u8]) -> bool {
    // `Settings::load` refuses a file that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let path = Path::new(PROXY);
    let Some(settings) = accepted(PROXY, data, Settings::parse(path, text)) else {
        return false;
    };
    let f = &settings.file;
    let reread = ("reread", f.upstreams.reread);
    for (name, value) in f.timeouts.positive().into_iter().chain([reread]) {
        assert!(!value.is_zero(), "{name} is not zero");
    }
    assert!(
        f.tls.is_none() && f.listen.https.is_none(),
        "later keys are refused"
    );
    let l = &f.limits;
    assert!(
        l.max_connections > 0
            && (crate::config::MIN_HEADER_BYTES..=crate::config::MAX_HEADER_BYTES)
                .contains(&l.max_header_bytes)
            && (1..=crate::config::MAX_HEADERS_LIMIT).contains(&l.max_headers)
            && l.upstream_max_connections > 0,
        "limits are in their ranges"
    );
    assert!(
        f.admin.listen != f.listen.http || f.listen.http.port() == 0,
        "admin and data listeners differ"
    );
    assert_eq!(settings.upstreams_path, Path::new("fuzz").join(&f.upstreams.file));
    if let Some(refusal) = f.admin.refusal() {
        assert!(refusal.contains("allow_unauthenticated"), "{refusal}");
    }
    true
}

/// Target `admin`: `<path>[?<query>]`, a newline, then the body, as
/// `POST <path>` would bring them (`/rollback` is a rollback, anything else
/// a switch). Never panics; a request it reads back is the request a
/// plain JSON body of the same fields asks; a refusal fits the endpoint.
/// Returns whether the request was accepted.
pub fn admin(data: &[u8]) -> bool {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let (path, query) = match head.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (&*head, None),
    };
    let rollback = path == "/rollback";
    let blank = body.iter().all(u8::is_ascii_whitespace);
    match parse_switch(rollback, query, body) {
        Ok(asked) => {
            let json = match &asked {
                SwitchRequest::Switch {
                    to,
                    if_generation,
                    force,
                    weight,
                    wait_drained,
                } => {
                    assert!(!rollback, "/rollback never reads as a switch");
                    assert!(weight.is_none_or(|w| w <= 100), "a weight is a share");
                    let mut j = serde_json::json!({"to": to, "if_generation": if_generation, "force": force});
                    if let Some(w) = weight {
                        j["weight"] = (*w).into();
                    }
                    wait_json(&mut j, *wait_drained);
                    j
                }
                SwitchRequest::Rollback {
                    if_generation,
                    force,
                    wait_drained,
                } => {
                    assert!(rollback, "/switch never reads as a rollback");
                    let mut j = serde_json::json!({"if_generation": if_generation, "force": force});
                    wait_json(&mut j, *wait_drained);
                    j
                }
            };
            let again = parse_switch(rollback, None, json.to_string().as_bytes());
            match again {
                Ok(again) => assert_eq!(again, asked, "round trip through {json}"),
                Err(e) => panic!("{asked:?} as the body {json} is refused: {e}"),
            }
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            match e {
                BadSwitchRequest::Json(_) | BadSwitchRequest::ForceDiffers => {
                    assert!(!blank, "a blank body is no JSON error")
                }
                BadSwitchRequest::ForceValue(_) => assert!(query.is_some()),
                BadSwitchRequest::RollbackTo => assert!(rollback),
                BadSwitchRequest::ToDiffers | BadSwitchRequest::MissingTo => assert!(!rollback),
                BadSwitchRequest::WaitValue(_)
                | BadSwitchRequest::TimeoutWithoutWait
                | BadSwitchRequest::TimeoutValue(_)
                | BadSwitchRequest::WeightValue(_) => assert!(!blank, "only a body asks to wait or split"),
                BadSwitchRequest::RollbackWeight => assert!(rollback && !blank),
            }
            false
        }
    }
}

/// Adds `wait` and `timeout` (as humantime writes it) to a request's JSON.
fn wait_json(j: &mut serde_json::Value, wait_drained: Option<std::time::Duration>) {
    if let Some(d) = wait_drained {
        j["wait"] = "drained".into();
        j["timeout"] = humantime::format_duration(d).to_string().into();
        assert!(
            d > std::time::Duration::ZERO && d <= crate::admin::MAX_DRAIN_WAIT,
            "{d:?} is out of range"
        );
    }
}

/// A pool name a script uses: the usual ones, or anything.
#[derive(Debug, Arbitrary)]
enum Name {
    Blue,
    Green,
    Canary,
    Other(String),
}

impl Name {
    fn get(&self) -> &str {
        match self {
            Name::Blue => "blue",
            Name::Green => "green",
            Name::Canary => "canary",
            Name::Other(s) => s,
        }
    }
}

/// An endpoint a script uses.
#[derive(Debug, Arbitrary)]
enum Ep {
    A,
    B,
    V6,
    Dns,
    Other(String),
}

impl Ep {
    fn get(&self) -> &str {
        match self {
            Ep::A => "127.0.0.1:8081",
            Ep::B => "127.0.0.1:8082",
            Ep::V6 => "[::1]:8083",
            Ep::Dns => "api.default.svc.cluster.local:8080",
            Ep::Other(s) => s,
        }
    }
}

/// Generated pools as [`render`] takes them: each name and its endpoints.
fn named(pools: &[(Name, Vec<Ep>)]) -> Vec<(String, Vec<String>)> {
    pools
        .iter()
        .map(|(n, eps)| {
            (
                n.get().to_string(),
                eps.iter().map(|e| e.get().to_string()).collect(),
            )
        })
        .collect()
}

/// What a read of the upstreams file finds.
#[derive(Debug, Arbitrary)]
enum FileSpec {
    /// A generated file (valid or not: names and endpoints may be anything).
    Pools {
        active: Name,
        pools: Vec<(Name, Vec<Ep>)>,
        comment: bool,
    },
    /// A generated file with `[split] weights` (and `[rollback]` when
    /// `rollback`): valid or not (the weights may not add up).
    Split {
        active: Name,
        pools: Vec<(Name, Vec<Ep>)>,
        weights: Vec<(Name, u8)>,
        rollback: bool,
    },
    /// The accepted content again (same bytes).
    Accepted,
    /// The accepted content with a comment added (same pools, other bytes).
    AcceptedCommented,
    /// Any bytes.
    Raw(Vec<u8>),
}

impl FileSpec {
    fn bytes(&self, state: Option<&ControlState>) -> Vec<u8> {
        let accepted = state.map(|s| s.file_text.to_string()).unwrap_or_default();
        match self {
            FileSpec::Pools {
                active,
                pools,
                comment,
            } => render(active.get(), &named(pools), *comment).into_bytes(),
            FileSpec::Split {
                active,
                pools,
                weights,
                rollback,
            } => {
                let mut text = render(active.get(), &named(pools), false);
                let weights: Vec<String> = weights
                    .iter()
                    .map(|(n, w)| format!("{:?} = {w}", n.get()))
                    .collect();
                text.push_str(&format!("[split]\nweights = {{ {} }}\n", weights.join(", ")));
                if *rollback {
                    text.push_str("[rollback]\nwindow = \"1s\"\nmax_error_rate = 0.1\nmin_requests = 10\n");
                }
                text.into_bytes()
            }
            FileSpec::Accepted => accepted.into_bytes(),
            FileSpec::AcceptedCommented => format!("{accepted}\n# a comment\n").into_bytes(),
            FileSpec::Raw(b) => b.clone(),
        }
    }
}

/// An `if_generation` a script sends.
#[derive(Debug, Arbitrary)]
enum Generation {
    None,
    Current,
    Near(i8),
    Any(u64),
}

impl Generation {
    fn get(&self, current: u64) -> Option<u64> {
        match self {
            Generation::None => None,
            Generation::Current => Some(current),
            Generation::Near(d) => Some(current.saturating_add_signed(i64::from(*d))),
            Generation::Any(g) => Some(*g),
        }
    }
}

/// One input of the control plane.
#[derive(Debug, Arbitrary)]
enum Step {
    /// The file was read.
    Read(FileSpec),
    /// The file could not be read.
    Unreadable,
    /// `POST /switch`; `persist_fails`: if it is persisted, the write fails.
    Switch {
        to: Name,
        if_generation: Generation,
        force: bool,
        weight: Option<u8>,
        persist_fails: bool,
    },
    /// `POST /rollback`.
    Rollback {
        if_generation: Generation,
        force: bool,
        persist_fails: bool,
    },
    /// The automatic rollback's counts of the open window (or of an older one).
    Outcomes { stale: bool, requests: u16, errors: u16 },
    /// The open window's time is up.
    WindowOver,
}

/// A `decide` input: the start, then the events.
#[derive(Debug, Arbitrary)]
struct Script {
    persist: bool,
    start: FileSpec,
    steps: Vec<Step>,
}

/// What the writer makes of file bytes (`Writer::reload`).
fn file_read(bytes: &[u8]) -> FileRead {
    FileRead::Read {
        hash: content_hash(bytes),
        text: String::from_utf8_lossy(bytes).into(),
        parsed: Desired::parse(Path::new(UPSTREAMS), bytes).map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }),
    }
}

/// The invariants of every decision, whatever the event.
fn check_decision(state: &ControlState, event: &Event, d: &Decision) {
    let next = &d.next;
    assert!(
        next.file.has_pool(&next.route.active),
        "the route names a defined pool: {:?} in {:?}",
        next.route,
        next.file.pools
    );
    assert!(
        next.file.has_pool(&next.file.active),
        "the file's active is one of its pools"
    );
    assert!(
        next.generation == state.generation || next.generation == state.generation + 1,
        "the generation moves by 0 or 1: {} → {}",
        state.generation,
        next.generation
    );
    match d.store {
        Store::Table => assert_ne!(next.generation, state.generation),
        Store::Facts => assert!(next.generation == state.generation && next.facts() != state.facts()),
        Store::Nothing => assert!(next.generation == state.generation && next.facts() == state.facts()),
    }
    if next.route != state.route {
        assert_eq!(d.store, Store::Table, "a new route is a new table");
    }
    if next.window.is_some() && next.window != state.window {
        assert!(
            next.route != state.route && !matches!(event, Event::Rollback { .. }),
            "a window opens only with a forward switch"
        );
    }
    for pool in next.route.pools() {
        assert!(
            next.file.has_pool(pool),
            "every pool of the route is defined: {pool}"
        );
    }
    if next.route.is_split() {
        let sum: u32 = next.route.split.iter().map(|(_, w)| u32::from(*w)).sum();
        assert_eq!(sum, 100, "a split's weights add up to 100: {:?}", next.route);
    }
    if let Some(route) = &d.persist {
        assert!(state.persist, "persist only when [admin] persist is on");
        assert_eq!(route, &next.route, "persist writes the new route");
    }
    match (event, &d.reply) {
        (Event::FileRead(_), Reply::Reload(outcome)) => {
            assert!(d.persist.is_none(), "a file read is never persisted");
            match outcome {
                ReloadOutcome::Rejected(error) => {
                    let mut expected = state.clone();
                    expected.last_reload_error = Some(error.clone());
                    assert_eq!(
                        next, &expected,
                        "a rejected file changes nothing but the error shown"
                    );
                }
                ReloadOutcome::Unchanged => {
                    assert_eq!((next.generation, &next.route), (state.generation, &state.route));
                    assert_eq!(next.last_reload_error, None);
                }
                ReloadOutcome::Applied { generation } => {
                    assert_eq!(*generation, next.generation);
                    assert_eq!(next.last_reload_error, None);
                }
                ReloadOutcome::Pending { generation, reason } => {
                    assert_eq!(*generation, next.generation);
                    assert!(next.pending.is_some(), "a pending reload leaves a pending switch");
                    assert!(!reason.is_empty());
                }
            }
        }
        (Event::Switch { .. } | Event::Rollback { .. }, Reply::Switch(result)) => {
            let if_generation = match event {
                Event::Switch { if_generation, .. } | Event::Rollback { if_generation, .. } => *if_generation,
                _ => None,
            };
            if matches!(event, Event::Rollback { .. }) && state.previous.is_none() {
                assert_eq!(
                    result,
                    &Err(SwitchError::NothingToRollBack),
                    "a rollback with nothing to return to is refused"
                );
            }
            match result {
                Err(e) => {
                    assert_eq!(next, state, "a refused switch changes nothing: {e}");
                    let nothing_to_roll_back =
                        matches!(event, Event::Rollback { .. }) && state.previous.is_none();
                    let stale = if_generation.is_some_and(|g| g != state.generation) && !nothing_to_roll_back;
                    if !matches!(e, SwitchError::NotReady(_)) {
                        assert_eq!(matches!(e, SwitchError::Conflict { .. }), stale, "{e}");
                    }
                    assert!(!matches!(e, SwitchError::Unavailable));
                }
                Ok(o) => {
                    assert!(if_generation.is_none_or(|g| g == state.generation));
                    assert_eq!(o.generation, next.generation);
                    assert_eq!(o.active, next.route.active);
                    if let Event::Switch {
                        to,
                        weight: None | Some(100),
                        ..
                    } = event
                    {
                        assert_eq!(&o.active, to, "a switch goes where it was asked");
                    }
                    if let Event::Switch {
                        to, weight: Some(w), ..
                    } = event
                    {
                        assert_eq!(next.route.weight(to), *w, "a split gives `to` its weight");
                    }
                    if o.changed {
                        assert_eq!(o.previous, state.route.active);
                        assert!(next.overridden.is_some(), "a switch is an override");
                        if matches!(event, Event::Rollback { .. }) {
                            assert_eq!(Some(&next.route), state.previous.as_ref());
                            assert_eq!(next.previous, None, "a rollback consumes previous");
                        }
                    } else {
                        assert_eq!(next, state, "a switch to the active pool changes nothing");
                    }
                }
            }
        }
        (Event::Readiness(_), Reply::Nothing) => {
            if next.route != state.route {
                assert_eq!(
                    Some(&next.route),
                    state.pending.as_ref(),
                    "readiness only applies the pending switch"
                );
            }
        }
        (Event::Outcomes { generation, .. }, Reply::Nothing) => {
            if next.route != state.route {
                assert_eq!(
                    state.window.as_ref().map(|w| w.generation),
                    Some(*generation),
                    "only the open window rolls back"
                );
                assert_eq!(Some(&next.route), state.previous.as_ref(), "back to previous");
                assert_eq!(
                    (next.source, &next.previous, &next.window),
                    (Source::Auto, &None, &None)
                );
                assert!(next.overridden.as_ref().is_some_and(|o| o.reason.is_some()));
            }
        }
        (Event::WindowOver { .. }, Reply::Nothing) => {
            assert_eq!((&next.route, next.generation), (&state.route, state.generation));
        }
        (Event::Persisted { .. }, Reply::Nothing) => {
            assert_eq!((next.generation, &next.route), (state.generation, &state.route));
        }
        (event, reply) => panic!("{event:?} answered with {reply:?}"),
    }
}

/// Target `decide`: a script of file reads (generated valid and invalid
/// files, the accepted one again, any bytes), unreadable files, switches
/// and rollbacks with any `if_generation`, and persist results, driven
/// through `decide` from a start state as the writer drives it, building
/// each new table. Never panics; the route always names a defined pool;
/// the generation never decreases; a rejected file changes nothing; a
/// refused switch changes nothing; a rollback with no previous is refused;
/// a persisted file reads back as the state's file.
pub fn decide(data: &[u8]) {
    let Ok(script) = Script::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let start = script.start.bytes(None);
    let (file, text) = match Desired::parse(Path::new(UPSTREAMS), &start) {
        Ok(file) => (file, String::from_utf8_lossy(&start).into_owned()),
        Err(_) => {
            let text = "active = \"blue\"\n[pools.blue]\nendpoints = [\"127.0.0.1:8081\"]\n\
                        [pools.green]\nendpoints = [\"127.0.0.1:8082\"]\n";
            let file = Desired::parse(Path::new(UPSTREAMS), text.as_bytes())
                .expect("the built-in start file is valid");
            (file, text.to_string())
        }
    };
    let state = ControlState::start(file, content_hash(text.as_bytes()), text.into(), script.persist);
    // One registry per thread: a new one per input would cost more than the
    // script (the series of the valid names the fuzzer finds stay, which is fine).
    thread_local!(static METRICS: Metrics = Metrics::new());
    METRICS.with(|metrics| run(state, &script.steps, metrics));
}

/// Drives `steps` from `state`, checking every decision.
fn run(mut state: ControlState, steps: &[Step], metrics: &Metrics) {
    let mut table = check_table(&spec(&state), None, metrics);
    for step in steps.iter().take(MAX_STEPS) {
        let (event, persist_fails) = match step {
            Step::Read(f) => (Event::FileRead(file_read(&f.bytes(Some(&state)))), false),
            Step::Unreadable => (
                Event::FileRead(FileRead::Unreadable(format!("{UPSTREAMS}: cannot read: gone"))),
                false,
            ),
            Step::Switch {
                to,
                if_generation,
                force,
                weight,
                persist_fails,
            } => (
                Event::Switch {
                    to: to.get().to_string(),
                    if_generation: if_generation.get(state.generation),
                    force: *force,
                    weight: *weight,
                },
                *persist_fails,
            ),
            Step::Rollback {
                if_generation,
                force,
                persist_fails,
            } => (
                Event::Rollback {
                    if_generation: if_generation.get(state.generation),
                    force: *force,
                },
                *persist_fails,
            ),
            Step::Outcomes {
                stale,
                requests,
                errors,
            } => {
                let open = state.window.as_ref().map_or(0, |w| w.generation);
                (
                    Event::Outcomes {
                        generation: if *stale { open.wrapping_sub(1) } else { open },
                        requests: u64::from(*requests),
                        errors: u64::from((*errors).min(*requests)),
                    },
                    false,
                )
            }
            Step::WindowOver => (
                Event::WindowOver {
                    generation: state.window.as_ref().map_or(0, |w| w.generation),
                },
                false,
            ),
        };
        let d = decide_fn(&state, event.clone());
        check_decision(&state, &event, &d);
        let persist = d.persist.clone();
        state = apply(d, &mut table, metrics);
        // As the writer does: persist, then decide on the result at once.
        if let Some(route) = persist {
            let result = if persist_fails {
                Err(format!(
                    "{UPSTREAMS}: the file changed since it was last accepted"
                ))
            } else {
                match set_route(&state.file_text, &route) {
                    Ok(out) => Ok(Written {
                        hash: content_hash(out.as_bytes()),
                        text: out.into(),
                    }),
                    Err(e) => panic!("the accepted file {:?} cannot be edited: {e}", state.file_text),
                }
            };
            let event = Event::Persisted { route, result };
            let d = decide_fn(&state, event.clone());
            check_decision(&state, &event, &d);
            if let Event::Persisted { result: Ok(w), .. } = &event {
                assert_eq!(d.next.overridden, None, "a persisted switch is no override");
                match Desired::parse(Path::new(UPSTREAMS), w.text.as_bytes()) {
                    Ok(file) => assert_eq!(file, d.next.file, "the written file is the state's"),
                    Err(e) => panic!("the persisted file {:?} is refused: {e:?}", w.text),
                }
            }
            state = apply(d, &mut table, metrics);
        }
        // As the writer does after every command: readiness from the
        // stored table, decided when it changed (a pending switch may apply).
        for _ in 0..4 {
            let ready = table.readiness(&state.file);
            if ready == state.ready {
                break;
            }
            let event = Event::Readiness(ready);
            let d = decide_fn(&state, event.clone());
            check_decision(&state, &event, &d);
            state = apply(d, &mut table, metrics);
        }
    }
}

/// Takes a decision's next state, building its table when it asks for one
/// (as the writer's `carry_out`).
fn apply(d: Decision, table: &mut RoutingTable, metrics: &Metrics) -> ControlState {
    match d.store {
        Store::Nothing => {}
        Store::Facts => *table = table.with_facts(d.next.facts(), None),
        Store::Table => *table = check_table(&spec(&d.next), Some(table), metrics),
    }
    assert_eq!(
        table.active_pool().name,
        d.next.route.active,
        "the table routes as the state"
    );
    assert_eq!(table.generation, d.next.generation);
    assert_eq!(table.facts, d.next.facts());
    d.next
}

/// What the writer builds the table of `s` from.
fn spec(s: &ControlState) -> Spec<'_> {
    Spec {
        file: &s.file,
        active: &s.route.active,
        split: &s.route.split,
        generation: s.generation,
        source: s.source,
        switched_at: SystemTime::UNIX_EPOCH,
        facts: s.facts(),
        pending_since: None,
        resolved: &UNRESOLVED,
    }
}

#[cfg(test)]
mod tests;
