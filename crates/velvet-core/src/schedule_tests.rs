use super::*;

const NONE: &[Blackout] = &[];

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn slots(cron: &str, tz: &str, window: Duration, jitter: Duration) -> Slots {
    Slots::new(cron, tz, window, jitter).unwrap()
}

fn seen(first: &str) -> Standing {
    Standing {
        first_seen: t(first),
        ..Standing::default()
    }
}

#[test]
fn a_bad_cron_names_the_field_and_its_range() {
    let e = parse_cron("0 25 * * *").unwrap_err();
    assert!(
        e.contains("field 2 (hour) `25`") && e.contains("0-23"),
        "{e}"
    );
    let e = parse_cron("61 3 * * MON").unwrap_err();
    assert!(e.contains("field 1 (minute)") && e.contains("0-59"), "{e}");
    let e = parse_cron("0 3 * 13 *").unwrap_err();
    assert!(
        e.contains("field 4 (month)") && e.contains("JAN-DEC"),
        "{e}"
    );
    let e = parse_cron("0 3 * * FUNDAY").unwrap_err();
    assert!(e.contains("field 5 (day of week)"), "{e}");
    let e = parse_cron("0 3 * *").unwrap_err();
    assert!(e.contains("4 field(s)") && e.contains("five"), "{e}");
    let e = parse_cron("0 0 3 * * MON").unwrap_err();
    assert!(e.contains("6 field(s)"), "{e}");
    assert!(parse_cron("*/15 2-4 1,15 JAN-MAR MON-FRI").is_ok());
}

#[test]
fn an_unknown_time_zone_is_named() {
    let e = parse_timezone("Europe/Atlantis").unwrap_err();
    assert!(e.contains("`Europe/Atlantis`") && e.contains("IANA"), "{e}");
    assert!(parse_timezone("Europe/Berlin").is_ok());
}

#[test]
fn slots_follow_the_zone_wall_clock_across_dst() {
    let s = slots("0 3 * * MON", "Europe/Berlin", mins(60), mins(0));
    // Winter: 03:00 CET is 02:00 UTC; summer: 03:00 CEST is 01:00 UTC.
    assert_eq!(
        s.after(t("2026-01-01T00:00:00Z")),
        Some(t("2026-01-05T02:00:00Z"))
    );
    assert_eq!(
        s.after(t("2026-07-01T00:00:00Z")),
        Some(t("2026-07-06T01:00:00Z"))
    );
}

#[test]
fn a_slot_in_the_spring_gap_runs_once_right_after_it() {
    // Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
    let s = slots("30 2 * * *", "Europe/Berlin", mins(60), mins(0));
    let day = s.after(t("2026-03-28T12:00:00Z")).unwrap();
    assert_eq!(
        day,
        t("2026-03-29T01:00:00Z"),
        "03:00 CEST, the first instant after the gap"
    );
    assert_eq!(
        s.after(day),
        Some(t("2026-03-30T00:30:00Z")),
        "02:30 CEST next day"
    );
}

#[test]
fn a_slot_in_the_autumn_repeat_runs_once() {
    // Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET, so 02:30 happens twice.
    let s = slots("30 2 * * *", "Europe/Berlin", mins(60), mins(0));
    let first = s.after(t("2026-10-24T12:00:00Z")).unwrap();
    assert_eq!(first, t("2026-10-25T00:30:00Z"), "02:30 CEST");
    assert_eq!(
        s.after(first),
        Some(t("2026-10-26T01:30:00Z")),
        "not 02:30 CET of the same day: one slot per wall-clock time"
    );
}

#[test]
fn a_schedule_starts_within_jitter_of_its_slot_and_the_same_on_every_pass() {
    let s = slots("0 3 * * *", "UTC", mins(120), mins(10));
    let cadence = Cadence::Slots(Box::new(s));
    let st = seen("2026-01-01T00:00:00Z");
    let before = next("tok", &cadence, NONE, &st, t("2026-01-02T02:00:00Z"));
    let Verdict::Wait {
        next: Some(start), ..
    } = before.verdict
    else {
        panic!("{before:?}")
    };
    assert!(start >= t("2026-01-02T03:00:00Z") && start < t("2026-01-02T03:10:00Z"));
    let again = next("tok", &cadence, NONE, &st, t("2026-01-02T02:30:00Z"));
    assert_eq!(again, before, "stable across passes");
    let at = next("tok", &cadence, NONE, &st, start);
    assert_eq!(
        at.verdict,
        Verdict::Start {
            slot: t("2026-01-02T03:00:00Z")
        }
    );
    // Spread: tokens do not all start at the same second.
    let starts: std::collections::HashSet<_> = (0..20)
        .map(|i| {
            match next(
                &format!("t{i}"),
                &cadence,
                NONE,
                &st,
                t("2026-01-02T02:00:00Z"),
            )
            .verdict
            {
                Verdict::Wait { next: Some(n), .. } => n,
                v => panic!("{v:?}"),
            }
        })
        .collect();
    assert!(starts.len() > 10, "{starts:?}");
}

#[test]
fn a_slot_taken_is_not_started_again() {
    let cadence = Cadence::Slots(Box::new(slots("0 3 * * *", "UTC", mins(120), mins(0))));
    let st = Standing {
        slot_taken: Some(t("2026-01-02T03:00:00Z")),
        ..seen("2026-01-01T00:00:00Z")
    };
    let n = next("tok", &cadence, NONE, &st, t("2026-01-02T03:30:00Z"));
    assert_eq!(
        n.verdict,
        Verdict::Wait {
            next: Some(t("2026-01-03T03:00:00Z")),
            blackout: None
        }
    );
    assert_eq!(n.missed, None);
}

#[test]
fn slots_whose_window_closed_are_missed_once_and_the_open_one_is_used() {
    let cadence = Cadence::Slots(Box::new(slots("0 * * * *", "UTC", mins(30), mins(0))));
    let st = Standing {
        slot_taken: Some(t("2026-01-02T00:00:00Z")),
        ..seen("2026-01-01T00:00:00Z")
    };
    // Down from 00:00 to 03:10: the 01:00 and 02:00 windows closed, 03:00's is open.
    let n = next("tok", &cadence, NONE, &st, t("2026-01-02T03:10:00Z"));
    let m = n.missed.unwrap();
    assert_eq!((m.slot, m.count), (t("2026-01-02T02:00:00Z"), 2));
    assert!(m.reason.contains("not running"), "{}", m.reason);
    assert_eq!(
        n.verdict,
        Verdict::Start {
            slot: t("2026-01-02T03:00:00Z")
        }
    );
    // A busy token misses its slot for that reason.
    let busy = Standing { busy: true, ..st };
    let n = next("tok", &cadence, NONE, &busy, t("2026-01-02T01:40:00Z"));
    assert!(n.missed.unwrap().reason.contains("unfinished"));
}

#[test]
fn years_down_on_a_frequent_schedule_jump_ahead() {
    let cadence = Cadence::Slots(Box::new(slots("* * * * *", "UTC", mins(1), mins(0))));
    let st = Standing {
        slot_taken: Some(t("2020-01-01T00:00:00Z")),
        ..seen("2020-01-01T00:00:00Z")
    };
    let n = next("tok", &cadence, NONE, &st, t("2026-01-01T00:00:30Z"));
    assert_eq!(
        n.verdict,
        Verdict::Start {
            slot: t("2026-01-01T00:00:00Z")
        }
    );
    assert!(n.missed.unwrap().count >= SLOT_SEARCH);
}

fn between(name: &str, from: &str, to: &str) -> Blackout {
    Blackout::Between {
        name: name.into(),
        from: t(from),
        to: t(to),
    }
}

#[test]
fn overlapping_blackouts_merge() {
    let b = [
        between("a", "2026-01-01T00:00:00Z", "2026-01-05T00:00:00Z"),
        between("b", "2026-01-04T00:00:00Z", "2026-01-08T00:00:00Z"),
        between("c", "2026-01-08T00:00:00Z", "2026-01-09T00:00:00Z"),
    ];
    assert_eq!(
        blackout_at(&b, t("2026-01-02T00:00:00Z")),
        Some(InForce {
            name: "a".into(),
            until: t("2026-01-09T00:00:00Z")
        })
    );
    assert_eq!(blackout_at(&b, t("2026-01-09T00:00:00Z")), None);
}

#[test]
fn a_weekend_blackout_recurs_in_its_zone() {
    let weekends = Blackout::Recurring {
        name: "weekends".into(),
        starts: Box::new(slots("0 0 * * SAT", "UTC", mins(0), mins(0))),
        duration: TimeDelta::hours(48),
    };
    let b = [weekends];
    // 2026-01-03 is a Saturday.
    assert!(blackout_at(&b, t("2026-01-02T23:59:00Z")).is_none());
    assert_eq!(
        blackout_at(&b, t("2026-01-04T12:00:00Z")).unwrap().until,
        t("2026-01-05T00:00:00Z")
    );
    assert!(blackout_at(&b, t("2026-01-05T00:00:00Z")).is_none());
}

#[test]
fn a_blackout_pushes_a_start_within_the_window_or_loses_the_slot() {
    let cadence = Cadence::Slots(Box::new(slots("0 3 * * *", "UTC", mins(120), mins(0))));
    let st = seen("2026-01-01T00:00:00Z");
    let short = [between(
        "deploy",
        "2026-01-02T02:30:00Z",
        "2026-01-02T04:00:00Z",
    )];
    let n = next("tok", &cadence, &short[..], &st, t("2026-01-02T03:00:00Z"));
    assert_eq!(
        n.verdict,
        Verdict::Wait {
            next: Some(t("2026-01-02T04:00:00Z")),
            blackout: Some("deploy".into())
        }
    );
    let long = [between(
        "freeze",
        "2026-01-02T00:00:00Z",
        "2026-01-02T06:00:00Z",
    )];
    let n = next("tok", &cadence, &long[..], &st, t("2026-01-02T03:00:00Z"));
    assert_eq!(
        n.verdict,
        Verdict::Wait {
            next: Some(t("2026-01-03T03:00:00Z")),
            blackout: Some("freeze".into())
        },
        "the next start is the next slot's"
    );
    let n = next("tok", &cadence, &long[..], &st, t("2026-01-02T05:00:00Z"));
    let m = n.missed.unwrap();
    assert_eq!(m.slot, t("2026-01-02T03:00:00Z"));
    assert!(m.reason.contains("blackout `freeze`"), "{}", m.reason);
}

#[test]
fn rotate_every_counts_from_the_last_success_and_retries_a_failure_after_a_pause() {
    let cadence = Cadence::every(Duration::from_secs(90 * 86400));
    let ok = t("2026-01-01T00:00:00Z");
    let due = t("2026-04-01T00:00:00Z");
    let st = Standing {
        last_rotated_at: Some(ok),
        slot_taken: Some(ok),
        ..seen("2025-06-01T00:00:00Z")
    };
    let n = next("tok", &cadence, NONE, &st, t("2026-03-01T00:00:00Z"));
    assert_eq!(
        n.verdict,
        Verdict::Wait {
            next: Some(due),
            blackout: None
        }
    );
    let late = t("2026-04-03T10:00:00Z");
    assert_eq!(
        next("tok", &cadence, NONE, &st, late).verdict,
        Verdict::Start { slot: due },
        "down over the due time: start once, now"
    );
    // Tried at the due time; the job rolled back at 00:20: try again an hour after that.
    let tried = Standing {
        slot_taken: Some(due),
        last_finished: Some(t("2026-04-01T00:20:00Z")),
        ..st
    };
    let n = next("tok", &cadence, NONE, &tried, t("2026-04-01T00:30:00Z"));
    assert_eq!(
        n.verdict,
        Verdict::Wait {
            next: Some(t("2026-04-01T01:20:00Z")),
            blackout: None
        }
    );
    // An unfinished job holds it; it stays due (overdue), never moved a whole interval.
    let busy = Standing { busy: true, ..st };
    assert_eq!(
        next("tok", &cadence, NONE, &busy, late).verdict,
        Verdict::Wait {
            next: Some(due),
            blackout: None
        }
    );
}

#[test]
fn rotate_every_waits_out_a_blackout() {
    let cadence = Cadence::every(mins(60));
    let st = seen("2026-01-01T00:00:00Z");
    let b = [between(
        "freeze",
        "2026-01-01T00:30:00Z",
        "2026-01-01T02:00:00Z",
    )];
    let n = next("tok", &cadence, &b[..], &st, t("2026-01-01T00:10:00Z"));
    assert_eq!(
        n.verdict,
        Verdict::Wait {
            next: Some(t("2026-01-01T02:00:00Z")),
            blackout: None
        }
    );
    let n = next("tok", &cadence, &b[..], &st, t("2026-01-01T01:10:00Z"));
    assert_eq!(
        n.verdict,
        Verdict::Wait {
            next: Some(t("2026-01-01T02:00:00Z")),
            blackout: Some("freeze".into())
        }
    );
    assert_eq!(
        next("tok", &cadence, &b[..], &st, t("2026-01-01T02:00:00Z")).verdict,
        Verdict::Start {
            slot: t("2026-01-01T01:00:00Z")
        }
    );
}

#[test]
fn a_plan_of_the_blackouts_answers_as_the_list_does() {
    let weekends = Blackout::Recurring {
        name: "weekends".into(),
        starts: Box::new(slots("0 0 * * SAT", "Europe/Berlin", mins(0), mins(0))),
        duration: TimeDelta::hours(48),
    };
    let list = [
        between("freeze", "2026-01-09T12:00:00Z", "2026-01-10T06:00:00Z"),
        weekends,
        between("late", "2026-01-27T00:00:00Z", "2026-02-20T00:00:00Z"),
    ];
    let (from, to) = (t("2026-01-01T00:00:00Z"), t("2026-02-01T00:00:00Z"));
    let plan = Plan::new(&list, from, to);
    let mut at = t("2025-12-30T00:00:00Z");
    while at < t("2026-02-03T00:00:00Z") {
        assert_eq!(plan.at(at), blackout_at(&list, at), "at {at}");
        at += TimeDelta::minutes(17);
    }
}
