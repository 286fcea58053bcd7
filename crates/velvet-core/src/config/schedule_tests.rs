//! Decoding what design §11 adds: `schedule`, `blackouts`, `max_age`, `remind_before` and
//! `notifications`; what each accepts and how each mistake is named.

use super::tests::{parse_with, problems};
use super::*;

fn token(extra: &str) -> String {
    format!("tokens:\n  - name: api\n    source: {{kind: random}}\n{extra}")
}

fn one(problems: &[String], path: &str, says: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.contains(path) && p.contains(says)),
        "no problem at {path} saying {says:?}: {problems:#?}"
    );
}

#[test]
fn a_schedule_and_blackouts_decode_with_their_defaults() {
    let text = format!(
        "defaults: {{max_age: 120d, remind_before: 7d}}\n\
         blackouts:\n\
         \x20 - {{name: year-end-freeze, from: \"2026-12-20T00:00:00Z\", to: \"2027-01-04T00:00:00Z\"}}\n\
         \x20 - {{name: weekends, cron: \"0 0 * * SAT\", timezone: UTC, duration: 48h}}\n{}",
        token(
            "    schedule: {cron: \"0 3 * * MON\", timezone: Europe/Berlin, window: 2h, jitter: 10m}\n"
        )
    );
    let c = parse_with(&text, &[]).unwrap();
    let t = &c.tokens[0];
    let s = t.schedule.as_ref().unwrap();
    assert_eq!(
        (s.cron.as_str(), s.timezone.as_str()),
        ("0 3 * * MON", "Europe/Berlin")
    );
    assert_eq!(
        (s.window, s.jitter),
        (Duration::from_secs(7200), Duration::from_secs(600))
    );
    assert_eq!(t.max_age, Some(Duration::from_secs(120 * 86400)));
    assert_eq!(t.remind_before(), Duration::from_secs(7 * 86400));
    assert!(matches!(
        t.cadence(),
        Some(crate::schedule::Cadence::Slots(_))
    ));
    assert_eq!(c.blackouts.len(), 2);
    assert!(c.blackouts.iter().all(|b| b.compile().is_some()));
    // Defaults: UTC, a one-hour window, no jitter, 14 days' notice.
    let c = parse_with(&token("    schedule: {cron: \"0 3 * * *\"}\n"), &[]).unwrap();
    let s = c.tokens[0].schedule.as_ref().unwrap();
    assert_eq!(
        (s.timezone.as_str(), s.window, s.jitter),
        ("UTC", Duration::from_secs(3600), Duration::ZERO)
    );
    assert_eq!(c.tokens[0].remind_before(), spec::REMIND_BEFORE);
}

#[test]
fn a_bad_schedule_is_named_field_by_field() {
    let p = problems(&token(
        "    schedule: {cron: \"0 27 * * *\", timezone: Mars/Olympus, window: 5m, jitter: 10m}\n",
    ));
    one(&p, "tokens[0].schedule.cron", "field 2 (hour) `27`");
    one(&p, "tokens[0].schedule.cron", "0-23");
    one(
        &p,
        "tokens[0].schedule.timezone",
        "`Mars/Olympus` is not an IANA time zone",
    );
    one(
        &p,
        "tokens[0].schedule.jitter",
        "longer than the window (5m)",
    );
    let p = problems(&token(
        "    rotate_every: 30d\n    schedule: {cron: \"0 3 * * *\"}\n",
    ));
    one(&p, "tokens[0].schedule", "not both");
    let p = problems(&token("    rotate_every: 30s\n"));
    one(&p, "tokens[0].rotate_every", "at least 1m");
    let p = problems(&token("    schedule: {cron: \"0 3 * * *\", window: 30s}\n"));
    one(&p, "tokens[0].schedule.window", "at least 1m");
    let p = problems(&token("    schedule: {cron: \"0 3 * *\"}\n"));
    one(&p, "tokens[0].schedule.cron", "4 field(s)");
    let p = problems(&token("    schedule: {crontab: \"0 3 * * *\"}\n"));
    one(&p, "tokens[0].schedule", "crontab");
}

#[test]
fn bad_blackouts_are_named_and_overlapping_ones_allowed() {
    let ok = "blackouts:\n\
              \x20 - {name: a, from: \"2026-12-20T00:00:00Z\", to: \"2027-01-04T00:00:00Z\"}\n\
              \x20 - {name: b, from: \"2026-12-30T00:00:00Z\", to: \"2027-01-10T00:00:00Z\"}\n\
              tokens: []\n";
    assert_eq!(problems(ok), Vec::<String>::new());
    let bad = "blackouts:\n\
               \x20 - {name: a, from: \"next friday\", to: \"2027-01-04T00:00:00Z\"}\n\
               \x20 - {name: b, from: \"2027-01-04T00:00:00Z\", to: \"2026-01-04T00:00:00Z\"}\n\
               \x20 - {name: c, cron: \"0 0 * * SAT\", timezone: Nowhere}\n\
               \x20 - {name: d}\n\
               \x20 - {name: d, cron: \"0 0 * * XYZ\", duration: 1h}\n\
               tokens: []\n";
    let p = problems(bad);
    one(&p, "blackouts[0].from", "not an RFC 3339 time");
    one(&p, "blackouts[1].to", "later than `from`");
    one(&p, "blackouts[2].timezone", "`Nowhere`");
    one(
        &p,
        "blackouts[2].duration",
        "missing required key `duration`",
    );
    one(&p, "blackouts[3]", "either `from`/`to`");
    one(&p, "blackouts[4].name", "declared twice");
    one(&p, "blackouts[4].cron", "field 5 (day of week)");
}

const CHANNELS: &str = r#"
notifications:
  - name: ops-mail
    kind: email
    smtp: {host: smtp.internal, port: 587, tls: starttls, username_env: SMTP_USER, password_env: SMTP_PASS}
    from: velvet@example.com
    to: [ops@example.com]
    on: [failed, awaiting_approval, overdue, due_soon, drift, schedule_missed]
    match: {tags: [prod]}
  - {name: chat, kind: slack, url_env: SLACK_WEBHOOK_URL, on: [failed, awaiting_approval]}
  - {name: pager, kind: webhook, url: "https://events.internal/velvet", signing_secret_env: PAGER_SECRET, on: [failed, overdue]}
tokens:
  - {name: api, tags: [prod], source: {kind: random}}
  - {name: dev, source: {kind: random}}
"#;

#[test]
fn the_design_channels_decode_and_route_by_event_and_match() {
    let env = &[
        ("SMTP_USER", "u"),
        ("SMTP_PASS", "p"),
        ("SLACK_WEBHOOK_URL", "http://127.0.0.1:1/hook"),
        ("PAGER_SECRET", "s"),
    ];
    let c = parse_with(CHANNELS, env).unwrap();
    assert_eq!(c.notifications.len(), 3);
    let mail = &c.notifications[0];
    let (api, dev) = (c.token("api"), c.token("dev"));
    assert!(
        mail.wants("failed", api) && !mail.wants("failed", dev),
        "match: tags"
    );
    assert!(!mail.wants("succeeded", api), "on");
    assert!(
        c.notifications[1].wants("failed", dev),
        "no match: every token"
    );
    let ChannelKind::Email { smtp, .. } = &mail.kind else {
        panic!()
    };
    assert_eq!((smtp.port, smtp.tls), (587, SmtpTls::Starttls));
}

#[test]
fn bad_channels_are_named() {
    // The Slack URL's variable is missing: `validate` names it.
    let p = match parse_with(
        CHANNELS,
        &[
            ("SMTP_USER", "u"),
            ("SMTP_PASS", "p"),
            ("PAGER_SECRET", "s"),
        ],
    ) {
        Err(e) => e
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        Ok(_) => panic!("accepted"),
    };
    one(
        &p,
        "notifications[1].url_env",
        "`SLACK_WEBHOOK_URL` is not set",
    );
    let bad = r#"
notifications:
  - {name: a, kind: email, smtp: {host: mail.example.com, tls: none}, from: "not an address", to: [approvers, x@y], on: [failed, exploded]}
  - {name: a, kind: pager, on: [failed]}
  - {name: b, kind: webhook, url: "ftp://x", signing_secret_env: S}
tokens: []
"#;
    let p = match parse_with(bad, &[("S", "s")]) {
        Err(e) => e
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        Ok(_) => panic!("accepted"),
    };
    one(&p, "notifications[0].smtp.tls", "only for a loopback host");
    one(&p, "notifications[0].from", "not a mail address");
    one(&p, "notifications[0].to", "`approvers`");
    one(&p, "notifications[0].on", "unknown event `exploded`");
    one(&p, "notifications[1].name", "declared twice");
    one(&p, "notifications[1].kind", "unknown channel kind `pager`");
    one(&p, "notifications[2].on", "list the events");
    one(&p, "notifications[2].url", "ftp://x");
    // `none` is fine on loopback.
    let ok = "notifications:\n  - {name: m, kind: email, smtp: {host: 127.0.0.1, port: 2525, tls: none}, from: v@x.io, to: [o@x.io], on: [failed]}\ntokens: []\n";
    assert_eq!(problems(ok), Vec::<String>::new());
}
