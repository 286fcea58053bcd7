//! Decoding a token's `schedule` and the top-level `blackouts` (design §11): a cron is checked
//! field by field, a time zone against the IANA database, so `validate` names what is wrong.

use super::decode::{Cx, Map};
use super::spec::{BlackoutSpec, BlackoutWhen, ScheduleSpec};
use crate::schedule::{parse_cron, parse_timezone};
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::time::Duration;

/// How long after its slot a scheduled job may start when `window` is not given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);

/// Checks a cron at `key` of `m`, recording what is wrong.
fn cron(cx: &mut Cx, m: &Map, key: &str) -> Option<String> {
    let expr = m.req_str(cx, key)?;
    match parse_cron(&expr) {
        Ok(_) => Some(expr),
        Err(e) => {
            cx.err(&m.path_of(key), m.get(key).expect("present").span(), e);
            None
        }
    }
}

fn timezone(cx: &mut Cx, m: &Map) -> Option<String> {
    let Some(tz) = m.str(cx, "timezone") else {
        return Some("UTC".into());
    };
    match parse_timezone(&tz) {
        Ok(_) => Some(tz),
        Err(e) => {
            cx.err(
                &m.path_of("timezone"),
                m.get("timezone").expect("present").span(),
                e,
            );
            None
        }
    }
}

/// A token's `schedule`, and its exclusivity with `rotate_every`.
pub(super) fn decode_schedule(
    cx: &mut Cx,
    t: &Map,
    rotate_every: Option<Duration>,
) -> Option<ScheduleSpec> {
    let node = t.get("schedule")?;
    let path = t.path_of("schedule");
    if rotate_every.is_some() {
        cx.err(
            &path,
            node.span(),
            "a token has either `rotate_every` (an interval since the last rotation) or \
             `schedule` (cron slots), not both; remove one",
        );
    }
    let s = Map::new(cx, node, &path, &["cron", "timezone", "window", "jitter"])?;
    let (cron, tz) = (cron(cx, &s, "cron"), timezone(cx, &s));
    let window = s.duration(cx, "window").unwrap_or(DEFAULT_WINDOW);
    let jitter = s.duration(cx, "jitter").unwrap_or(Duration::ZERO);
    if window < Duration::from_secs(60) {
        cx.err(
            &s.path_of("window"),
            s.span(),
            "must be at least 1m: a job starts only within its slot's window",
        );
    }
    if jitter > window {
        cx.err(
            &s.path_of("jitter"),
            s.get("jitter").map_or(s.span(), |n| n.span()),
            format!(
                "is longer than the window ({}): a job starts within jitter of its slot and \
                 only inside the window; shorten jitter or widen window",
                crate::duration::format(window)
            ),
        );
    }
    Some(ScheduleSpec {
        cron: cron?,
        timezone: tz?,
        window,
        jitter,
    })
}

fn instant(cx: &mut Cx, m: &Map, key: &str) -> Option<DateTime<Utc>> {
    let s = m.req_str(cx, key)?;
    match DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Some(t.with_timezone(&Utc)),
        Err(_) => {
            cx.err(
                &m.path_of(key),
                m.get(key).expect("present").span(),
                format!("`{s}` is not an RFC 3339 time; write e.g. \"2026-12-20T00:00:00Z\""),
            );
            None
        }
    }
}

/// `blackouts`: each either `{name, from, to}` or `{name, cron, timezone, duration}`.
/// Overlapping ones are allowed; the scheduler merges them.
pub(super) fn decode_blackouts(cx: &mut Cx, root: &Map) -> Vec<BlackoutSpec> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (path, node) in root.seq(cx, "blackouts") {
        let Some(b) = Map::new(
            cx,
            node,
            &path,
            &["name", "from", "to", "cron", "timezone", "duration"],
        ) else {
            continue;
        };
        let name = b.req_str(cx, "name");
        if let Some(n) = &name
            && !seen.insert(n.clone())
        {
            cx.err(
                &b.path_of("name"),
                b.span(),
                format!("blackout `{n}` is declared twice"),
            );
        }
        let when = match (b.get("from").is_some(), b.get("cron").is_some()) {
            (true, false) => {
                let (from, to) = (instant(cx, &b, "from"), instant(cx, &b, "to"));
                if let (Some(f), Some(t)) = (from, to)
                    && t <= f
                {
                    cx.err(&b.path_of("to"), b.span(), "must be later than `from`");
                    continue;
                }
                from.zip(to)
                    .map(|(from, to)| BlackoutWhen::Between { from, to })
            }
            (false, true) => {
                let (c, tz) = (cron(cx, &b, "cron"), timezone(cx, &b));
                let duration = match b.duration(cx, "duration") {
                    Some(d) if d >= Duration::from_secs(60) => Some(d),
                    Some(_) => {
                        cx.err(&b.path_of("duration"), b.span(), "must be at least 1m");
                        None
                    }
                    None => {
                        if b.get("duration").is_none() {
                            cx.err(
                                &b.path_of("duration"),
                                b.span(),
                                "missing required key `duration`: how long each blackout lasts",
                            );
                        }
                        None
                    }
                };
                match (c, tz, duration) {
                    (Some(cron), Some(timezone), Some(duration)) => Some(BlackoutWhen::Recurring {
                        cron,
                        timezone,
                        duration,
                    }),
                    _ => None,
                }
            }
            _ => {
                cx.err(
                    &path,
                    b.span(),
                    "a blackout is either `from`/`to` (RFC 3339 times) or `cron`/`timezone`/\
                     `duration` (a recurring one)",
                );
                None
            }
        };
        if let (Some(name), Some(when)) = (name, when) {
            out.push(BlackoutSpec { name, when });
        }
    }
    out
}
