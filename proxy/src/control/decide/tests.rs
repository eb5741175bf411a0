//! The decision table, one row per case: `event | condition | decision`,
//! as the design writes it. Rows the design adds for later features
//! (splits, automatic rollback) come with those features.

use super::*;
use crate::config::MinHealthy;

/// An upstreams file: `active` and the named pools (one endpoint each).
fn file(active: &str, pools: &[&str]) -> Desired {
    Desired {
        active: active.into(),
        force: false,
        pools: pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let endpoints = vec![format!("127.0.0.1:{}", 8081 + i)];
                (p.to_string(), crate::table::PoolDef::fixed(endpoints))
            })
            .collect(),
        min_healthy: pools
            .iter()
            .map(|p| (p.to_string(), MinHealthy::DEFAULT))
            .collect(),
        ..Desired::default()
    }
}

/// The same file with `min_healthy = n` for `pool`.
fn with_min_healthy(mut d: Desired, pool: &str, n: u32) -> Desired {
    d.min_healthy.insert(pool.into(), MinHealthy::Count(n));
    d
}

/// The same file with `force = true`.
fn forced_file(active: &str, pools: &[&str]) -> Desired {
    Desired {
        force: true,
        ..file(active, pools)
    }
}

/// `healthy` of `endpoints` endpoints count, `needs` needed.
fn r(healthy: usize, endpoints: usize, needs: usize) -> Readiness {
    Readiness {
        healthy,
        endpoints,
        needs,
    }
}

/// Ready: one endpoint of one, needs one.
const UP: Readiness = Readiness {
    healthy: 1,
    endpoints: 1,
    needs: 1,
};

/// Not ready: none of three endpoints healthy, needs one.
const DOWN: Readiness = Readiness {
    healthy: 0,
    endpoints: 3,
    needs: 1,
};

/// The readiness facts the writer hands in.
fn readiness(pools: &[(&str, Readiness)]) -> BTreeMap<String, Readiness> {
    pools.iter().map(|(p, r)| (p.to_string(), *r)).collect()
}

/// `state` with the readiness of `pools` (and no other pool's).
fn with_ready(state: ControlState, pools: &[(&str, Readiness)]) -> ControlState {
    ControlState {
        ready: readiness(pools),
        ..state
    }
}

/// Blue and green, blue active, as at start from a file hashed 1, both
/// ready (the writer computes readiness right after the start).
fn started() -> ControlState {
    with_ready(
        ControlState::start(
            file("blue", &["blue", "green"]),
            1,
            "active = \"blue\"".into(),
            false,
        ),
        &[("blue", UP), ("green", UP), ("canary", UP)],
    )
}

/// Started, but green is not ready (0 of 3 endpoints healthy, needs 1),
/// and canary not ready either.
fn green_down() -> ControlState {
    with_ready(started(), &[("blue", UP), ("green", DOWN), ("canary", DOWN)])
}

/// Green down, then the file says green: that switch is pending.
fn pending_green() -> ControlState {
    after(&green_down(), read(2, file("green", &["blue", "green"])))
}

/// Pending green, with an admin override to canary made before the file changed.
fn overridden_then_pending() -> ControlState {
    let s = ControlState {
        file: file("blue", &["blue", "green", "canary"]),
        ..with_ready(started(), &[("blue", UP), ("green", DOWN), ("canary", UP)])
    };
    let s = after(&s, switch("canary", None));
    after(&s, read(2, file("green", &["blue", "green", "canary"])))
}

const GREEN_DOWN: &str = "green: 0 of 3 endpoints healthy, needs 1";

/// The state `event` leaves `state` in.
fn after(state: &ControlState, event: Event) -> ControlState {
    decide(state, event).next
}

/// Started with `[admin] persist = true`.
fn with_persist() -> ControlState {
    ControlState {
        persist: true,
        ..started()
    }
}

/// With persist, `POST /switch {"to":"green"}` decided (the write not yet done).
fn persisting_to_green() -> ControlState {
    after(&with_persist(), switch("green", None))
}

/// Started, then `POST /switch {"to":"green"}`.
fn overridden_to_green() -> ControlState {
    after(&started(), switch("green", None))
}

/// Overridden to green, then blue (the `previous` pool) is not ready.
fn overridden_to_green_blue_down() -> ControlState {
    with_ready(overridden_to_green(), &[("blue", DOWN), ("green", UP)])
}

fn read(hash: u64, file: Desired) -> Event {
    Event::FileRead(FileRead::Read {
        hash,
        text: format!("file {hash}").into(),
        parsed: Ok(file),
    })
}

fn written(hash: u64) -> Result<Written, String> {
    Ok(Written {
        hash,
        text: format!("written {hash}").into(),
    })
}

fn switch(to: &str, if_generation: Option<u64>) -> Event {
    Event::Switch {
        to: to.into(),
        if_generation,
        force: false,
        weight: None,
    }
}

fn forced(to: &str) -> Event {
    Event::Switch {
        to: to.into(),
        if_generation: None,
        force: true,
        weight: None,
    }
}

fn rollback(if_generation: Option<u64>) -> Event {
    Event::Rollback {
        if_generation,
        force: false,
    }
}

fn became(pools: &[(&str, Readiness)]) -> Event {
    Event::Readiness(readiness(pools))
}

fn route(pool: &str) -> Route {
    Route::to(pool)
}

fn switched(d: &Decision) -> SwitchOutcome {
    match &d.reply {
        Reply::Switch(Ok(o)) => o.clone(),
        other => panic!("expected a switch outcome, got {other:?}"),
    }
}

fn refused(d: &Decision) -> SwitchError {
    match &d.reply {
        Reply::Switch(Err(e)) => e.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn reloaded(d: &Decision) -> ReloadOutcome {
    match &d.reply {
        Reply::Reload(o) => o.clone(),
        other => panic!("expected a reload outcome, got {other:?}"),
    }
}

/// One row of the decision table.
struct Row {
    event: &'static str,
    condition: &'static str,
    given: ControlState,
    when: Event,
    /// The decision, checked against the state it was made from.
    then: fn(&ControlState, &Decision),
}

fn rows() -> Vec<Row> {
    vec![
        // ---- start --------------------------------------------------------
        Row {
            event: "start",
            condition: "file valid",
            given: started(),
            // Start is `ControlState::start`; a re-read of the same bytes
            // then changes nothing.
            when: read(1, file("blue", &["blue", "green"])),
            then: |given, d| {
                assert_eq!(given.route, route("blue"));
                assert_eq!((given.overridden.clone(), given.previous.clone()), (None, None));
                assert_eq!((given.generation, given.source), (1, Source::File));
                assert_eq!(reloaded(d), ReloadOutcome::Unchanged);
                assert_eq!(d.store, Store::Nothing);
            },
        },
        // ---- the file -----------------------------------------------------
        Row {
            event: "file accepted, same route as `file`",
            condition: "no override",
            given: started(),
            when: read(2, file("blue", &["blue", "green", "canary"])),
            then: |given, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 2 });
                assert_eq!(d.store, Store::Table);
                assert_eq!(d.next.route, given.route);
                assert_eq!(d.next.file.pools.len(), 3);
                assert_eq!(d.next.previous, None, "the route did not change");
                assert_eq!(d.next.file_hash, 2);
            },
        },
        Row {
            event: "file accepted, same route as `file`",
            condition: "the override's pool still defined",
            given: overridden_to_green(),
            when: read(2, file("blue", &["blue", "green", "canary"])),
            then: |given, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 3 });
                assert_eq!(d.store, Store::Table);
                assert_eq!(d.next.route, route("green"), "the override stays in force");
                assert_eq!(d.next.overridden, given.overridden);
                assert_eq!(d.next.previous, given.previous);
            },
        },
        Row {
            event: "file accepted, same route as `file`",
            condition: "it removes the override's pool",
            given: overridden_to_green(),
            when: read(2, file("blue", &["blue"])),
            then: |given, d| {
                let ReloadOutcome::Rejected(why) = reloaded(d) else {
                    panic!("expected a rejection, got {:?}", d.reply)
                };
                assert!(why.contains("no longer defines pool `green`"), "{why}");
                assert_eq!(d.next.route, route("green"), "the override stays in force");
                assert_eq!(d.next.overridden, given.overridden);
                assert_eq!(d.next.file, given.file, "the file is not accepted");
                assert_eq!(d.next.file_hash, given.file_hash, "judged again at the next read");
                assert_eq!(d.next.last_reload_error, Some(why));
                assert_eq!(d.store, Store::Facts, "only the error is shown");
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "it also removes the override's pool",
            given: overridden_to_green(),
            when: read(2, file("canary", &["blue", "canary"])),
            then: |_, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 3 });
                assert_eq!(d.next.route, route("canary"), "a newer intent: it applies");
                assert_eq!(d.next.overridden, None);
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "it equals the route in force (an override made it)",
            given: overridden_to_green(),
            when: read(2, file("green", &["blue", "green"])),
            then: |given, d| {
                assert_eq!(d.next.overridden, None, "the file now says it");
                assert_eq!(d.next.route, route("green"));
                assert_eq!(d.next.previous, given.previous, "no switch happened");
                assert_eq!(
                    (d.next.generation, d.next.source),
                    (given.generation, Source::Admin),
                    "nothing else changes: the same table"
                );
                assert_eq!(d.store, Store::Facts, "only `override` and `file_active` change");
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 2 });
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "no override",
            given: started(),
            when: read(2, file("green", &["blue", "green"])),
            then: |_, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 2 });
                assert_eq!(d.next.route, route("green"));
                assert_eq!(d.next.previous, Some(route("blue")));
                assert_eq!(d.next.source, Source::File);
                assert_eq!(d.persist, None, "a file switch is never persisted");
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "an override to another pool is in force",
            given: overridden_to_green(),
            when: read(2, file("canary", &["blue", "green", "canary"])),
            then: |_, d| {
                assert_eq!(d.next.overridden, None, "the file's new intent wins");
                assert_eq!(d.next.route, route("canary"));
                assert_eq!(d.next.previous, Some(route("green")));
            },
        },
        Row {
            event: "file read",
            condition: "same bytes as the accepted file",
            given: ControlState {
                last_reload_error: Some("earlier".into()),
                ..started()
            },
            when: read(1, file("blue", &["blue", "green"])),
            then: |_, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Unchanged);
                assert_eq!(d.next.last_reload_error, None, "the valid file is back");
                assert_eq!(d.store, Store::Facts);
            },
        },
        Row {
            event: "file accepted",
            condition: "other bytes, same meaning (a comment)",
            given: started(),
            when: read(7, file("blue", &["blue", "green"])),
            then: |given, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Unchanged);
                assert_eq!(d.store, Store::Nothing);
                assert_eq!(d.next.file_hash, 7, "remembered: not parsed again");
                assert_eq!(d.next.generation, given.generation);
            },
        },
        Row {
            event: "file read",
            condition: "invalid",
            given: overridden_to_green(),
            when: Event::FileRead(FileRead::Read {
                hash: 9,
                text: "half".into(),
                parsed: Err("u.toml: line 2: no pool is defined".into()),
            }),
            then: |given, d| {
                assert_eq!(
                    reloaded(d),
                    ReloadOutcome::Rejected("u.toml: line 2: no pool is defined".into())
                );
                assert_eq!(d.store, Store::Facts, "only the error is shown");
                assert_eq!(
                    d.next.file_hash, given.file_hash,
                    "a rejected file is judged again next time"
                );
                assert_eq!(d.next.route, given.route);
                assert_eq!(d.next.overridden, given.overridden);
                assert_eq!(
                    d.next.last_reload_error.as_deref(),
                    Some("u.toml: line 2: no pool is defined")
                );
            },
        },
        Row {
            event: "file read",
            condition: "unreadable",
            given: started(),
            when: Event::FileRead(FileRead::Unreadable("u.toml: cannot read".into())),
            then: |given, d| {
                assert!(matches!(reloaded(d), ReloadOutcome::Rejected(_)));
                assert_eq!(d.next.generation, given.generation);
                assert_eq!(d.next.file, given.file);
            },
        },
        // ---- admin switch -------------------------------------------------
        Row {
            event: "admin switch to R",
            condition: "R is the current route",
            given: started(),
            when: switch("blue", None),
            then: |given, d| {
                let o = switched(d);
                assert!(!o.changed);
                assert_eq!((o.active.as_str(), o.generation), ("blue", 1));
                assert_eq!(d.next, *given);
                assert_eq!(d.store, Store::Nothing);
            },
        },
        Row {
            event: "admin switch",
            condition: "`if_generation` mismatch",
            given: started(),
            when: switch("green", Some(7)),
            then: |given, d| {
                assert_eq!(
                    refused(d),
                    SwitchError::Conflict {
                        expected: 7,
                        current: 1
                    }
                );
                assert_eq!(d.next, *given);
            },
        },
        Row {
            event: "admin switch",
            condition: "`if_generation` matches",
            given: started(),
            when: switch("green", Some(1)),
            then: |_, d| {
                assert!(switched(d).changed);
                assert_eq!(d.next.route, route("green"));
            },
        },
        Row {
            event: "admin switch",
            condition: "unknown pool",
            given: started(),
            when: switch("purple", None),
            then: |given, d| {
                assert!(matches!(refused(d), SwitchError::UnknownPool { .. }));
                assert_eq!(d.next, *given);
            },
        },
        Row {
            event: "admin switch",
            condition: "otherwise",
            given: started(),
            when: switch("green", None),
            then: |_, d| {
                let o = switched(d);
                assert_eq!(
                    (
                        o.changed,
                        o.active.as_str(),
                        o.previous.as_str(),
                        o.generation,
                        o.source
                    ),
                    (true, "green", "blue", 2, "admin")
                );
                assert_eq!(
                    d.next.overridden,
                    Some(Override {
                        route: route("green"),
                        source: Source::Admin,
                        reason: None
                    })
                );
                assert_eq!(d.next.previous, Some(route("blue")));
                assert_eq!(d.next.file.active, "blue", "the file still says blue");
                assert_eq!(d.store, Store::Table);
                assert_eq!(d.persist, None, "persist is off");
            },
        },
        // ---- rollback -----------------------------------------------------
        Row {
            event: "rollback",
            condition: "no `previous`",
            given: started(),
            when: rollback(None),
            then: |given, d| {
                assert_eq!(refused(d), SwitchError::NothingToRollBack);
                assert_eq!(d.next, *given);
            },
        },
        Row {
            event: "rollback",
            condition: "`if_generation` mismatch",
            given: overridden_to_green(),
            when: rollback(Some(1)),
            then: |_, d| {
                assert_eq!(
                    refused(d),
                    SwitchError::Conflict {
                        expected: 1,
                        current: 2
                    }
                );
            },
        },
        Row {
            event: "rollback",
            condition: "otherwise",
            given: overridden_to_green(),
            when: rollback(Some(2)),
            then: |_, d| {
                let o = switched(d);
                assert_eq!(
                    (o.active.as_str(), o.previous.as_str(), o.source),
                    ("blue", "green", "rollback")
                );
                assert_eq!(
                    d.next.overridden,
                    Some(Override {
                        route: route("blue"),
                        source: Source::Rollback,
                        reason: None
                    })
                );
                assert_eq!(d.next.previous, None, "consumed: a second rollback is 409");
                assert_eq!(
                    refused(&decide(&d.next, rollback(None))),
                    SwitchError::NothingToRollBack
                );
            },
        },
        Row {
            event: "rollback",
            condition: "after a file switch",
            given: after(&started(), read(2, file("green", &["blue", "green"]))),
            when: rollback(None),
            then: |_, d| {
                assert_eq!(switched(d).active, "blue");
                assert_eq!(d.next.source, Source::Rollback);
            },
        },
        // ---- persist ------------------------------------------------------
        Row {
            event: "admin switch",
            condition: "persist on",
            given: with_persist(),
            when: switch("green", None),
            then: |_, d| {
                assert_eq!(d.persist, Some(route("green")), "stored first, then written");
                assert!(
                    d.next.overridden.is_some(),
                    "an override until the write succeeds"
                );
            },
        },
        Row {
            event: "persisted",
            condition: "written",
            given: persisting_to_green(),
            when: Event::Persisted {
                route: route("green"),
                result: written(42),
            },
            then: |given, d| {
                assert_eq!(d.next.overridden, None, "the file now says green");
                assert_eq!((d.next.file.active.as_str(), d.next.file_hash), ("green", 42));
                assert_eq!(&*d.next.file_text, "written 42", "the next persist edits this");
                assert_eq!(d.next.persist_error, None);
                assert_eq!(d.next.generation, given.generation, "no new table");
                assert_eq!(d.store, Store::Facts);
                // The watcher's read of what was written is already applied.
                let echo = decide(&d.next, read(42, file("green", &["blue", "green"])));
                assert_eq!(
                    (reloaded(&echo), echo.store),
                    (ReloadOutcome::Unchanged, Store::Nothing)
                );
            },
        },
        Row {
            event: "persisted",
            condition: "nothing written (the file changed since it was accepted, a symlink, an I/O error)",
            given: persisting_to_green(),
            when: Event::Persisted {
                route: route("green"),
                result: Err("upstreams.toml: the file changed since it was last accepted".into()),
            },
            then: |given, d| {
                assert_eq!(
                    d.next.overridden, given.overridden,
                    "the switch stays an override"
                );
                assert_eq!(
                    (d.next.file_hash, &d.next.file_text),
                    (given.file_hash, &given.file_text)
                );
                assert_eq!(
                    d.next.persist_error.as_deref(),
                    Some("upstreams.toml: the file changed since it was last accepted"),
                    "/status says why"
                );
                assert_eq!(d.store, Store::Facts);
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "after a persist error",
            given: ControlState {
                persist_error: Some("not written".into()),
                ..persisting_to_green()
            },
            when: read(2, file("green", &["blue", "green"])),
            then: |_, d| {
                assert_eq!(d.next.overridden, None, "the file now says it");
                assert_eq!(d.next.persist_error, None, "nothing is left to persist");
            },
        },
        // ---- the gate: start ----------------------------------------------
        Row {
            event: "start",
            condition: "the file's pool is not ready",
            // The writer hands in the readiness right after the start.
            given: with_ready(
                ControlState::start(file("green", &["blue", "green"]), 1, "".into(), false),
                &[],
            ),
            when: became(&[("blue", UP), ("green", DOWN)]),
            then: |_, d| {
                assert_eq!(d.next.route, route("green"), "start applies without the gate");
                assert_eq!(d.next.pending, None);
                assert_eq!(d.next.generation, 1);
                assert_eq!(d.store, Store::Facts, "only the readiness is shown");
            },
        },
        // ---- the gate: a file's new route ---------------------------------
        Row {
            event: "file accepted, new route",
            condition: "target not ready",
            given: green_down(),
            when: read(2, file("green", &["blue", "green"])),
            then: |given, d| {
                assert_eq!(
                    reloaded(d),
                    ReloadOutcome::Pending {
                        generation: 1,
                        reason: GREEN_DOWN.into()
                    }
                );
                assert_eq!(d.next.pending, Some(route("green")));
                assert_eq!(d.next.route, route("blue"), "traffic stays");
                assert_eq!((d.next.previous.clone(), d.next.overridden.clone()), (None, None));
                assert_eq!(d.next.generation, given.generation, "the table does not change");
                assert_eq!(d.store, Store::Facts, "`pending` and `file_active` are shown");
                let facts = d.next.facts();
                assert_eq!(
                    facts.pending,
                    Some(PendingFact {
                        active: "green".into(),
                        reason: GREEN_DOWN.into()
                    })
                );
                assert_eq!(facts.file_active, "green");
                assert_eq!(d.next.file.active, "green", "the file is accepted");
                assert_eq!(d.next.file_hash, 2);
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "target not ready, and the file changes pools too",
            given: green_down(),
            when: read(2, file("green", &["blue", "green", "canary"])),
            then: |_, d| {
                assert_eq!(d.next.pending, Some(route("green")));
                assert_eq!(d.next.route, route("blue"));
                assert_eq!(d.store, Store::Table, "the pools apply");
                assert!(matches!(
                    reloaded(d),
                    ReloadOutcome::Pending { generation: 2, .. }
                ));
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "target not ready, an override in force",
            given: with_ready(
                overridden_to_green(),
                &[("blue", UP), ("green", UP), ("canary", DOWN)],
            ),
            when: read(2, file("canary", &["blue", "green", "canary"])),
            then: |given, d| {
                assert_eq!(d.next.pending, Some(route("canary")));
                assert_eq!(d.next.route, route("green"), "the route stays");
                assert_eq!(d.next.overridden, given.overridden, "and the override too");
                assert_eq!(d.store, Store::Table, "canary is a new pool of the table");
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "target not ready, `force = true`",
            given: green_down(),
            when: read(2, forced_file("green", &["blue", "green"])),
            then: |_, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 2 });
                assert_eq!(d.next.route, route("green"), "force skips the gate");
                assert_eq!(d.next.previous, Some(route("blue")));
                assert_eq!((d.next.pending.clone(), d.next.source), (None, Source::File));
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "target is a pool new in this file (its readiness not known yet)",
            given: started(),
            when: read(2, file("purple", &["blue", "green", "purple"])),
            then: |_, d| {
                let ReloadOutcome::Pending {
                    generation: 2,
                    reason,
                } = reloaded(d)
                else {
                    panic!("expected pending, got {:?}", d.reply)
                };
                assert!(
                    reason.contains("purple: not in the routing table yet"),
                    "{reason}"
                );
                assert_eq!(d.store, Store::Table, "the new pool is stored first");
                // The writer then hands in the stored table's readiness: it applies.
                let then = decide(&d.next, became(&[("blue", UP), ("green", UP), ("purple", UP)]));
                assert_eq!(then.next.route, route("purple"));
                assert_eq!(then.next.generation, 3);
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "target not ready, and the file removes the pool in force",
            given: green_down(),
            when: read(2, file("green", &["green"])),
            then: |given, d| {
                let ReloadOutcome::Rejected(why) = reloaded(d) else {
                    panic!("expected a rejection, got {:?}", d.reply)
                };
                assert!(
                    why.contains("no longer defines pool `blue`") && why.contains(GREEN_DOWN),
                    "{why}"
                );
                assert_eq!(d.next.route, given.route);
                assert_eq!(d.next.file, given.file, "not accepted");
                assert_eq!(d.next.pending, None);
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "a switch pending, the file goes back to the route in force",
            given: pending_green(),
            when: read(3, file("blue", &["blue", "green"])),
            then: |given, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 1 });
                assert_eq!(d.next.pending, None, "cancelled");
                assert_eq!(d.next.route, route("blue"));
                assert_eq!(d.next.generation, given.generation);
                assert_eq!(d.store, Store::Facts);
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "a switch pending, the new target ready",
            given: with_ready(pending_green(), &[("blue", UP), ("green", DOWN), ("canary", UP)]),
            when: read(3, file("canary", &["blue", "green", "canary"])),
            then: |_, d| {
                assert_eq!(d.next.route, route("canary"), "applies");
                assert_eq!(d.next.pending, None, "replaces the pending switch");
                assert_eq!(d.next.previous, Some(route("blue")));
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "a switch pending, the new target not ready either",
            given: pending_green(),
            when: read(3, file("canary", &["blue", "green", "canary"])),
            then: |_, d| {
                assert_eq!(
                    d.next.pending,
                    Some(route("canary")),
                    "replaces the pending switch"
                );
                assert_eq!(d.next.route, route("blue"));
                assert_eq!(
                    d.next.facts().pending.map(|p| p.reason),
                    Some("canary: 0 of 3 endpoints healthy, needs 1".into())
                );
            },
        },
        // ---- the gate: a file that keeps its route -----------------------
        Row {
            event: "file accepted, same route as `file`",
            condition: "a switch pending",
            given: pending_green(),
            when: read(3, file("green", &["blue", "green", "canary"])),
            then: |given, d| {
                assert_eq!(d.next.pending, given.pending, "kept");
                assert_eq!(d.next.route, route("blue"));
                assert_eq!(d.store, Store::Table, "the pools apply");
            },
        },
        Row {
            event: "file accepted, same route as `file`",
            condition: "a switch pending and an override in force",
            given: overridden_then_pending(),
            when: read(
                3,
                with_min_healthy(file("green", &["blue", "green", "canary"]), "green", 2),
            ),
            then: |given, d| {
                assert_eq!(d.next.pending, given.pending, "kept");
                assert_eq!(d.next.overridden, given.overridden, "kept");
                assert_eq!(d.next.route, route("canary"));
                assert_eq!(
                    reloaded(d),
                    ReloadOutcome::Pending {
                        generation: given.generation,
                        reason: GREEN_DOWN.into()
                    }
                );
                assert_eq!(
                    d.store,
                    Store::Nothing,
                    "min_healthy is no part of the table: the writer recomputes readiness"
                );
            },
        },
        Row {
            event: "file accepted, same route as `file`",
            condition: "a switch pending, now `force = true`",
            given: pending_green(),
            when: read(3, forced_file("green", &["blue", "green"])),
            then: |_, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 2 });
                assert_eq!(d.next.route, route("green"), "the pending switch applies");
                assert_eq!(d.next.pending, None);
                assert_eq!(d.next.previous, Some(route("blue")));
            },
        },
        // ---- the gate: readiness ------------------------------------------
        Row {
            event: "a pool turns ready",
            condition: "`pending` targets it",
            given: pending_green(),
            when: became(&[("blue", UP), ("green", r(1, 3, 1)), ("canary", DOWN)]),
            then: |given, d| {
                assert_eq!(d.reply, Reply::Nothing);
                assert_eq!(d.next.route, route("green"), "applied as a file switch");
                assert_eq!(d.next.pending, None);
                assert_eq!(d.next.previous, Some(route("blue")));
                assert_eq!(d.next.overridden, None);
                assert_eq!(
                    (d.next.generation, d.next.source),
                    (given.generation + 1, Source::File)
                );
                assert_eq!(d.store, Store::Table);
            },
        },
        Row {
            event: "a pool turns ready",
            condition: "`pending` targets it, an override in force",
            given: overridden_then_pending(),
            when: became(&[("blue", UP), ("green", UP), ("canary", UP)]),
            then: |_, d| {
                assert_eq!(d.next.route, route("green"));
                assert_eq!(d.next.overridden, None, "the file's intent is newer");
                assert_eq!(d.next.previous, Some(route("canary")));
            },
        },
        Row {
            event: "a pool turns ready",
            condition: "`pending` targets another pool",
            given: pending_green(),
            when: became(&[("blue", UP), ("green", DOWN), ("canary", UP)]),
            then: |given, d| {
                assert_eq!(d.next.pending, given.pending);
                assert_eq!(d.next.route, route("blue"));
                assert_eq!(d.store, Store::Facts, "the readiness is shown");
            },
        },
        Row {
            event: "readiness changes",
            condition: "the pending target is still not ready",
            given: pending_green(),
            when: became(&[("blue", UP), ("green", r(1, 3, 2)), ("canary", DOWN)]),
            then: |_, d| {
                assert_eq!(d.next.pending, Some(route("green")));
                assert_eq!(
                    d.next.facts().pending.map(|p| p.reason),
                    Some("green: 1 of 3 endpoints healthy, needs 2".into()),
                    "the reason follows"
                );
                assert_eq!(d.store, Store::Facts);
            },
        },
        Row {
            event: "readiness changes",
            condition: "the active pool is no longer ready",
            given: started(),
            when: became(&[("blue", DOWN), ("green", UP), ("canary", UP)]),
            then: |_, d| {
                assert_eq!(d.next.route, route("blue"), "the gate never switches by itself");
                assert_eq!(d.store, Store::Facts);
            },
        },
        Row {
            event: "readiness changes",
            condition: "nothing changed",
            given: pending_green(),
            when: became(&[("blue", UP), ("green", DOWN), ("canary", DOWN)]),
            then: |_, d| assert_eq!(d.store, Store::Nothing),
        },
        Row {
            event: "a pool with no endpoint",
            condition: "`min_healthy = 0`",
            given: pending_green(),
            when: became(&[("blue", UP), ("green", r(0, 0, 0))]),
            then: |_, d| {
                assert_eq!(d.next.route, route("blue"), "never ready");
                assert_eq!(
                    d.next.facts().pending.map(|p| p.reason),
                    Some("green: no endpoint (a pool with no endpoint is never ready)".into())
                );
            },
        },
        // ---- the gate: admin ----------------------------------------------
        Row {
            event: "admin switch to R",
            condition: "R is the current route, and not ready (\"already active\" comes before the gate)",
            given: with_ready(started(), &[("blue", DOWN), ("green", UP)]),
            when: switch("blue", None),
            then: |given, d| {
                assert!(!switched(d).changed);
                assert_eq!(d.next, *given);
            },
        },
        Row {
            event: "admin switch to R",
            condition: "R is the current route, a file switch pending",
            given: pending_green(),
            when: switch("blue", None),
            then: |given, d| {
                let o = switched(d);
                assert_eq!((o.changed, o.generation), (false, given.generation));
                assert_eq!(d.next.pending, None, "cancelled: the later intent wins");
                assert_eq!(
                    d.next.overridden,
                    Some(Override {
                        route: route("blue"),
                        source: Source::Admin,
                        reason: None
                    }),
                    "the route in force now differs from the file's: an override"
                );
                assert_eq!(d.store, Store::Facts);
                assert_eq!(d.persist, None, "persist is off");
            },
        },
        Row {
            event: "admin switch to R",
            condition: "R is the current route, a file switch pending, persist on",
            given: ControlState {
                persist: true,
                ..pending_green()
            },
            when: switch("blue", None),
            then: |_, d| {
                assert_eq!(d.persist, Some(route("blue")), "the file is made to say it");
            },
        },
        Row {
            event: "admin switch",
            condition: "R not ready, no `force`",
            given: green_down(),
            when: switch("green", None),
            then: |given, d| {
                assert_eq!(refused(d), SwitchError::NotReady(GREEN_DOWN.into()));
                assert_eq!(refused(d).to_string(), GREEN_DOWN, "the 409's reason");
                assert_eq!(d.next, *given, "nothing changes");
                assert_eq!(d.store, Store::Nothing);
            },
        },
        Row {
            event: "admin switch",
            condition: "R not ready, `force`",
            given: green_down(),
            when: forced("green"),
            then: |_, d| {
                assert!(switched(d).changed);
                assert_eq!(d.next.route, route("green"));
                assert_eq!(d.next.previous, Some(route("blue")));
            },
        },
        Row {
            event: "admin switch",
            condition: "otherwise, a file switch pending",
            given: with_ready(
                after(
                    &green_down(),
                    read(2, file("green", &["blue", "green", "canary"])),
                ),
                &[("blue", UP), ("green", DOWN), ("canary", UP)],
            ),
            when: switch("canary", None),
            then: |_, d| {
                assert_eq!(switched(d).active, "canary");
                assert_eq!(d.next.pending, None, "cancelled");
                assert_eq!(d.next.overridden.as_ref().map(|o| o.source), Some(Source::Admin));
            },
        },
        Row {
            event: "admin switch",
            condition: "to the pending pool, forced",
            given: pending_green(),
            when: forced("green"),
            then: |_, d| {
                assert_eq!(d.next.route, route("green"));
                assert_eq!(d.next.pending, None);
                assert!(d.next.overridden.is_some(), "an admin switch is an override");
            },
        },
        // ---- the gate: rollback -------------------------------------------
        Row {
            event: "rollback",
            condition: "`previous` not ready, no `force`",
            given: overridden_to_green_blue_down(),
            when: rollback(None),
            then: |given, d| {
                assert_eq!(
                    refused(d),
                    SwitchError::NotReady("blue: 0 of 3 endpoints healthy, needs 1".into())
                );
                assert_eq!(d.next, *given, "nothing changes; `previous` is kept");
            },
        },
        Row {
            event: "rollback",
            condition: "`previous` not ready, `force`",
            given: overridden_to_green_blue_down(),
            when: Event::Rollback {
                if_generation: None,
                force: true,
            },
            then: |_, d| {
                assert_eq!(switched(d).active, "blue");
                assert_eq!(d.next.previous, None);
            },
        },
        Row {
            event: "rollback",
            condition: "otherwise, a file switch pending",
            given: {
                // Blue → canary by the file, then the file says green (not ready).
                let s = ControlState {
                    file: file("blue", &["blue", "green", "canary"]),
                    ..with_ready(started(), &[("blue", UP), ("green", DOWN), ("canary", UP)])
                };
                let s = after(&s, read(2, file("canary", &["blue", "green", "canary"])));
                after(&s, read(3, file("green", &["blue", "green", "canary"])))
            },
            when: rollback(None),
            then: |given, d| {
                assert_eq!(given.pending, Some(route("green")), "the row's premise");
                assert_eq!(switched(d).active, "blue");
                assert_eq!(d.next.pending, None, "cancelled");
                assert_eq!(
                    d.next.overridden.as_ref().map(|o| o.source),
                    Some(Source::Rollback)
                );
            },
        },
    ]
}

/// Decides each row from its state and checks the decision; a failure names
/// the row (`event | condition`).
fn check_rows(rows: Vec<Row>) {
    for row in rows {
        let decision = decide(&row.given, row.when.clone());
        let check = std::panic::catch_unwind(|| (row.then)(&row.given, &decision));
        if let Err(panic) = check {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
                .unwrap_or_default();
            panic!(
                "row `{} | {}` (event {:?}):\n{why}\ndecision: {decision:#?}",
                row.event, row.condition, row.when
            );
        }
    }
}

#[test]
fn the_decision_table() {
    check_rows(rows());
}

#[test]
fn every_store_moves_the_generation_by_one_and_only_then() {
    let mut state = with_ready(started(), &[("blue", UP), ("green", UP)]);
    let events = [
        switch("green", None),
        read(2, file("blue", &["blue", "green", "canary"])),
        rollback(None),
        read(3, file("canary", &["blue", "green", "canary"])),
        became(&[("blue", UP), ("green", UP), ("canary", DOWN)]),
        switch("canary", None),
        became(&[("blue", UP), ("green", UP), ("canary", UP)]),
        read(3, file("canary", &["blue", "green", "canary"])),
    ];
    for event in events {
        let d = decide(&state, event);
        let moved = d.next.generation - state.generation;
        assert_eq!(moved, u64::from(d.store == Store::Table), "{d:?}");
        state = d.next;
    }
}

// ---- progressive delivery: splits and the automatic rollback ---------------

/// `POST /switch {"to": to, "weight": w}`.
fn weighted(to: &str, w: u8) -> Event {
    Event::Switch {
        to: to.into(),
        if_generation: None,
        force: false,
        weight: Some(w),
    }
}

fn split(weights: &[(&str, u8)], before: &str) -> Route {
    Route::split(weights.iter().map(|(p, w)| (p.to_string(), *w)), before)
}

/// A file with `[split] weights`.
fn split_file(active: &str, pools: &[&str], weights: &[(&str, u8)]) -> Desired {
    let mut w: Vec<(String, u8)> = weights
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| (p.to_string(), *n))
        .collect();
    w.sort();
    Desired {
        split: Some(w),
        ..file(active, pools)
    }
}

/// `[rollback]`: 10 requests at least, 10 % errors at most, a minute.
const RULES: crate::table::RollbackRules = crate::table::RollbackRules {
    window: std::time::Duration::from_secs(60),
    max_error_ppm: 100_000,
    min_requests: 10,
};

/// A file (as [`file`]) with `[rollback]` ([`RULES`]).
fn watched_file(active: &str, pools: &[&str]) -> Desired {
    Desired {
        rollback: Some(RULES),
        ..file(active, pools)
    }
}

/// Started from a file with `[rollback]`, both pools ready.
fn watching() -> ControlState {
    ControlState {
        file: watched_file("blue", &["blue", "green"]),
        ..started()
    }
}

/// Watching, then `POST /switch {"to":"green"}`: a window on green is open.
fn switched_to_green_watched() -> ControlState {
    after(&watching(), switch("green", None))
}

/// Switched to green watched, then green's errors (20 of 20) rolled it
/// back to blue by itself.
fn rolled_back_automatically() -> ControlState {
    let s = switched_to_green_watched();
    after(&s, outcomes(&s, 20, 20))
}

/// Started, then `POST /switch {"to":"green","weight":w}`.
fn split_to_green(w: u8) -> ControlState {
    after(&started(), weighted("green", w))
}

/// What the outcome counter reports for the window of `generation`.
fn counted(generation: u64, requests: u64, errors: u64) -> Event {
    Event::Outcomes {
        generation,
        requests,
        errors,
    }
}

/// What the outcome counter reports for `state`'s window (0: none open).
fn outcomes(state: &ControlState, requests: u64, errors: u64) -> Event {
    counted(
        state.window.as_ref().map_or(0, |w| w.generation),
        requests,
        errors,
    )
}

fn progressive_rows() -> Vec<Row> {
    vec![
        Row {
            event: "admin switch to R (a split)",
            condition: "the new pool is ready",
            given: started(),
            when: weighted("green", 10),
            then: |given, d| {
                let o = switched(d);
                assert!(o.changed);
                assert_eq!(o.active, "blue", "the largest share is the active pool");
                assert_eq!(
                    o.split,
                    Some(BTreeMap::from([("blue".into(), 90), ("green".into(), 10)]))
                );
                assert_eq!(d.next.route, split(&[("blue", 90), ("green", 10)], "blue"));
                assert_eq!(
                    d.next.generation,
                    given.generation + 1,
                    "a split is routing intent"
                );
                assert_eq!(d.store, Store::Table, "one store");
                assert_eq!(d.next.previous, Some(route("blue")));
                assert_eq!(d.next.overridden.as_ref().map(|o| o.source), Some(Source::Admin));
            },
        },
        Row {
            event: "admin switch to R (a split)",
            condition: "the pool that gets weight is not ready, no force",
            given: green_down(),
            when: weighted("green", 10),
            then: |given, d| {
                assert_eq!(refused(d), SwitchError::NotReady(GREEN_DOWN.into()));
                assert_eq!(&d.next, given);
            },
        },
        Row {
            event: "admin switch to R (a split change)",
            condition: "a split is in force; the gate does not apply to pools that already have weight",
            given: with_ready(split_to_green(10), &[("blue", UP), ("green", DOWN)]),
            when: weighted("green", 50),
            then: |_, d| {
                let o = switched(d);
                assert_eq!(o.active, "blue", "a tie goes to the pool active before");
                assert_eq!(d.next.route.weight("green"), 50);
                assert_eq!(d.next.route.weight("blue"), 50);
                assert_eq!(
                    d.next.previous,
                    Some(split(&[("blue", 90), ("green", 10)], "blue")),
                    "previous is the route before, a split"
                );
            },
        },
        Row {
            event: "admin switch to R (a split change)",
            condition: "more than half to the new pool",
            given: split_to_green(50),
            when: weighted("green", 90),
            then: |_, d| {
                assert_eq!(switched(d).active, "green", "the largest share is active");
                assert_eq!(d.next.route.weight("blue"), 10);
            },
        },
        Row {
            event: "admin switch to R (no weight)",
            condition: "a split is in force",
            given: split_to_green(50),
            when: switch("green", None),
            then: |_, d| {
                assert_eq!(
                    d.next.route,
                    route("green"),
                    "{{\"to\":\"green\"}} ends the split"
                );
                assert!(switched(d).split.is_none());
            },
        },
        Row {
            event: "admin switch to R (a split)",
            condition: "weight 100 / weight 0",
            given: started(),
            when: weighted("green", 100),
            then: |_, d| {
                assert_eq!(d.next.route, route("green"), "100: no split, all to green");
                let back = decide(&d.next, weighted("blue", 0));
                assert_eq!(
                    back.next.route,
                    route("green"),
                    "0 to blue: all to green, unchanged"
                );
                assert!(!switched(&back).changed);
            },
        },
        Row {
            event: "admin switch to R (a split)",
            condition: "the weight is over 100, or no other pool gets the rest",
            given: started(),
            when: weighted("green", 101),
            then: |given, d| {
                assert!(matches!(refused(d), SwitchError::BadWeight(_)));
                assert_eq!(&d.next, given);
                let e = refused(&decide(given, weighted("blue", 90)));
                assert!(e.to_string().contains("no other pool"), "{e}");
            },
        },
        Row {
            event: "admin switch to R (a split)",
            condition: "the pool is unknown",
            given: started(),
            when: weighted("purple", 10),
            then: |_, d| assert!(matches!(refused(d), SwitchError::UnknownPool { .. })),
        },
        Row {
            event: "file accepted, new route (a split)",
            condition: "target ready",
            given: started(),
            when: read(
                2,
                split_file("blue", &["blue", "green"], &[("blue", 90), ("green", 10)]),
            ),
            then: |_, d| {
                assert_eq!(reloaded(d), ReloadOutcome::Applied { generation: 2 });
                assert_eq!(d.next.route, split(&[("blue", 90), ("green", 10)], "blue"));
                assert_eq!(d.next.previous, Some(route("blue")));
                assert_eq!(d.next.facts().file_active, "blue");
            },
        },
        Row {
            event: "file accepted, new route (a split)",
            condition: "the pool that gets weight is not ready",
            given: green_down(),
            when: read(
                2,
                split_file("blue", &["blue", "green"], &[("blue", 90), ("green", 10)]),
            ),
            then: |given, d| {
                assert!(matches!(reloaded(d), ReloadOutcome::Pending { .. }));
                assert_eq!(d.next.route, given.route, "the split waits");
                assert_eq!(
                    d.next.pending,
                    Some(split(&[("blue", 90), ("green", 10)], "blue"))
                );
            },
        },
        Row {
            event: "file accepted, same route as `file`",
            condition: "a split override is in force, its pools still defined",
            given: split_to_green(10),
            when: read(2, file("blue", &["blue", "green", "canary"])),
            then: |given, d| {
                assert_eq!(d.next.route, given.route, "the split override stays");
                assert!(d.next.overridden.is_some());
            },
        },
        Row {
            event: "file accepted, same route as `file`",
            condition: "it removes a pool the split override sends to",
            given: split_to_green(10),
            when: read(2, file("blue", &["blue"])),
            then: |_, d| {
                let ReloadOutcome::Rejected(why) = reloaded(d) else {
                    panic!("expected a rejection, got {:?}", d.reply)
                };
                assert!(why.contains("no longer defines pool `green`"), "{why}");
            },
        },
        Row {
            event: "rollback",
            condition: "after a split change",
            given: after(&split_to_green(10), weighted("green", 50)),
            when: rollback(None),
            then: |_, d| {
                assert_eq!(d.next.route, split(&[("blue", 90), ("green", 10)], "blue"));
                assert_eq!(d.next.previous, None);
            },
        },
        // ---- the automatic rollback ----------------------------------------
        Row {
            event: "admin switch",
            condition: "the file has [rollback]",
            given: watching(),
            when: switch("green", None),
            then: |_, d| {
                assert_eq!(
                    d.next.window,
                    Some(Window {
                        pools: vec!["green".into()],
                        generation: 2
                    }),
                    "a forward switch opens the window on the new pool"
                );
            },
        },
        Row {
            event: "admin switch",
            condition: "the file has no [rollback]",
            given: started(),
            when: switch("green", None),
            then: |_, d| assert_eq!(d.next.window, None),
        },
        Row {
            event: "file accepted, new route",
            condition: "target ready, the file has [rollback]",
            given: watching(),
            when: read(2, watched_file("green", &["blue", "green"])),
            then: |_, d| {
                assert_eq!(d.next.window.as_ref().map(|w| w.generation), Some(2));
                assert_eq!(
                    d.next.window.as_ref().map(|w| w.pools.clone()),
                    Some(vec!["green".into()])
                );
            },
        },
        Row {
            event: "admin switch (a split change)",
            condition: "the file has [rollback]",
            given: after(&watching(), weighted("green", 10)),
            when: weighted("green", 50),
            then: |given, d| {
                let w = d.next.window.clone().expect("a split change opens a window");
                assert_eq!(w.pools, ["green"], "the pool whose share went up");
                assert_ne!(Some(w), given.window, "a new window");
            },
        },
        Row {
            event: "rollback",
            condition: "a window is open",
            given: switched_to_green_watched(),
            when: rollback(None),
            then: |_, d| assert_eq!(d.next.window, None, "a rollback closes it and opens none"),
        },
        Row {
            event: "error rate past the threshold",
            condition: "window open, `previous` ready",
            given: switched_to_green_watched(),
            when: counted(2, 20, 5),
            then: |given, d| {
                assert_eq!(d.next.route, route("blue"), "back to the previous route");
                let o = d.next.overridden.clone().expect("an override");
                assert_eq!(o.source, Source::Auto);
                let reason = o.reason.expect("with the reason");
                assert!(reason.contains("5 errors in 20 requests"), "{reason}");
                assert_eq!(d.next.previous, None, "previous consumed");
                assert_eq!(d.next.window, None, "window closed");
                assert_eq!(d.next.pending, None);
                assert_eq!(
                    (d.next.source, d.next.generation),
                    (Source::Auto, given.generation + 1)
                );
                assert_eq!(d.store, Store::Table);
                assert_eq!(d.next.facts().override_reason, Some(reason));
                assert_eq!(d.persist, None, "an automatic rollback is not persisted");
            },
        },
        Row {
            event: "error rate past the threshold",
            condition: "a file switch was pending (cancelled)",
            given: {
                let mut s = switched_to_green_watched();
                s.pending = Some(route("canary"));
                s
            },
            when: counted(2, 20, 5),
            then: |_, d| assert_eq!(d.next.pending, None),
        },
        Row {
            event: "error rate under the threshold",
            condition: "window open",
            given: switched_to_green_watched(),
            when: counted(2, 100, 10),
            then: |given, d| {
                assert_eq!(&d.next, given, "10 % is not past 10 %");
                assert_eq!(d.store, Store::Nothing);
            },
        },
        Row {
            event: "error rate past the threshold",
            condition: "fewer than min_requests",
            given: switched_to_green_watched(),
            when: counted(2, 9, 9),
            then: |given, d| assert_eq!(&d.next, given, "not judged yet"),
        },
        Row {
            event: "error rate past the threshold",
            condition: "`previous` not ready",
            given: with_ready(switched_to_green_watched(), &[("blue", DOWN), ("green", UP)]),
            when: counted(2, 20, 20),
            then: |given, d| {
                assert_eq!(d.next.route, given.route, "no switch");
                let why = d.next.rollback_blocked.clone().expect("the reason");
                assert!(why.contains("blue: 0 of 3 endpoints healthy"), "{why}");
                assert_eq!(d.store, Store::Facts, "the reason is shown in /status");
                assert_eq!(d.next.window, given.window, "the window stays open");
            },
        },
        Row {
            event: "error rate past the threshold",
            condition: "the count is of an older window",
            given: {
                let s = ControlState {
                    file: watched_file("blue", &["blue", "green", "canary"]),
                    ..watching()
                };
                let s = after(&s, switch("green", None));
                let s = after(&s, switch("canary", None));
                assert_eq!(s.window.as_ref().map(|w| w.generation), Some(3));
                s
            },
            when: counted(2, 20, 20),
            then: |given, d| assert_eq!(&d.next, given),
        },
        Row {
            event: "error rate past the threshold",
            condition: "no window (after an automatic rollback: never flip-flop)",
            given: rolled_back_automatically(),
            when: counted(3, 1000, 1000),
            then: |given, d| {
                assert_eq!(given.window, None, "the row's premise");
                assert_eq!(&d.next, given);
            },
        },
        Row {
            event: "the window's time is up",
            condition: "window open",
            given: switched_to_green_watched(),
            when: Event::WindowOver { generation: 2 },
            then: |_, d| {
                assert_eq!(d.next.window, None);
                assert_eq!(d.next.route, route("green"));
            },
        },
        Row {
            event: "file accepted, new route",
            condition: "an automatic rollback override is in force",
            given: rolled_back_automatically(),
            when: read(2, watched_file("green", &["blue", "green"])),
            then: |_, d| {
                assert_eq!(d.next.overridden, None, "cleared like any override");
                assert_eq!(d.next.route, route("green"));
                assert!(d.next.window.is_some(), "a forward switch: a new window");
            },
        },
    ]
}

#[test]
fn the_decision_table_of_progressive_delivery() {
    check_rows(progressive_rows());
}

#[test]
fn a_route_of_weights_is_normalised() {
    assert_eq!(split(&[("green", 100), ("blue", 0)], "blue"), route("green"));
    assert_eq!(split(&[("green", 0), ("blue", 0)], "blue"), route("blue"));
    let r = split(&[("green", 50), ("blue", 50)], "green");
    assert_eq!(r.active, "green", "a tie goes to the pool active before");
    assert_eq!(
        r,
        split(&[("blue", 50), ("green", 50)], "blue"),
        "equal shares are equal routes"
    );
    assert_eq!(r.describe(), "blue 50, green 50");
}
