use super::*;

const MS: u64 = 1_000_000;

fn ok(sent_ms: u64, done_ms: u64, v: &str) -> Sample {
    Sample::answered(sent_ms * MS, done_ms * MS, v)
}

fn switch(issued_ms: u64, ack_ms: Option<u64>, phase_ms: Range<u64>) -> Switch {
    Switch {
        name: "admin switch".into(),
        source: "admin".into(),
        how: "POST /switch".into(),
        issued_ns: issued_ms * MS,
        ack_ns: ack_ms.map(|a| a * MS),
        phase: phase_ms.start * MS..phase_ms.end * MS,
        generation: Some(2),
        expected: None,
        error: None,
    }
}

/// Blue answers until 1003 ms, green from 1001 ms; ack at 1002 ms.
fn admin_samples() -> Vec<Sample> {
    let mut s = Vec::new();
    // One request every 10 ms from 0 to 990 ms, all blue, each taking 1 ms.
    for t in (0..1000).step_by(10) {
        s.push(ok(t, t + 1, "0.0.1"));
    }
    // In flight at the switch: sent before the ack, answered by blue at 1003 ms.
    s.push(ok(999, 1003, "0.0.1"));
    // Sent before the ack (1002), answered by green first at 1001.5 -> rounded to 1001.
    s.push(Sample::answered(1000 * MS + MS / 2, 1001 * MS, "0.0.2"));
    // After: green every 10 ms from 1010 to 1990 ms.
    for t in (1010..2000).step_by(10) {
        s.push(ok(t, t + 1, "0.0.2"));
    }
    s
}

#[test]
fn admin_switch_arithmetic() {
    let r = cutover_report(&admin_samples(), &switch(1000, Some(1002), 0..2000));
    assert_eq!(r.from.as_deref(), Some("0.0.1"));
    assert_eq!(r.to.as_deref(), Some("0.0.2"));
    assert_eq!(r.requests, 100 + 1 + 1 + 99);
    assert_eq!(r.failed, 0);
    assert_eq!(r.stale_after_ack, 0);
    assert_eq!(r.ack, Ack::Response);
    assert_eq!(r.ack_ms, Some(2.0));
    // First green answer at 1001 ms, last blue answer at 1003 ms.
    assert_eq!(r.mixed_window_ms, Some(2.0));
    assert_eq!(r.gap_ms, Some(0.0));
    assert_eq!(r.switch_to_first_new_ms, Some(1.0));
    assert!(r.passed());
    // before = [0, 900): answers at 1, 11, ..., 891 -> 90 in 0.9 s.
    assert_eq!(r.rps.before, Some(100.0));
    // during = [900, 1100): blue at 901..991 (10), 1003 (1); green 1001 (1), 1011..1091 (9) -> 21 in 0.2 s.
    assert_eq!(r.rps.during, Some(105.0));
    // after = [1100, 2000): green at 1101 .. 1991 -> 90 in 0.9 s.
    assert_eq!(r.rps.after, Some(100.0));
    assert_eq!(r.latency.before.count, 90);
    assert!((r.latency.before.p99_ms - 1.0).abs() < 0.01);
    // The 4 ms request (999 -> 1003) is the slowest during the switch.
    assert!(
        (r.latency.during.max_ms - 4.0).abs() < 0.01,
        "{:?}",
        r.latency.during
    );
}

#[test]
fn stale_after_ack_counts_only_requests_sent_after_the_ack() {
    let mut s = admin_samples();
    // Sent at 1002.5 ms, after the ack at 1002 ms, answered by blue: stale.
    s.push(Sample::answered(1002 * MS + MS / 2, 1004 * MS, "0.0.1"));
    // Sent exactly at the ack: not after it.
    s.push(ok(1002, 1004, "0.0.1"));
    let r = cutover_report(&s, &switch(1000, Some(1002), 0..2000));
    assert_eq!(r.stale_after_ack, 1);
    assert_eq!(r.mixed_window_ms, Some(3.0));
    assert!(!r.passed());
}

#[test]
fn failures_are_counted_and_not_taken_as_versions() {
    let mut s = admin_samples();
    s.push(Sample::transport_error(1500 * MS, 1500 * MS, "connection reset"));
    let mut bad = ok(1600, 1601, "0.0.2");
    bad.status = 502;
    s.push(bad);
    // Outside the phase: not this cut-over's.
    s.push(Sample::transport_error(2500 * MS, 2500 * MS, "refused"));
    let r = cutover_report(&s, &switch(1000, Some(1002), 0..2000));
    assert_eq!(r.failed, 2);
    assert_eq!(r.to.as_deref(), Some("0.0.2"));
    assert!(!r.passed());
}

#[test]
fn file_switch_uses_the_first_new_answer_as_ack() {
    let mut s = Vec::new();
    for t in (0..1000).step_by(10) {
        s.push(ok(t, t + 1, "0.0.2"));
    }
    // Renamed at 1000 ms; the watcher applies it at ~1020 ms.
    s.push(ok(1010, 1011, "0.0.2"));
    s.push(ok(1019, 1021, "0.0.1")); // first new answer at 1021
    s.push(ok(1018, 1022, "0.0.2")); // in flight: old, sent before 1021 -> not stale
    for t in (1030..2000).step_by(10) {
        s.push(ok(t, t + 1, "0.0.1"));
    }
    let mut sw = switch(1000, None, 0..2000);
    sw.source = "file".into();
    let r = cutover_report(&s, &sw);
    assert_eq!(r.ack, Ack::FirstNewAnswer);
    assert_eq!(r.ack_ms, None);
    assert_eq!(r.from.as_deref(), Some("0.0.2"));
    assert_eq!(r.to.as_deref(), Some("0.0.1"));
    assert_eq!(r.switch_to_first_new_ms, Some(21.0));
    assert_eq!(r.mixed_window_ms, Some(1.0));
    assert_eq!(r.stale_after_ack, 0);
    assert!(r.passed());

    // An old answer to a request sent after the first new answer is stale.
    s.push(ok(1025, 1026, "0.0.2"));
    let r = cutover_report(&s, &sw);
    assert_eq!(r.stale_after_ack, 1);
}

#[test]
fn no_overlap_means_a_zero_window() {
    let s = vec![ok(0, 1, "a"), ok(5, 6, "a"), ok(10, 12, "b"), ok(20, 21, "b")];
    let r = cutover_report(&s, &switch(8, Some(9), 0..30));
    assert_eq!(r.mixed_window_ms, Some(0.0));
    // Last "a" at 6 ms, first "b" at 12 ms: 6 ms without an answer.
    assert_eq!(r.gap_ms, Some(6.0));
    assert_eq!(r.switch_to_first_new_ms, Some(4.0));
    assert!(r.passed());
}

#[test]
fn a_switch_that_changed_nothing_does_not_pass() {
    let s = vec![ok(0, 1, "a"), ok(5, 6, "a"), ok(10, 12, "a")];
    let r = cutover_report(&s, &switch(8, Some(9), 0..30));
    assert_eq!(r.from.as_deref(), Some("a"));
    assert_eq!(r.to.as_deref(), Some("a"));
    assert_eq!(r.mixed_window_ms, None);
    assert_eq!(r.switch_to_first_new_ms, None);
    assert_eq!(r.stale_after_ack, 0);
    assert!(!r.changed());
    assert!(!r.passed());
}

#[test]
fn open_loop_latency_counts_from_the_intended_time() {
    let mut s = ok(100, 101, "a");
    s.intended_ns = 50 * MS; // scheduled at 50 ms, sent late at 100 ms
    assert_eq!(s.latency_ns(), 51 * MS);
    let t = totals(&[s]);
    assert!((t.latency.max_ms - 51.0).abs() < 0.1, "{t:?}");
}

#[test]
fn totals_of_a_run() {
    let mut s = admin_samples();
    s.push(Sample::transport_error(1990 * MS, 2000 * MS, "reset"));
    let t = totals(&s);
    assert_eq!(t.requests, 202);
    assert_eq!(t.failed, 1);
    assert!((t.elapsed_s - 2.0).abs() < 1e-9);
    assert!((t.rps - 101.0).abs() < 1e-9);
}

#[test]
fn timeline_buckets_by_answer_time_and_version() {
    let mut s = vec![
        ok(0, 1, "a"),
        ok(0, 9, "a"),
        ok(5, 12, "b"),
        ok(20, 25, "a"),
        ok(21, 29, "b"),
    ];
    s.push(Sample::transport_error(30 * MS, 31 * MS, "x"));
    let t = timeline(&s, 10 * MS);
    assert_eq!(t.start_ns, 0);
    assert_eq!(t.versions.iter().map(|v| &**v).collect::<Vec<_>>(), ["a", "b"]);
    let got: Vec<(Vec<u32>, u32)> = t
        .buckets
        .iter()
        .map(|b| (b.per_version.clone(), b.failed))
        .collect();
    assert_eq!(
        got,
        [(vec![2, 0], 0), (vec![0, 1], 0), (vec![1, 1], 0), (vec![0, 0], 1)]
    );
    assert!(timeline(&[], MS).buckets.is_empty());
}

#[test]
fn expected_version_and_errors_decide_too() {
    let mut sw = switch(1000, Some(1002), 0..2000);
    sw.expected = Some("0.0.2".into());
    assert!(cutover_report(&admin_samples(), &sw).passed());
    sw.expected = Some("0.0.3".into());
    assert!(!cutover_report(&admin_samples(), &sw).passed());
    sw.expected = None;
    sw.error = Some("POST /switch answered 401".into());
    assert!(!cutover_report(&admin_samples(), &sw).passed());
}
