//! `--scenario canary`: a split 10 → 50 → 100 under load, users kept on
//! the version they first got.
//!
//! Blue (`0.0.1`) and green (`0.0.2`) run; the proxy's upstreams file has
//! `active = "blue"` and `[split] sticky_cookie = "switchyard-pool"`. Two
//! kinds of clients load `/version` through the proxy at once:
//!
//! - clients **without a cookie** (`--concurrency` connections): each of
//!   their requests draws a pool, so green's share of their answers is
//!   measured per step and must be the step's weight within ±2 points;
//! - clients **with a cookie** (`--cookie-clients` connections, loadgen's
//!   one-cookie jar): each keeps the `switchyard-pool` cookie the proxy set
//!   on its first answer under the split and sends it back, so it must
//!   never change pool while its pool has weight.
//!
//! The steps, each an admin call: `POST /switch {"to":"green","weight":10}`,
//! then `{"to":"green","weight":50}`, then `{"to":"green"}` (the split
//! ends, all to green). A weighted step lasts at least `--duration` and
//! until the clients without a cookie have `--step-requests` answers
//! (default 10,000) to requests sent after its acknowledgement: at 10,000 a
//! binomial share's standard deviation is at most 0.5 points (at 50 %), so
//! ±2 points is 4 standard deviations (a correct proxy misses it about
//! once in 16,000 steps). With fewer, the tolerance widens to 4 standard
//! deviations at the count reached, and the report says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use indicatif::ProgressBar;
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    all_passed, format_total, format_verdict, ms_between, rate_words, start_load, stop_load, wait_active,
    Check, Finished, Green, Pacer, Scenario, Settings, World, BLUE, GREEN,
};
use crate::admin::AdminClient;
use crate::plot::{Mark, MarkKind};
use crate::table::{format_table, num};
use loadgen::clock::Clock;
use loadgen::report::totals;
use loadgen::sample::Sample;
use loadgen::stats::latency_of;

/// The sticky cookie's name (`[split] sticky_cookie`).
pub const COOKIE: &str = "switchyard-pool";
/// ±2 points: the brief's tolerance for a step's share.
pub const TOLERANCE_POINTS: f64 = 2.0;
/// A step's share may be this many standard deviations off when fewer
/// requests than the default make ±2 points too tight to be sound.
pub const SIGMAS: f64 = 4.0;
/// The default `--step-requests`: ±2 points is 4 σ at 50 %.
pub const DEFAULT_STEP_REQUESTS: u64 = 10_000;

/// How long a state (or a step's requests) may take before the scenario gives up.
const WAIT_AT_MOST: Duration = Duration::from_secs(300);

/// `[split]` of the scenario's upstreams file (blue and green, blue active): the sticky cookie named.
pub fn split_toml() -> String {
    format!("[split]\nsticky_cookie = \"{COOKIE}\"\n")
}

/// One step of the canary: green's weight (100: `{"to":"green"}`, the split ends).
#[derive(Debug, Clone, Copy)]
struct Plan {
    weight: u8,
}

const PLAN: [Plan; 3] = [Plan { weight: 10 }, Plan { weight: 50 }, Plan { weight: 100 }];

/// One step as reported (`canary.steps[]` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Green's weight asked for (100: `{"to":"green"}`).
    pub weight: u8,
    /// The `POST /switch` body sent.
    pub request: Value,
    /// Its HTTP status and the `split` / `active` of its answer.
    pub status: Option<u16>,
    pub split: Value,
    pub active: Option<String>,
    /// From writing the `POST` to its answer received.
    pub ack_ms: Option<f64>,
    /// From the acknowledgement to the next step's `POST` (or the end).
    pub held_ms: Option<f64>,
    /// Clients without a cookie, requests sent after the acknowledgement
    /// and answered before the next step's `POST`: answered, by green, by
    /// blue, failed.
    pub requests: u64,
    pub green: u64,
    pub blue: u64,
    pub failed: u64,
    /// Green's share of their answers, in points (0-100).
    pub green_share: Option<f64>,
    /// `green_share - weight`.
    pub deviation: Option<f64>,
    /// The binomial standard deviation of the share at this count and weight, in points.
    pub sigma: Option<f64>,
    /// The tolerance applied: 2 points, or 4 σ when that is wider.
    pub tolerance: Option<f64>,
    pub within: bool,
    /// Answers per second (both kinds of clients) and their latency, over the step.
    pub rps: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub error: Option<String>,
}

/// The clients with a cookie (`canary.sticky` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Sticky {
    pub clients: usize,
    pub requests: u64,
    /// Clients that were given a cookie, by the pool it named first.
    pub cookie_blue: u64,
    pub cookie_green: u64,
    pub without_cookie: u64,
    /// Requests sent with a cookie and answered while the split was in
    /// force (before `{"to":"green"}` was written).
    pub requests_with_cookie: u64,
    /// Of those, answered by a pool other than the cookie's (must be 0).
    pub other_pool: u64,
    /// A client's cookie changing while the split was in force (must be 0).
    pub cookie_changes: u64,
    /// Clients whose answers came from more than one pool while the split
    /// was in force, counting from their first request that carried a
    /// cookie (must be 0).
    pub flipped_clients: u64,
    /// Requests sent after `{"to":"green"}` was acknowledged not answered by green (must be 0).
    pub not_green_after_full: u64,
    /// Clients with a blue cookie that were answered by green after the split ended.
    pub moved_to_green: u64,
}

/// The scenario's report (`canary` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cookie: &'static str,
    pub step_requests: u64,
    pub steps: Vec<StepReport>,
    pub sticky: Sticky,
    /// Clients without a cookie: requests sent after `{"to":"green"}` was
    /// acknowledged and answered by blue (must be 0).
    pub stale_after_full: u64,
    pub checks: Vec<Check>,
}

/// A step as it happened.
#[derive(Debug, Clone)]
struct Done {
    plan: Plan,
    request: Value,
    issued_ns: u64,
    ack_ns: Option<u64>,
    status: Option<u16>,
    answer: Value,
    error: Option<String>,
}

/// Runs the scenario (see the module's doc).
pub async fn run(
    s: &Settings,
    cookie_clients: usize,
    step_requests: u64,
    clock: Clock,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<Finished> {
    anyhow::ensure!(cookie_clients > 0, "--cookie-clients must be at least 1");
    anyhow::ensure!(step_requests > 0, "--step-requests must be at least 1");
    let world = World::start(s, Scenario::Canary, Green::Up { fail_ratio: 0.0 }, &split_toml())?;
    let admin = world.admin(clock)?;
    // The bar and the steps count the answers to clients without a cookie.
    let pacer = Pacer::new(clock, bar);
    wait_active(&admin, "blue").await?;

    let url = world.url("/version");
    let all_conns = s.concurrency + cookie_clients;
    let plain = s.load_config(&url, s.concurrency, s.rate_share(s.concurrency, all_conns))?;
    let mut sticky = s.load_config(&url, cookie_clients, s.rate_share(cookie_clients, all_conns))?;
    sticky.cookie = Some(COOKIE.to_string());
    let plain_load = start_load(plain, clock, &pacer.count)?;
    let sticky_load = start_load(sticky, clock, &Arc::new(AtomicU64::new(0)))?;
    let outcome = drive(s, step_requests, &admin, &pacer, clock).await;
    let plain = stop_load(plain_load);
    let sticky: Vec<Vec<Sample>> = sticky_load.stop().into_iter().map(|r| r.samples).collect();
    let end_ns = clock.now_ns();
    world.stop();
    let steps = outcome?;
    Ok(finish(s, step_requests, steps, plain, sticky, end_ns))
}

/// The steps under load.
async fn drive(
    s: &Settings,
    step_requests: u64,
    admin: &AdminClient,
    pacer: &Pacer<'_>,
    clock: Clock,
) -> anyhow::Result<Vec<Done>> {
    let half = s.half_ns();
    pacer.warm_up(s, "blue, before the canary").await;
    let mut done = Vec::new();
    for plan in PLAN {
        let request = if plan.weight < 100 {
            json!({ "to": "green", "weight": plan.weight })
        } else {
            json!({ "to": "green" })
        };
        let what = format!("green {} %", plan.weight);
        pacer.say(&what);
        let issued = clock.now_ns();
        let step = match admin
            .request(Method::POST, "/switch", Some(request.clone()))
            .await
        {
            Ok(a) => Done {
                plan,
                request,
                issued_ns: a.issued_ns,
                ack_ns: Some(a.ack_ns),
                status: Some(a.status),
                error: (a.status != 200).then(|| format!("POST /switch answered {}: {}", a.status, a.body)),
                answer: a.body,
            },
            Err(e) => Done {
                plan,
                request,
                issued_ns: issued,
                ack_ns: None,
                status: None,
                answer: Value::Null,
                error: Some(format!("{e:#}")),
            },
        };
        let ack = step.ack_ns.unwrap_or(issued);
        done.push(step);
        if plan.weight < 100 {
            // At least a phase, and until the clients without a cookie have
            // `step_requests` answers to requests sent after the ack (the
            // count goes up per answer; those in flight at the ack are at
            // most one per connection).
            let need = pacer.count.load(Ordering::Relaxed) + step_requests + s.concurrency as u64;
            pacer.sleep_until(ack + 2 * half, &what).await;
            let deadline = tokio::time::Instant::now() + WAIT_AT_MOST;
            while pacer.count.load(Ordering::Relaxed) < need {
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!(
                        "green {} %: the clients without a cookie did not reach {step_requests} answers within {WAIT_AT_MOST:?}",
                        plan.weight
                    );
                }
                pacer.sleep_until(clock.now_ns() + 10_000_000, &what).await;
            }
        } else {
            pacer.sleep_until(ack + half, "green, the split ended").await;
        }
    }
    Ok(done)
}

/// The tolerance of a share at `n` answers and weight `w` (points): 2, or 4 σ when wider.
pub fn tolerance(n: u64, weight: f64) -> (f64, f64) {
    let p = weight / 100.0;
    let sigma = if n == 0 {
        f64::INFINITY
    } else {
        (p * (1.0 - p) / n as f64).sqrt() * 100.0
    };
    (sigma, TOLERANCE_POINTS.max(SIGMAS * sigma))
}

fn pool_of(x: &Sample) -> Option<&str> {
    x.pool.as_deref().or(match x.ok_version() {
        Some(BLUE) => Some("blue"),
        Some(GREEN) => Some("green"),
        _ => None,
    })
}

/// Turns the steps and the samples into the report and its verdict.
fn finish(
    s: &Settings,
    step_requests: u64,
    done: Vec<Done>,
    plain: Vec<Sample>,
    sticky: Vec<Vec<Sample>>,
    end_ns: u64,
) -> Finished {
    let full = done.iter().find(|d| d.plan.weight == 100);
    let full_issued = full.map_or(end_ns, |d| d.issued_ns);
    let full_ack = full.and_then(|d| d.ack_ns);
    let all: Vec<Sample> = plain.iter().chain(sticky.iter().flatten()).cloned().collect();

    let mut steps = Vec::new();
    for (i, d) in done.iter().enumerate() {
        let from = d.ack_ns.unwrap_or(d.issued_ns);
        let to = done.get(i + 1).map_or(end_ns, |n| n.issued_ns);
        // Sent after the ack: routed by this step's table. Answered before
        // the next step's POST was written: not by the next one's (a request
        // sent just before it may be read by the proxy after it).
        let mine: Vec<&Sample> = plain
            .iter()
            .filter(|x| x.sent_ns > from && x.done_ns < to)
            .collect();
        let green = mine.iter().filter(|x| x.ok_version() == Some(GREEN)).count() as u64;
        let blue = mine.iter().filter(|x| x.ok_version() == Some(BLUE)).count() as u64;
        let failed = mine.iter().filter(|x| !x.ok()).count() as u64;
        let answered = green + blue;
        let w = f64::from(d.plan.weight);
        let share = (answered > 0).then(|| green as f64 * 100.0 / answered as f64);
        let (sigma, tol) = tolerance(answered, w);
        let (sigma, tol) = if d.plan.weight == 100 {
            (0.0, 0.0)
        } else {
            (sigma, tol)
        };
        let within = share.is_some_and(|sh| (sh - w).abs() <= tol + 1e-9) && d.error.is_none();
        let both: Vec<&Sample> = all
            .iter()
            .filter(|x| x.done_ns > from && x.done_ns < to)
            .collect();
        let lat = latency_of(both.iter().map(|x| x.latency_ns()));
        let len_s = ms_between(from, to) / 1e3;
        steps.push(StepReport {
            weight: d.plan.weight,
            request: d.request.clone(),
            status: d.status,
            split: d.answer.get("split").cloned().unwrap_or(Value::Null),
            active: d.answer["active"].as_str().map(str::to_string),
            ack_ms: d.ack_ns.map(|a| ms_between(d.issued_ns, a)),
            held_ms: Some(ms_between(from, to)),
            requests: mine.len() as u64,
            green,
            blue,
            failed,
            green_share: share,
            deviation: share.map(|sh| sh - w),
            sigma: Some(sigma),
            tolerance: Some(tol),
            within,
            rps: (len_s > 0.0).then(|| both.len() as f64 / len_s),
            p50_ms: lat.p50_ms,
            p99_ms: lat.p99_ms,
            error: d.error.clone(),
        });
    }
    let stale_after_full = full_ack.map_or(0, |a| {
        plain
            .iter()
            .filter(|x| x.sent_ns > a && x.ok_version() == Some(BLUE))
            .count() as u64
    });

    // The clients with a cookie, one by one.
    let mut st = Sticky {
        clients: sticky.len(),
        requests: sticky.iter().map(|c| c.len() as u64).sum(),
        cookie_blue: 0,
        cookie_green: 0,
        without_cookie: 0,
        requests_with_cookie: 0,
        other_pool: 0,
        cookie_changes: 0,
        flipped_clients: 0,
        not_green_after_full: 0,
        moved_to_green: 0,
    };
    for client in &sticky {
        let mut ordered: Vec<&Sample> = client.iter().collect();
        ordered.sort_by_key(|x| x.sent_ns);
        let first_cookie = ordered.iter().find_map(|x| x.cookie.clone());
        match first_cookie.as_deref() {
            Some("blue") => st.cookie_blue += 1,
            Some("green") => st.cookie_green += 1,
            _ => st.without_cookie += 1,
        }
        let mut last_cookie: Option<&str> = None;
        let mut pools_seen: Vec<&str> = Vec::new();
        let mut holding = false;
        // Answered before `{"to":"green"}` was written: routed while the split
        // was in force (a request in flight across it may be routed after it).
        for x in ordered.iter().filter(|x| x.done_ns < full_issued) {
            if let Some(c) = x.cookie.as_deref() {
                holding = true;
                st.requests_with_cookie += 1;
                if x.ok() && pool_of(x) != Some(c) {
                    st.other_pool += 1;
                }
                if last_cookie.is_some_and(|l| l != c) {
                    st.cookie_changes += 1;
                }
                last_cookie = Some(c);
            }
            if holding {
                if let Some(p) = pool_of(x) {
                    if !pools_seen.contains(&p) {
                        pools_seen.push(p);
                    }
                }
            }
        }
        if pools_seen.len() > 1 {
            st.flipped_clients += 1;
        }
        if let Some(a) = full_ack {
            let after: Vec<&&Sample> = ordered.iter().filter(|x| x.sent_ns > a).collect();
            st.not_green_after_full += after.iter().filter(|x| x.ok_version() != Some(GREEN)).count() as u64;
            if last_cookie == Some("blue") && after.iter().any(|x| x.ok_version() == Some(GREEN)) {
                st.moved_to_green += 1;
            }
        }
    }

    let total = totals(&all);
    let mut checks = Vec::new();
    let expected_split = |w: u8| -> Value {
        if w == 100 {
            Value::Null
        } else {
            json!({ "blue": 100 - w, "green": w })
        }
    };
    checks.push(Check::new(
        "each POST /switch is answered 200 with the split asked for (blue 90 green 10, blue 50 green 50, then no split and green active)",
        steps.len() == PLAN.len()
            && steps.iter().all(|x| {
                x.status == Some(200)
                    && x.split == expected_split(x.weight)
                    && (x.weight < 100 || x.active.as_deref() == Some("green"))
            }),
        steps
            .iter()
            .map(|x| {
                format!(
                    "{} -> {} split {}{}",
                    x.request,
                    x.status.map_or("-".into(), |c| c.to_string()),
                    x.split,
                    x.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    ));
    for x in steps.iter().filter(|x| x.weight < 100) {
        checks.push(Check::new(
            &format!(
                "green {} %: the share of green answers to clients without a cookie is within ±{} points",
                x.weight,
                num(x.tolerance, 2)
            ),
            x.within && x.requests >= step_requests,
            format!(
                "{} of {} answers from green = {} % (deviation {} points, σ {} points, {} requests held for)",
                x.green,
                x.green + x.blue,
                num(x.green_share, 2),
                num(x.deviation, 2),
                num(x.sigma, 2),
                step_requests
            ),
        ));
    }
    checks.push(Check::new(
        "after {\"to\":\"green\"} is acknowledged, every request of either kind of client is answered by green",
        full_ack.is_some() && stale_after_full == 0 && st.not_green_after_full == 0,
        format!(
            "{stale_after_full} blue answers to clients without a cookie, {} not green to clients with one ({} clients moved from a blue cookie to green)",
            st.not_green_after_full, st.moved_to_green
        ),
    ));
    checks.push(Check::new(
        "clients with a cookie: every one got a cookie, and while the split was in force none changed pool",
        st.without_cookie == 0
            && st.other_pool == 0
            && st.cookie_changes == 0
            && st.flipped_clients == 0
            && st.requests_with_cookie > 0,
        format!(
            "{} clients ({} with a blue cookie, {} green, {} none); {} requests carried a cookie during the split: {} answered by another pool, {} cookie changes, {} clients flipped",
            st.clients,
            st.cookie_blue,
            st.cookie_green,
            st.without_cookie,
            st.requests_with_cookie,
            st.other_pool,
            st.cookie_changes,
            st.flipped_clients
        ),
    ));
    checks.push(Check::no_failed(&total));
    let passed = all_passed(&checks);

    let mut text = String::new();
    text.push_str(&format!(
        "clients without a cookie: {} connections; with a cookie ({COOKIE}): {} connections; each weighted step held until {} answers to clients without a cookie\n\n",
        s.concurrency,
        sticky.len(),
        step_requests
    ));
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|x| {
            vec![
                x.request.to_string(),
                x.status.map_or("-".into(), |c| c.to_string()),
                num(x.ack_ms, 2),
                x.requests.to_string(),
                x.green.to_string(),
                x.blue.to_string(),
                num(x.green_share, 2),
                num(x.deviation, 2),
                if x.weight < 100 {
                    format!("±{}", num(x.tolerance, 2))
                } else {
                    "exact".into()
                },
                x.failed.to_string(),
                num(x.rps, 0),
                format!("{:.2}", x.p50_ms),
                format!("{:.2}", x.p99_ms),
            ]
        })
        .collect();
    text.push_str(&format_table(
        &[
            "POST /switch",
            "status",
            "ack_ms",
            "requests",
            "green",
            "blue",
            "green_%",
            "deviation",
            "tolerance",
            "failed",
            "rps",
            "p50_ms",
            "p99_ms",
        ],
        1,
        &rows,
    ));
    text.push_str(&format!(
        "\nclients with a cookie: {} ({} blue, {} green, {} without), {} requests, {} with a cookie during the split: {} answered by another pool, {} cookie changes, {} flipped; after the split ended {} not green, {} moved from blue to green\n",
        st.clients,
        st.cookie_blue,
        st.cookie_green,
        st.without_cookie,
        st.requests,
        st.requests_with_cookie,
        st.other_pool,
        st.cookie_changes,
        st.flipped_clients,
        st.not_green_after_full,
        st.moved_to_green
    ));
    text.push_str(&format_total(&total, ""));
    text.push_str(&format_verdict(
        &checks,
        "green's share followed each step within tolerance, clients with a cookie kept their pool, 0 failed",
    ));

    let marks: Vec<Mark> = done
        .iter()
        .map(|d| Mark {
            at_ns: d.issued_ns,
            label: if d.plan.weight < 100 {
                format!("green {} %", d.plan.weight)
            } else {
                "all green".into()
            },
            kind: MarkKind::Switch,
        })
        .collect();
    let report = Report {
        cookie: COOKIE,
        step_requests,
        steps,
        sticky: st,
        stale_after_full,
        checks: checks.clone(),
    };
    let json = json!({
        "canary": report,
        "cookie_clients": sticky.len(),
        "total": total,
    });
    Finished {
        passed,
        text,
        json,
        samples: all,
        marks,
        title: format!(
            "switchyard canary 10 → 50 → 100: answers per 10 ms by version ({} + {} connections, {})",
            s.concurrency,
            sticky.len(),
            rate_words(s.rate)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_points_is_four_sigma_at_ten_thousand() {
        let (sigma, tol) = tolerance(10_000, 50.0);
        assert!((sigma - 0.5).abs() < 1e-9);
        assert!((tol - 2.0).abs() < 1e-9);
        let (_, tol) = tolerance(10_000, 10.0);
        assert!((tol - 2.0).abs() < 1e-9, "2 points is the floor");
        let (_, tol) = tolerance(2_500, 50.0);
        assert!((tol - 4.0).abs() < 1e-9, "fewer requests: 4 sigma");
    }
}
