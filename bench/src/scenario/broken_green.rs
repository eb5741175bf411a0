//! `--scenario broken-green`: a switch asked while green is not running.
//!
//! Blue (`0.0.1`) runs; green (`0.0.2`) does not: its address is taken by
//! starting it once and stopping it before the proxy starts, so its port
//! refuses connections. The proxy's upstreams file has `[health]` (active
//! checks of `/readyz`), so readiness is real. Under load through the proxy:
//!
//! 1. `POST /switch {"to":"green"}` must be refused with 409 and the gate's
//!    reason, and change nothing;
//! 2. `active = "green"` written to the upstreams file (temp file + rename)
//!    must become `/status.pending` while blue keeps serving;
//! 3. green is started on its address; the proxy's checks see it pass, and
//!    the pending switch must apply by itself (`source = "file"`).
//!
//! Reported: the 409 and its reason, the pending entry, the times from green
//! starting to its first `/readyz` answer, to `/status` showing it ready, to
//! the switch applied and to the first green answer the load saw; PASS only
//! if every criterion holds (see [`run`]).

use std::time::Duration;

use anyhow::Context;
use http::Method;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    all_passed, fmt_ms, format_verdict, ms_between, poll_status, rate_words, start_load, stop_load, Check,
    Finished, Green, Pacer, Scenario, Settings, World, BLUE, GREEN, POLL_EVERY,
};
use crate::admin::AdminClient;
use crate::plot::{Mark, MarkKind};
use crate::table::format_report;
use crate::upstreams::set_active_by_rename;
use loadgen::clock::Clock;
use loadgen::report::{cutover_report, totals, Switch};
use loadgen::sample::Sample;

/// `[health]` of the scenario's upstreams file (blue and green with one endpoint each, blue active).
pub const HEALTH: &str = "[health]\npath = \"/readyz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nhealthy_after = 2\nunhealthy_after = 2\n";

/// How long a state may take to show before the scenario gives up on it.
const WAIT_AT_MOST: Duration = Duration::from_secs(15);

/// The admin switch that must be refused.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// The HTTP status of `POST /switch` (409 expected).
    pub status: Option<u16>,
    /// The reason in its body (`errors[0]`).
    pub reason: Option<String>,
    /// From writing the `POST` to its answer received.
    pub ack_ms: Option<f64>,
    /// `/status.active` right after it.
    pub active_after: Option<String>,
    /// Why it could not be asked at all, if it could not.
    pub error: Option<String>,
}

/// The file switch that must wait.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    /// `/status.pending.active` once seen.
    pub active: Option<String>,
    /// `/status.pending.reason`.
    pub reason: Option<String>,
    /// `/status.active` while it was pending.
    pub serving: Option<String>,
    /// From the rename to the `/status` answer that showed it pending.
    pub seen_ms: Option<f64>,
    /// How long it stayed pending: from the rename to the first green answer.
    pub pending_ms: Option<f64>,
    pub error: Option<String>,
}

/// From green starting to each thing seen, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct GreenUp {
    /// Green's `/readyz` answered 200 (asked directly, every 2 ms).
    pub readyz_ms: Option<f64>,
    /// `/status` showed green `ready` (the proxy's checks passed `healthy_after` times).
    pub status_ready_ms: Option<f64>,
    /// `/status` showed `active = green`, `source = file`, no pending.
    pub applied_ms: Option<f64>,
    /// The first answer of green seen by the load.
    pub first_green_ms: Option<f64>,
    /// From green's `/readyz` answering to the first green answer.
    pub readyz_to_first_green_ms: Option<f64>,
    /// From `/status` showing green ready to the first green answer
    /// (negative when the load saw green before the poll did; the polls
    /// are 2 ms apart plus their own time: `status_poll_resolution_ms`).
    pub status_ready_to_first_green_ms: Option<f64>,
    /// The uncertainty of `status_ready_ms`: from the last poll that did not
    /// show green ready to the one that did.
    pub status_poll_resolution_ms: Option<f64>,
    pub error: Option<String>,
}

/// The scenario's report (`broken_green` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub health: &'static str,
    pub admin_switch: Refused,
    pub file_switch: Pending,
    pub green: GreenUp,
    /// Requests answered before green was started, and how many of them failed
    /// or were not answered by blue.
    pub before_green: Counts,
    /// Requests sent after the first green answer and answered by blue (must be 0).
    pub stale_after_first_green: u64,
    pub checks: Vec<Check>,
}

/// Counts of a part of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub failed: u64,
    pub not_blue: u64,
}

/// Runs the scenario. PASS criteria, each a [`Check`]:
/// 1. the admin switch to green is answered 409 with a reason naming green, and blue stays active;
/// 2. the file switch to green shows in `/status.pending` (naming green) while blue stays active;
/// 3. every request answered before green was started was answered by blue, none failed;
/// 4. after green starts, `/status` shows green active by the file (`source = "file"`, no pending);
/// 5. the load sees green answer, and no request sent after its first green answer is answered by blue;
/// 6. no request of the whole run (warm-up included) failed.
pub async fn run(s: &Settings, clock: Clock, bar: Option<&ProgressBar>) -> anyhow::Result<Finished> {
    let mut world = World::start(s, Scenario::BrokenGreen, Green::Down, HEALTH)?;
    let admin = world.admin(clock)?;
    let pacer = Pacer::new(clock, bar);
    pacer.say("waiting for the first health checks");
    // The checks have run: blue healthy, green failed (its port refuses).
    poll_status(
        &admin,
        Duration::from_millis(20),
        WAIT_AT_MOST,
        "the first health checks",
        |st| {
            let health = |pool: &str| {
                st["pools"][pool]["endpoints"][0]["health"]
                    .as_str()
                    .map(str::to_string)
            };
            health("blue").as_deref() == Some("healthy") && health("green").as_deref() == Some("unhealthy")
        },
    )
    .await?;

    let load = start_load(
        s.load_config(&world.url("/version"), s.concurrency, s.rate)?,
        clock,
        &pacer.count,
    )?;
    let outcome = drive(s, &mut world, &admin, &pacer, clock).await;
    let samples = stop_load(load);
    let end_ns = clock.now_ns();
    world.stop();
    let times = outcome?;
    Ok(finish(s, times, samples, end_ns))
}

/// The moments of the run, on the clock.
#[derive(Debug, Default)]
struct Times {
    start_ns: u64,
    refused: Option<Refused>,
    admin_issued_ns: u64,
    rename_ns: Option<u64>,
    pending: Option<Pending>,
    pending_seen_ns: Option<u64>,
    green_started_ns: Option<u64>,
    readyz_ns: Option<u64>,
    status_ready: Option<(u64, Option<u64>)>,
    applied_ns: Option<u64>,
    applied: Option<Value>,
    green_error: Option<String>,
}

/// The scenario's steps under load. Errors of one step are recorded and
/// fail its check; only what makes going on pointless returns early.
async fn drive(
    s: &Settings,
    world: &mut World,
    admin: &AdminClient,
    pacer: &Pacer<'_>,
    clock: Clock,
) -> anyhow::Result<Times> {
    let half = s.half_ns();
    let mut t = Times {
        start_ns: pacer.warm_up(s, "blue, before the switch").await,
        ..Times::default()
    };

    // 1. The admin switch: refused.
    t.admin_issued_ns = clock.now_ns();
    let body = json!({ "to": "green" });
    t.refused = Some(match admin.request(Method::POST, "/switch", Some(body)).await {
        Ok(a) => {
            t.admin_issued_ns = a.issued_ns;
            let reason = a.body["errors"][0]
                .as_str()
                .map(str::to_string)
                .or_else(|| a.body["error"].as_str().map(str::to_string));
            let active_after = admin
                .status()
                .await
                .ok()
                .and_then(|st| st["active"].as_str().map(str::to_string));
            Refused {
                status: Some(a.status),
                reason,
                ack_ms: Some(ms_between(a.issued_ns, a.ack_ns)),
                active_after,
                error: None,
            }
        }
        Err(e) => Refused {
            status: None,
            reason: None,
            ack_ms: None,
            active_after: None,
            error: Some(format!("{e:#}")),
        },
    });
    pacer
        .sleep_until(clock.now_ns() + half / 2, "blue, after the refused switch")
        .await;

    // 2. The file switch: pending.
    let rename_ns = set_active_by_rename(&world.upstreams_file(), "green", || clock.now_ns())
        .context("writing active = \"green\" to the upstreams file")?;
    t.rename_ns = Some(rename_ns);
    pacer.say("file switch: waiting for pending");
    match poll_status(admin, POLL_EVERY, WAIT_AT_MOST, "the file switch pending", |st| {
        st["pending"]["active"].is_string()
    })
    .await
    {
        Ok(p) => {
            t.pending_seen_ns = Some(p.seen_ns);
            t.pending = Some(Pending {
                active: p.status["pending"]["active"].as_str().map(str::to_string),
                reason: p.status["pending"]["reason"].as_str().map(str::to_string),
                serving: p.status["active"].as_str().map(str::to_string),
                seen_ms: Some(ms_between(rename_ns, p.seen_ns)),
                pending_ms: None,
                error: None,
            });
        }
        Err(e) => {
            t.pending = Some(Pending {
                active: None,
                reason: None,
                serving: None,
                seen_ms: None,
                pending_ms: None,
                error: Some(format!("{e:#}")),
            });
        }
    }
    pacer
        .sleep_until(clock.now_ns() + half, "blue, the file switch pending")
        .await;

    // 3. Green starts on its address; the pending switch must apply by itself.
    pacer.say("green started: waiting for the switch");
    let started = clock.now_ns();
    t.green_started_ns = Some(started);
    if let Err(e) = world.start_green(s.api_workers) {
        t.green_error = Some(format!("{e:#}"));
        return Ok(t);
    }
    let green_api = AdminClient::new(&format!("http://{}", world.green_addr()), None, clock)?;
    let readyz = async {
        let deadline = tokio::time::Instant::now() + WAIT_AT_MOST;
        loop {
            if let Ok(a) = green_api.request(Method::GET, "/readyz", None).await {
                if a.status == 200 {
                    return Some(a.ack_ns);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    };
    let status = async {
        let ready = poll_status(admin, POLL_EVERY, WAIT_AT_MOST, "green ready", |st| {
            st["pools"]["green"]["ready"] == true
        })
        .await?;
        let applied = poll_status(
            admin,
            POLL_EVERY,
            WAIT_AT_MOST,
            "the pending switch applied",
            |st| st["active"] == "green" && st["pending"].is_null(),
        )
        .await?;
        anyhow::Ok((ready, applied))
    };
    let (readyz, status) = tokio::join!(readyz, status);
    t.readyz_ns = readyz;
    match status {
        Ok((ready, applied)) => {
            t.status_ready = Some((ready.seen_ns, ready.not_seen_ns));
            t.applied_ns = Some(applied.seen_ns);
            t.applied = Some(applied.status);
        }
        Err(e) => t.green_error = Some(format!("{e:#}")),
    }
    pacer.sleep_until(clock.now_ns() + half, "green").await;
    Ok(t)
}

/// Turns the moments and the samples into the report and its verdict.
fn finish(s: &Settings, t: Times, samples: Vec<Sample>, end_ns: u64) -> Finished {
    let green_started = t.green_started_ns.unwrap_or(end_ns);
    let first_green = samples
        .iter()
        .filter(|x| x.ok_version() == Some(GREEN))
        .map(|x| x.done_ns)
        .min();
    let before: Vec<&Sample> = samples.iter().filter(|x| x.done_ns < green_started).collect();
    let before_green = Counts {
        requests: before.len() as u64,
        failed: before.iter().filter(|x| !x.ok()).count() as u64,
        not_blue: before.iter().filter(|x| x.ok_version() != Some(BLUE)).count() as u64,
    };
    let stale = first_green.map_or(0, |f| {
        samples
            .iter()
            .filter(|x| x.sent_ns > f && x.ok_version() == Some(BLUE))
            .count() as u64
    });
    let total = totals(&samples);
    let since_start = |at: Option<u64>| at.zip(t.green_started_ns).map(|(a, g)| ms_between(g, a));
    let green = GreenUp {
        readyz_ms: since_start(t.readyz_ns),
        status_ready_ms: since_start(t.status_ready.map(|r| r.0)),
        applied_ms: since_start(t.applied_ns),
        first_green_ms: since_start(first_green),
        readyz_to_first_green_ms: t.readyz_ns.zip(first_green).map(|(r, f)| ms_between(r, f)),
        status_ready_to_first_green_ms: t
            .status_ready
            .zip(first_green)
            .map(|((r, _), f)| ms_between(r, f)),
        status_poll_resolution_ms: t
            .status_ready
            .and_then(|(seen, not)| not.map(|n| ms_between(n, seen))),
        error: t.green_error.clone(),
    };
    let mut pending = t.pending.clone().unwrap_or(Pending {
        active: None,
        reason: None,
        serving: None,
        seen_ms: None,
        pending_ms: None,
        error: Some("the file switch was not made".into()),
    });
    pending.pending_ms = t.rename_ns.zip(first_green).map(|(r, f)| ms_between(r, f));
    let refused = t.refused.clone().unwrap_or(Refused {
        status: None,
        reason: None,
        ack_ms: None,
        active_after: None,
        error: Some("the admin switch was not made".into()),
    });

    let mut checks = Vec::new();
    checks.push(Check::new(
        "the admin switch to green is refused with 409 and the gate's reason, blue stays active",
        refused.status == Some(409)
            && refused.reason.as_deref().is_some_and(|r| r.starts_with("green"))
            && refused.active_after.as_deref() == Some("blue"),
        match &refused.error {
            Some(e) => e.clone(),
            None => format!(
                "{} {}; active after: {}",
                refused.status.map_or("-".into(), |c| c.to_string()),
                refused.reason.as_deref().unwrap_or("(no reason)"),
                refused.active_after.as_deref().unwrap_or("?")
            ),
        },
    ));
    checks.push(Check::new(
        "the file switch to green is pending (/status.pending) while blue serves",
        pending.active.as_deref() == Some("green") && pending.serving.as_deref() == Some("blue"),
        match &pending.error {
            Some(e) => e.clone(),
            None => format!(
                "pending {} ({}), serving {}, seen {} after the rename",
                pending.active.as_deref().unwrap_or("?"),
                pending.reason.as_deref().unwrap_or("no reason"),
                pending.serving.as_deref().unwrap_or("?"),
                fmt_ms(pending.seen_ms)
            ),
        },
    ));
    checks.push(Check::new(
        "before green started: 0 failed, every answer from blue",
        before_green.requests > 0 && before_green.failed == 0 && before_green.not_blue == 0,
        format!(
            "{} requests, {} failed, {} not blue",
            before_green.requests, before_green.failed, before_green.not_blue
        ),
    ));
    let applied_source = t
        .applied
        .as_ref()
        .and_then(|st| st["source"].as_str().map(str::to_string));
    checks.push(Check::new(
        "green started: the pending switch applied by itself (active green, source file, nothing pending)",
        t.applied_ns.is_some() && applied_source.as_deref() == Some("file"),
        match (&t.green_error, t.applied_ns) {
            (Some(e), _) => e.clone(),
            (None, Some(_)) => format!(
                "applied {} after green started (source {})",
                fmt_ms(green.applied_ms),
                applied_source.as_deref().unwrap_or("?")
            ),
            (None, None) => "not applied".into(),
        },
    ));
    checks.push(Check::new(
        "the load sees green, and no request sent after the first green answer is answered by blue",
        first_green.is_some() && stale == 0,
        format!(
            "first green answer {} after green started; {stale} stale",
            fmt_ms(green.first_green_ms)
        ),
    ));
    checks.push(Check::no_failed(&total));
    let passed = all_passed(&checks);

    // The switch that happened, as a cut-over row: issued when green started.
    let cutover = cutover_report(
        &samples,
        &Switch {
            name: "pending file switch".into(),
            source: "file".into(),
            how: "green started".into(),
            issued_ns: green_started,
            ack_ns: None,
            phase: t.rename_ns.unwrap_or(t.start_ns)..end_ns,
            generation: t.applied.as_ref().and_then(|st| st["generation"].as_u64()),
            expected: Some(GREEN.into()),
            error: t.green_error.clone(),
        },
    );

    let report = Report {
        health: HEALTH,
        admin_switch: refused,
        file_switch: pending,
        green,
        before_green,
        stale_after_first_green: stale,
        checks: checks.clone(),
    };
    let mut text = String::new();
    text.push_str(&format!(
        "admin switch    POST /switch {{\"to\":\"green\"}} -> {} {} (answered in {})\n",
        report.admin_switch.status.map_or("-".into(), |c| c.to_string()),
        report.admin_switch.reason.as_deref().unwrap_or("-"),
        fmt_ms(report.admin_switch.ack_ms)
    ));
    text.push_str(&format!(
        "file switch     active = \"green\" by rename -> pending {} ({}), seen in /status {} after the rename; pending for {}\n",
        report.file_switch.active.as_deref().unwrap_or("-"),
        report.file_switch.reason.as_deref().unwrap_or("-"),
        fmt_ms(report.file_switch.seen_ms),
        fmt_ms(report.file_switch.pending_ms)
    ));
    text.push_str(&format!(
        "green started   /readyz answered +{}, /status ready +{} (poll resolution {}), switch applied +{}, first green answer +{}\n",
        fmt_ms(report.green.readyz_ms),
        fmt_ms(report.green.status_ready_ms),
        fmt_ms(report.green.status_poll_resolution_ms),
        fmt_ms(report.green.applied_ms),
        fmt_ms(report.green.first_green_ms)
    ));
    text.push_str(&format!(
        "green ready -> first green answer: {} from /readyz answering, {} from /status showing ready\n\n",
        fmt_ms(report.green.readyz_to_first_green_ms),
        fmt_ms(report.green.status_ready_to_first_green_ms)
    ));
    text.push_str(&format_report(std::slice::from_ref(&cutover), &total));
    text.push('\n');
    text.push_str(&format_verdict(
        &checks,
        "refused while green was down, pending by the file, 0 failed on blue, applied by itself once green was ready",
    ));

    let mut marks = vec![Mark {
        at_ns: t.admin_issued_ns,
        label: "admin switch: 409".into(),
        kind: MarkKind::Switch,
    }];
    if let Some(r) = t.rename_ns {
        marks.push(Mark {
            at_ns: r,
            label: "file switch: pending".into(),
            kind: MarkKind::Switch,
        });
    }
    if let Some(g) = t.green_started_ns {
        marks.push(Mark {
            at_ns: g,
            label: "green started".into(),
            kind: MarkKind::RunStart,
        });
    }
    let json = json!({
        "broken_green": report,
        "cutovers": [cutover],
        "total": total,
    });
    Finished {
        passed,
        text,
        json,
        samples,
        marks,
        title: format!(
            "switchyard, green down: answers per 10 ms by version ({} connections, {})",
            s.concurrency,
            rate_words(s.rate)
        ),
    }
}
