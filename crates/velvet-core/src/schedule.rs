//! When a token's next rotation starts (design §11), as a pure function of its declared
//! cadence, the blackouts, what the store remembers and the time now, so every rule (slots in
//! their IANA time zone, DST, windows, jitter, blackouts, missed slots, retries) is tested
//! with any clock. The scheduler in the engine only carries out what [`next`] says.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The five fields of a cron expression, with what each accepts.
const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day of week", "0-7 or SUN-SAT (0 and 7 are Sunday)"),
];

/// Parses a five-field cron expression; an error names the field at fault and its range.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 && !expr.trim_start().starts_with('@') {
        return Err(format!(
            "`{expr}` has {} field(s); a schedule's cron has five: minute hour day-of-month \
             month day-of-week (e.g. \"0 3 * * MON\")",
            fields.len()
        ));
    }
    match parser.parse(expr) {
        Ok(cron) => Ok(cron),
        Err(whole) => {
            // Find the field at fault by parsing each alone among wildcards.
            for (i, field) in fields.iter().enumerate() {
                let mut alone = ["*"; 5];
                alone[i] = field;
                if let Err(e) = parser.parse(&alone.join(" ")) {
                    let (name, range) = FIELDS[i];
                    return Err(format!(
                        "field {} ({name}) `{field}` is not valid: {}; it accepts {range}, \
                         lists (1,5), ranges (1-5) and steps (*/15)",
                        i + 1,
                        detail(&e)
                    ));
                }
            }
            Err(format!(
                "`{expr}` is not a valid cron expression: {}",
                detail(&whole)
            ))
        }
    }
}

fn detail(e: &croner::errors::CronError) -> String {
    let s = e.to_string();
    s.trim_end_matches('.').to_string()
}

/// An IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("`{name}` is not an IANA time zone; use a name such as UTC, Europe/Berlin or America/New_York")
    })
}

/// An instant asked of a cron, and the slot it answered.
type Asked = (DateTime<Utc>, Option<DateTime<Utc>>);

/// One occurrence of a blackout: its index in the list, its start and end.
type Occurrence = (usize, DateTime<Utc>, DateTime<Utc>);

/// A chain of overlapping occurrences: its start, its end, its members.
type Chain = (DateTime<Utc>, DateTime<Utc>, Vec<Occurrence>);

/// A cron schedule, parsed.
#[derive(Debug, Clone)]
pub struct Slots {
    cron: Cron,
    tz: Tz,
    pub window: TimeDelta,
    pub jitter: TimeDelta,
    /// The last `after` asked and its answer: each pass asks the same of every token (the slot
    /// after the one it used), and a cron search costs far more than the lookup.
    memo: std::sync::Arc<std::sync::Mutex<Option<Asked>>>,
}

impl Slots {
    pub fn new(
        cron: &str,
        timezone: &str,
        window: Duration,
        jitter: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            cron: parse_cron(cron)?,
            tz: parse_timezone(timezone)?,
            window: delta(window),
            jitter: delta(jitter),
            memo: Default::default(),
        })
    }

    /// The first slot strictly after `t`, computed on the zone's wall clock.
    pub fn after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((asked, answer)) = *memo
            && asked == t
        {
            return answer;
        }
        let local = t.with_timezone(&self.tz);
        let answer = self
            .cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|d| d.with_timezone(&Utc));
        *memo = Some((t, answer));
        answer
    }

    /// The last slot at or before `t`.
    pub fn at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// How a token's rotations are paced.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// `rotate_every`: this long after the last successful rotation.
    Every(TimeDelta),
    /// `schedule`: at cron slots, within their window.
    Slots(Box<Slots>),
}

impl Cadence {
    pub fn every(d: Duration) -> Self {
        Self::Every(delta(d))
    }
}

/// One blackout: no scheduled rotation starts inside it.
#[derive(Debug, Clone)]
pub enum Blackout {
    Between {
        name: String,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    Recurring {
        name: String,
        starts: Box<Slots>,
        duration: TimeDelta,
    },
}

impl Blackout {
    pub fn name(&self) -> &str {
        match self {
            Self::Between { name, .. } | Self::Recurring { name, .. } => name,
        }
    }

    /// The end of this blackout if it is in force at `t`.
    fn covering(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Self::Between { from, to, .. } => (*from <= t && t < *to).then_some(*to),
            Self::Recurring {
                starts, duration, ..
            } => {
                // The latest start has the latest end: every occurrence lasts as long.
                let start = starts.at_or_before(t)?;
                let end = start + *duration;
                (t < end).then_some(end)
            }
        }
    }
}

/// A blackout in force: the one that covers the moment, and when the blackouts (overlapping
/// ones merged) let go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub name: String,
    pub until: DateTime<Utc>,
}

/// Where the scheduler asks which blackout is in force: the list itself, or a [`Plan`] of it
/// laid out once per pass.
pub trait Lookup {
    fn at(&self, t: DateTime<Utc>) -> Option<InForce>;
}

impl Lookup for [Blackout] {
    fn at(&self, t: DateTime<Utc>) -> Option<InForce> {
        blackout_at(self, t)
    }
}

/// Blackouts laid out as merged chains over `[from, to)`, so a pass over many tokens asks a
/// binary search instead of a cron search per token; outside the span it asks the list.
#[derive(Debug)]
pub struct Plan<'a> {
    all: &'a [Blackout],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Chains in start order: (start, end, occurrences as (list index, start, end)).
    chains: Vec<Chain>,
}

impl<'a> Plan<'a> {
    pub fn new(all: &'a [Blackout], from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let mut occ: Vec<Occurrence> = Vec::new();
        for (i, b) in all.iter().enumerate() {
            match b {
                Blackout::Between { from: f, to: t, .. } => {
                    if *t > from && *f < to {
                        occ.push((i, *f, *t));
                    }
                }
                Blackout::Recurring {
                    starts, duration, ..
                } => {
                    let mut at = starts.at_or_before(from);
                    if at.is_none_or(|a| a + *duration <= from) {
                        at = starts.after(from - *duration);
                    }
                    while let Some(a) = at
                        && a < to
                    {
                        if a + *duration > from {
                            occ.push((i, a, a + *duration));
                        }
                        at = starts.after(a);
                    }
                }
            }
        }
        occ.sort_by_key(|o| o.1);
        let mut chains: Vec<Chain> = Vec::new();
        for o in occ {
            match chains.last_mut() {
                Some(c) if o.1 <= c.1 => {
                    c.1 = c.1.max(o.2);
                    c.2.push(o);
                }
                _ => chains.push((o.1, o.2, vec![o])),
            }
        }
        Self {
            all,
            from,
            to,
            chains,
        }
    }
}

impl Lookup for Plan<'_> {
    fn at(&self, t: DateTime<Utc>) -> Option<InForce> {
        if t < self.from || t >= self.to {
            return blackout_at(self.all, t);
        }
        let i = self.chains.partition_point(|c| c.0 <= t);
        let (_, end, members) = self.chains.get(i.checked_sub(1)?)?;
        if t >= *end {
            return None;
        }
        // A chain reaching the span's end may go on past it: the list knows.
        if *end >= self.to {
            return blackout_at(self.all, t);
        }
        let first = members
            .iter()
            .filter(|(_, s, e)| *s <= t && t < *e)
            .map(|(i, _, _)| *i)
            .min()?;
        Some(InForce {
            name: self.all[first].name().to_string(),
            until: *end,
        })
    }
}

/// The blackout in force at `t`, with the end of every blackout that overlaps it in a chain.
pub fn blackout_at(blackouts: &[Blackout], t: DateTime<Utc>) -> Option<InForce> {
    let name = blackouts
        .iter()
        .find(|b| b.covering(t).is_some())?
        .name()
        .to_string();
    let mut until = t;
    // Bounded: a chain of recurring blackouts that never lets go is cut after a year of them.
    for _ in 0..1000 {
        match blackouts.iter().filter_map(|b| b.covering(until)).max() {
            Some(end) if end > until => until = end,
            _ => break,
        }
    }
    Some(InForce { name, until })
}

/// What the store remembers of a token for its schedule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Standing {
    /// When the token was first declared.
    pub first_seen: DateTime<Utc>,
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// The latest slot a job was started for, or recorded as missed: each slot is used once.
    pub slot_taken: Option<DateTime<Utc>>,
    /// The token has an unfinished job.
    pub busy: bool,
    /// When its latest job finished.
    pub last_finished: Option<DateTime<Utc>>,
}

/// Slots whose window closed without a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// The latest of them, which becomes the slot taken.
    pub slot: DateTime<Utc>,
    pub count: u32,
    pub reason: String,
}

/// What the scheduler does for a token now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Start a job for `slot` now.
    Start { slot: DateTime<Utc> },
    /// Nothing now; the next start is at `next` (`None`: no slot ahead).
    Wait {
        next: Option<DateTime<Utc>>,
        /// The blackout that holds back a start that is due.
        blackout: Option<String>,
    },
}

/// The decision for one token, with any slots to record as missed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub missed: Option<Missed>,
    pub verdict: Verdict,
}

/// How long after an unsuccessful scheduled rotation of a `rotate_every` token the scheduler
/// tries again (shorter when the interval is).
pub const RETRY_AFTER: TimeDelta = TimeDelta::hours(1);

/// How many slots one call looks through before it jumps ahead.
const SLOT_SEARCH: u32 = 1000;

/// The decision for `token` at `now`.
pub fn next(
    token: &str,
    cadence: &Cadence,
    blackouts: &(impl Lookup + ?Sized),
    s: &Standing,
    now: DateTime<Utc>,
) -> Next {
    match cadence {
        Cadence::Every(every) => next_every(*every, blackouts, s, now),
        Cadence::Slots(slots) => next_slot(token, slots, blackouts, s, now),
    }
}

fn next_every(
    every: TimeDelta,
    blackouts: &(impl Lookup + ?Sized),
    s: &Standing,
    now: DateTime<Utc>,
) -> Next {
    let due = s.last_rotated_at.unwrap_or(s.first_seen) + every;
    // A due time already tried without success is tried again after a pause, counted from the
    // try or from the end of its job, whichever is later; it never moves a whole interval on.
    let slot = match s.slot_taken {
        Some(taken) if taken >= due => {
            taken.max(s.last_finished.unwrap_or(taken)) + every.min(RETRY_AFTER)
        }
        _ => due,
    };
    let at = slot.max(now);
    let (start, blackout) = match blackouts.at(at) {
        Some(b) => (b.until, Some(b.name)),
        None => (at, None),
    };
    let verdict = if s.busy || start > now {
        Verdict::Wait {
            next: Some(if s.busy { slot } else { start }),
            blackout: blackout.filter(|_| slot <= now),
        }
    } else {
        Verdict::Start { slot }
    };
    Next {
        missed: None,
        verdict,
    }
}

/// A slot's start: a moment within `jitter` of it, the same on every replica and every pass
/// (so `next_rotation_at` is the real next start), pushed past blackouts; `None` when the
/// blackouts cover what is left of its window.
fn planned_start(
    token: &str,
    slots: &Slots,
    blackouts: &(impl Lookup + ?Sized),
    slot: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<String>) {
    let mut start = slot + spread(token, slot, slots.jitter.min(slots.window));
    let mut held = None;
    if let Some(b) = blackouts.at(start) {
        start = b.until;
        held = Some(b.name);
    }
    ((start < slot + slots.window).then_some(start), held)
}

/// A stable offset in `[0, jitter)` for `token`'s `slot`.
fn spread(token: &str, slot: DateTime<Utc>, jitter: TimeDelta) -> TimeDelta {
    let Ok(range) = u64::try_from(jitter.num_seconds()) else {
        return TimeDelta::zero();
    };
    if range == 0 {
        return TimeDelta::zero();
    }
    let h = Sha256::digest(format!("{token}\n{}", slot.timestamp()));
    let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    TimeDelta::seconds((n % range) as i64)
}

fn next_slot(
    token: &str,
    slots: &Slots,
    blackouts: &(impl Lookup + ?Sized),
    s: &Standing,
    now: DateTime<Utc>,
) -> Next {
    // Slots after the last one used; a token the scheduler never saw counts from its first
    // declaration.
    let after = s.slot_taken.unwrap_or(s.first_seen);
    let mut slot = slots.after(after);
    let mut missed: Option<Missed> = None;
    let mut looked = 0;
    while let Some(at) = slot
        && now >= at + slots.window
    {
        let (start, held) = planned_start(token, slots, blackouts, at);
        let reason = if s.busy {
            "a job of this token was still unfinished".to_string()
        } else if let (None, Some(b)) = (start, held) {
            format!("blackout `{b}` covered its window")
        } else {
            "Velvet was not running (or no replica led the scheduler) during its window".into()
        };
        let count = missed.as_ref().map_or(0, |m| m.count) + 1;
        missed = Some(Missed {
            slot: at,
            count,
            reason,
        });
        looked += 1;
        slot = if looked < SLOT_SEARCH {
            slots.after(at)
        } else {
            // Long down on a frequent schedule: skip to the first slot whose window is open.
            slots.after(now - slots.window).filter(|n| *n > at)
        };
    }
    let verdict = match slot {
        None => Verdict::Wait {
            next: None,
            blackout: None,
        },
        Some(at) if s.busy => Verdict::Wait {
            next: Some(at.max(now)),
            blackout: None,
        },
        Some(at) => match planned_start(token, slots, blackouts, at) {
            (Some(start), _) if start <= now => Verdict::Start { slot: at },
            (Some(start), held) => Verdict::Wait {
                next: Some(start),
                blackout: held.filter(|_| at <= now),
            },
            // This slot's window is lost to a blackout: the next start is a later slot's.
            (None, held) => Verdict::Wait {
                next: first_start_after(token, slots, blackouts, at),
                blackout: held.filter(|_| at <= now),
            },
        },
    };
    Next { missed, verdict }
}

fn first_start_after(
    token: &str,
    slots: &Slots,
    blackouts: &(impl Lookup + ?Sized),
    mut at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    for _ in 0..SLOT_SEARCH {
        at = slots.after(at)?;
        if let (Some(start), _) = planned_start(token, slots, blackouts, at) {
            return Some(start);
        }
    }
    None
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
