//! `--scenario bad-release`: green fails a share of its requests; after the
//! switch the proxy switches back by itself.
//!
//! Blue (`0.0.1`) runs as usual; green (`0.0.2`) runs with
//! `--fail-ratio` (`--fail-ratio R`, default 0.2: exactly one translate
//! request in five answers 500). The proxy's upstreams file has blue active
//! and `[rollback]` (`window = "30s"`, `max_error_rate = 0.05`,
//! `min_requests = 100`). The load asks `/api/v1/translate?phrase=Lol`
//! (translate answers carry no version: the pool the proxy names in
//! `X-Switchyard-Pool` stands for it, so blue's answers count as `0.0.1`
//! and green's as `0.0.2` in the plot and the report). Under load:
//!
//! 1. `POST /switch {"to":"green"}` (acknowledged 200);
//! 2. the proxy sees green's 500s and rolls back by itself: `/status` shows
//!    `active = "blue"`, `source = "auto"` and `override_reason`.
//!
//! Reported: the time from the switch's acknowledgement to `/status`
//! showing the rollback (read every 2 ms), the client-visible errors (green's
//! 500s) and the bound they must stay under:
//!
//! ```text
//! errors ≤ fail_ratio × (min_requests + q × cadence + in_flight)
//! ```
//!
//! `q` is green's answer rate measured from the switch's `POST` (the
//! window opens when it is stored, before the ack) to the rollback seen
//! (not the load's rate before the switch: green's differs, faster or
//! slower), the cadence the writer's 100 ms, `in_flight` the connections
//! (one request each): the last evaluation that did not roll back saw fewer
//! than `min_requests` answers of green (with `fail_ratio` above
//! `max_error_rate` the rate is past it from the first failure on), at most
//! `q × cadence` more were answered before the next one rolled back, and at most one request per connection was already on
//! its way to green when the table was stored. Green's failures are evenly
//! spaced (`floor(n × R)` of its first n requests), so its errors are at
//! most `R` times its requests.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    all_passed, fmt_ms, format_total, format_verdict, ms_between, poll_status, rate_words, start_load,
    stop_load, wait_active, Check, Finished, Green, Pacer, Scenario, Settings, World, BLUE, GREEN,
    POLL_EVERY,
};
use crate::admin::AdminClient;
use crate::plot::{Mark, MarkKind};
use loadgen::clock::Clock;
use loadgen::report::totals;
use loadgen::sample::Sample;

/// `[rollback]` of the scenario's upstreams file (blue active, green beside it).
pub const ROLLBACK: &str = "[rollback]\nwindow = \"30s\"\nmax_error_rate = 0.05\nmin_requests = 100\n";
/// `[rollback] min_requests` above.
pub const MIN_REQUESTS: u64 = 100;
/// `[rollback] max_error_rate` above.
pub const MAX_ERROR_RATE: f64 = 0.05;
/// The writer's evaluation cadence (`EVALUATE_EVERY` in the proxy's writer).
pub const CADENCE: Duration = Duration::from_millis(100);
/// What the load asks for.
pub const PATH: &str = "/api/v1/translate?phrase=Lol";
/// The default `--fail-ratio` of green.
pub const DEFAULT_FAIL_RATIO: f64 = 0.2;

/// How long the rollback may take to show before the scenario gives up on it.
const WAIT_AT_MOST: Duration = Duration::from_secs(20);

/// The admin switch to green.
#[derive(Debug, Clone, Serialize)]
pub struct Switched {
    pub status: Option<u16>,
    pub ack_ms: Option<f64>,
    pub generation: Option<u64>,
    pub error: Option<String>,
}

/// The automatic rollback as `/status` showed it.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    /// From the switch's acknowledgement to the `/status` answer showing it.
    pub ack_to_rollback_ms: Option<f64>,
    /// The uncertainty: from the last poll that did not show it to the one that did.
    pub poll_resolution_ms: Option<f64>,
    pub active: Option<String>,
    pub source: Option<String>,
    pub override_reason: Option<String>,
    pub generation: Option<u64>,
    /// `switchyard_switches_total{source="auto"}` read from `/metrics` after it.
    pub switches_total_auto: Option<f64>,
    /// The data path's view, from the ack: the last request sent that green
    /// answered, and the first request sent after the ack that blue answered.
    pub last_green_sent_ms: Option<f64>,
    pub first_blue_sent_ms: Option<f64>,
    pub error: Option<String>,
}

/// The client-visible errors and their bound.
#[derive(Debug, Clone, Serialize)]
pub struct Errors {
    /// Green's 500s (the injected failures) the clients got.
    pub green_500: u64,
    /// Requests green answered (any status).
    pub green_requests: u64,
    /// Every other failure (must be 0): transport errors, other statuses, blue's errors.
    pub other_failures: u64,
    pub fail_ratio: f64,
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub cadence_ms: f64,
    /// Green's answers per second from the switch's `POST` to the rollback seen (`q`).
    pub green_rate: Option<f64>,
    /// The load's answers per second in the half phase before the switch (on blue), for comparison.
    pub rate_before: Option<f64>,
    pub in_flight: u64,
    /// `fail_ratio × (min_requests + green_rate × cadence + in_flight)`.
    pub bound: Option<f64>,
    pub within_bound: bool,
}

/// The scenario's report (`bad_release` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rollback_config: &'static str,
    pub path: &'static str,
    pub switch: Switched,
    pub rollback: RolledBack,
    pub errors: Errors,
    /// Requests sent after `/status` showed the rollback and answered by green (must be 0).
    pub green_after_rollback: u64,
    pub checks: Vec<Check>,
}

/// The moments of the run.
#[derive(Debug, Default)]
struct Times {
    issued_ns: u64,
    ack_ns: Option<u64>,
    status: Option<u16>,
    answer: Value,
    switch_error: Option<String>,
    seen_ns: Option<u64>,
    not_seen_ns: Option<u64>,
    rolled: Option<Value>,
    auto_total: Option<f64>,
    rollback_error: Option<String>,
}

/// Runs the scenario (see the module's doc).
pub async fn run(
    s: &Settings,
    fail_ratio: f64,
    clock: Clock,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<Finished> {
    anyhow::ensure!(
        fail_ratio > MAX_ERROR_RATE && fail_ratio <= 1.0,
        "--fail-ratio must be above the max_error_rate of {MAX_ERROR_RATE} (and at most 1) for a bad release"
    );
    let world = World::start(s, Scenario::BadRelease, Green::Up { fail_ratio }, ROLLBACK)?;
    let admin = world.admin(clock)?;
    let pacer = Pacer::new(clock, bar);
    wait_active(&admin, "blue").await?;
    let load = start_load(
        s.load_config(&world.url(PATH), s.concurrency, s.rate)?,
        clock,
        &pacer.count,
    )?;
    let outcome = drive(s, &admin, &pacer, clock).await;
    let mut samples = stop_load(load);
    let end_ns = clock.now_ns();
    world.stop();
    let t = outcome?;
    // Translate answers carry no version: the answering pool stands for it.
    for x in &mut samples {
        if x.version.is_none() && x.status == 200 {
            x.version = match x.pool.as_deref() {
                Some("blue") => Some(Arc::from(BLUE)),
                Some("green") => Some(Arc::from(GREEN)),
                _ => None,
            };
        }
    }
    Ok(finish(s, fail_ratio, t, samples, end_ns))
}

async fn drive(s: &Settings, admin: &AdminClient, pacer: &Pacer<'_>, clock: Clock) -> anyhow::Result<Times> {
    let half = s.half_ns();
    pacer.warm_up(s, "blue, before the switch").await;
    let mut t = Times {
        issued_ns: clock.now_ns(),
        ..Times::default()
    };
    pacer.say("switch to green");
    match admin
        .request(Method::POST, "/switch", Some(json!({ "to": "green" })))
        .await
    {
        Ok(a) => {
            t.issued_ns = a.issued_ns;
            t.ack_ns = Some(a.ack_ns);
            t.status = Some(a.status);
            if a.status != 200 {
                t.switch_error = Some(format!("POST /switch answered {}: {}", a.status, a.body));
            }
            t.answer = a.body;
        }
        Err(e) => t.switch_error = Some(format!("{e:#}")),
    }
    if t.switch_error.is_none() {
        pacer.say("green: waiting for the automatic rollback");
        match poll_status(admin, POLL_EVERY, WAIT_AT_MOST, "the automatic rollback", |st| {
            st["source"] == "auto" && st["active"] == "blue"
        })
        .await
        {
            Ok(p) => {
                t.seen_ns = Some(p.seen_ns);
                t.not_seen_ns = p.not_seen_ns;
                t.rolled = Some(p.status);
            }
            Err(e) => t.rollback_error = Some(format!("{e:#}")),
        }
        if let Ok(m) = admin.request(Method::GET, "/metrics", None).await {
            t.auto_total = m.body.as_str().and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("switchyard_switches_total{") && l.contains("source=\"auto\""))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse().ok())
            });
        }
    }
    pacer
        .sleep_until(clock.now_ns() + half, "blue, after the rollback")
        .await;
    Ok(t)
}

fn finish(s: &Settings, fail_ratio: f64, t: Times, samples: Vec<Sample>, end_ns: u64) -> Finished {
    let ack = t.ack_ns.unwrap_or(t.issued_ns);
    let seen = t.seen_ns.unwrap_or(end_ns);
    let is_green = |x: &Sample| x.pool.as_deref() == Some("green");
    let green_500 = samples.iter().filter(|x| is_green(x) && x.status == 500).count() as u64;
    let green_requests = samples.iter().filter(|x| is_green(x)).count() as u64;
    let other_failures = samples
        .iter()
        .filter(|x| !(x.ok() || (is_green(x) && x.status == 500)))
        .count() as u64;
    let green_done = samples
        .iter()
        .filter(|x| is_green(x) && x.done_ns > t.issued_ns && x.done_ns <= seen)
        .count();
    // From the POST written: the window opens when the switch is stored, before the ack.
    let window_s = ms_between(t.issued_ns, seen) / 1e3;
    let green_rate = (t.seen_ns.is_some() && window_s > 0.0).then(|| green_done as f64 / window_s);
    // The load's rate before the switch (half a phase, all on blue), for comparison.
    let half = s.half_ns();
    let before = samples
        .iter()
        .filter(|x| x.done_ns < t.issued_ns && x.done_ns + half >= t.issued_ns)
        .count() as f64;
    let rate_before = (half > 0).then(|| before / (half as f64 / 1e9));
    let in_flight = s.concurrency as u64;
    // `q`: green's answers per second from the ack to the rollback seen.
    // On time (the first evaluation past min_requests) the bound holds by
    // construction; a rollback an evaluation late adds q × cadence requests
    // that the bound does not allow for, and fails it.
    let bound =
        green_rate.map(|q| fail_ratio * (MIN_REQUESTS as f64 + q * CADENCE.as_secs_f64() + in_flight as f64));
    let within_bound = bound.is_some_and(|b| green_500 as f64 <= b);
    let last_green_sent = samples.iter().filter(|x| is_green(x)).map(|x| x.sent_ns).max();
    let first_blue_sent = samples
        .iter()
        .filter(|x| x.sent_ns > ack && x.pool.as_deref() == Some("blue"))
        .map(|x| x.sent_ns)
        .min();
    let green_after_rollback = t.seen_ns.map_or(0, |sn| {
        samples.iter().filter(|x| x.sent_ns > sn && is_green(x)).count() as u64
    });
    let rolled = t.rolled.clone().unwrap_or(Value::Null);
    let rollback = RolledBack {
        ack_to_rollback_ms: t.seen_ns.map(|sn| ms_between(ack, sn)),
        poll_resolution_ms: t.seen_ns.zip(t.not_seen_ns).map(|(sn, n)| ms_between(n, sn)),
        active: rolled["active"].as_str().map(str::to_string),
        source: rolled["source"].as_str().map(str::to_string),
        override_reason: rolled["override_reason"].as_str().map(str::to_string),
        generation: rolled["generation"].as_u64(),
        switches_total_auto: t.auto_total,
        last_green_sent_ms: last_green_sent.map(|g| ms_between(ack, g)),
        first_blue_sent_ms: first_blue_sent.map(|b| ms_between(ack, b)),
        error: t.rollback_error.clone(),
    };
    let switch = Switched {
        status: t.status,
        ack_ms: t.ack_ns.map(|a| ms_between(t.issued_ns, a)),
        generation: t.answer["generation"].as_u64(),
        error: t.switch_error.clone(),
    };
    let errors = Errors {
        green_500,
        green_requests,
        other_failures,
        fail_ratio,
        min_requests: MIN_REQUESTS,
        max_error_rate: MAX_ERROR_RATE,
        cadence_ms: CADENCE.as_secs_f64() * 1e3,
        green_rate,
        rate_before,
        in_flight,
        bound,
        within_bound,
    };
    let total = totals(&samples);

    let mut checks = Vec::new();
    checks.push(Check::new(
        "the admin switch to green is acknowledged (200)",
        switch.status == Some(200),
        match &switch.error {
            Some(e) => e.clone(),
            None => format!("200 in {}", fmt_ms(switch.ack_ms)),
        },
    ));
    checks.push(Check::new(
        "the proxy rolls back by itself: /status active blue, source auto, override_reason given",
        rollback.active.as_deref() == Some("blue")
            && rollback.source.as_deref() == Some("auto")
            && rollback
                .override_reason
                .as_deref()
                .is_some_and(|r| r.starts_with("automatic rollback")),
        match &rollback.error {
            Some(e) => e.clone(),
            None => format!(
                "{} after the ack (poll resolution {}): {}",
                fmt_ms(rollback.ack_to_rollback_ms),
                fmt_ms(rollback.poll_resolution_ms),
                rollback.override_reason.as_deref().unwrap_or("(no reason)")
            ),
        },
    ));
    checks.push(Check::new(
        "switches_total{source=\"auto\"} counts it",
        rollback.switches_total_auto == Some(1.0),
        format!(
            "switchyard_switches_total{{source=\"auto\"}} {}",
            rollback
                .switches_total_auto
                .map_or("not found".to_string(), |v| v.to_string())
        ),
    ));
    checks.push(Check::new(
        "the clients' errors (green's 500s) stay within fail_ratio × (min_requests + q × cadence + in_flight)",
        green_500 > 0 && within_bound,
        format!(
            "{green_500} errors in {green_requests} green answers; bound {fail_ratio} × ({MIN_REQUESTS} + {} /s × {} s + {in_flight}) = {}",
            green_rate.map_or("-".to_string(), |q| format!("{q:.0}")),
            CADENCE.as_secs_f64(),
            bound.map_or("-".to_string(), |b| format!("{b:.1}"))
        ),
    ));
    checks.push(Check::new(
        "no failure other than green's 500s",
        other_failures == 0 && total.requests > 0,
        format!("{} requests, {other_failures} other failures", total.requests),
    ));
    checks.push(Check::new(
        "no request sent after /status showed the rollback is answered by green",
        t.seen_ns.is_some() && green_after_rollback == 0,
        format!("{green_after_rollback} answered by green"),
    ));
    let passed = all_passed(&checks);

    let report = Report {
        rollback_config: ROLLBACK,
        path: PATH,
        switch,
        rollback,
        errors,
        green_after_rollback,
        checks: checks.clone(),
    };
    let mut text = String::new();
    text.push_str(&format!(
        "green runs with --fail-ratio {fail_ratio}; load GET {PATH}; {}",
        ROLLBACK.replace('\n', " ").trim_end()
    ));
    text.push_str("\n\n");
    text.push_str(&format!(
        "admin switch    POST /switch {{\"to\":\"green\"}} -> {} (answered in {}, generation {})\n",
        report.switch.status.map_or("-".into(), |c| c.to_string()),
        fmt_ms(report.switch.ack_ms),
        report.switch.generation.map_or("-".into(), |g| g.to_string())
    ));
    text.push_str(&format!(
        "rollback        /status active {}, source {}, {} after the ack (poll resolution {}); last request answered by green sent at +{}, first blue after the ack sent at +{}\n",
        report.rollback.active.as_deref().unwrap_or("-"),
        report.rollback.source.as_deref().unwrap_or("-"),
        fmt_ms(report.rollback.ack_to_rollback_ms),
        fmt_ms(report.rollback.poll_resolution_ms),
        fmt_ms(report.rollback.last_green_sent_ms),
        fmt_ms(report.rollback.first_blue_sent_ms),
    ));
    text.push_str(&format!(
        "                override_reason: {}\n",
        report.rollback.override_reason.as_deref().unwrap_or("-")
    ));
    text.push_str(&format!(
        "errors          {} green 500s of {} green answers ({} other failures); bound {} × (min_requests {} + q {} × {} ms + {} in flight) = {} (q: green's answers from the POST to the rollback seen; the load before the switch: {})\n",
        report.errors.green_500,
        report.errors.green_requests,
        report.errors.other_failures,
        fail_ratio,
        MIN_REQUESTS,
        green_rate.map_or("-".to_string(), |q| format!("{q:.0}/s")),
        CADENCE.as_millis(),
        in_flight,
        bound.map_or("-".to_string(), |b| format!("{b:.1}")),
        rate_before.map_or("-".to_string(), |q| format!("{q:.0}/s"))
    ));
    text.push_str(&format_total(&total, " (green's 500s)"));
    text.push_str(&format_verdict(
        &checks,
        "the proxy rolled back by itself, the clients saw only green's 500s, within the bound",
    ));
    let mut marks = vec![Mark {
        at_ns: t.issued_ns,
        label: "switch to green".into(),
        kind: MarkKind::Switch,
    }];
    if let Some(sn) = t.seen_ns {
        marks.push(Mark {
            at_ns: sn,
            label: "automatic rollback seen".into(),
            kind: MarkKind::Switch,
        });
    }
    let json = json!({
        "bad_release": report,
        "total": total,
    });
    Finished {
        passed,
        text,
        json,
        samples,
        marks,
        title: format!(
            "switchyard bad release (green fails {} %): answers per 10 ms by pool ({} connections, {})",
            fail_ratio * 100.0,
            s.concurrency,
            rate_words(s.rate)
        ),
    }
}
