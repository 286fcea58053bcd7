//! Pacing HTTP consumers by the budget a provider reports, so Velvet slows down before the
//! budget is gone instead of after a 429. One [`Budget`] per provider credential, shared by every
//! consumer that uses it in this process (the registry is process-wide; replicas see each
//! other's spending in the numbers the provider reports).
//!
//! Two shapes: a **bucket** (Heroku: `RateLimit-Remaining`, refilled at a steady rate that is
//! learned from the answers) and a **window** (Cloudflare's `Ratelimit: r=…;t=…`, Infisical's
//! `x-ratelimit-remaining` and `-reset`: what is left until the window resets).
//!
//! A bucket's answers arrive out of order under load, so each answer is kept as `remaining +
//! requests sent up to and including its own`: what the bucket has taken in since it started,
//! a point on the line `start + refill × t` whatever order answers come in. The latest points
//! give what is left now (less what was sent since), and points a few seconds apart give the
//! refill rate.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Requests kept back from the reported budget, for estimates that run ahead of the provider:
/// this many, plus a tenth of those in flight (which may reach the provider out of order).
const RESERVE: f64 = 2.0;
/// The longest one wait lasts before the estimate is looked at again.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// The latest answers say what is left now (the lowest of them, against a stray early one).
const LATEST: usize = 5;
/// Answers this close to either end of what is kept make one end of a refill sample.
const RECENT: Duration = Duration::from_millis(500);
/// Answers kept to learn the refill rate from, and the span a sample needs.
const KEPT: Duration = Duration::from_secs(3);
const SAMPLE_SPAN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    /// Remaining plus the requests sent up to and including this one.
    x: f64,
    /// The bucket was full: no refill happened around it.
    full: bool,
}

#[derive(Debug)]
enum Shape {
    /// No answer has said yet.
    Unknown,
    Bucket {
        points: VecDeque<Point>,
        high: f64,
        next_sample: Instant,
    },
    Window {
        left: f64,
        reset_at: Instant,
    },
}

#[derive(Debug)]
struct State {
    shape: Shape,
    /// Tokens a bucket refills per second: a provider default, then learned.
    refill: f64,
    in_flight: u32,
    /// Requests sent since the window's last answer (a window only).
    sent: u32,
    /// Requests sent since the budget was made.
    sent_total: u64,
}

/// One provider credential's budget.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<State>,
}

/// A request under way; dropping it without [`Permit::bucket`] or [`Permit::window`] (a transport
/// failure) just frees its place.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    /// This request's place in the order requests were sent.
    seq: u64,
    done: bool,
}

/// The process-wide budget for `key` (a provider and a hash of its credential), created with
/// `refill` per second as the bucket's rate until answers say otherwise.
pub fn budget(key: &str, refill: f64) -> Arc<Budget> {
    static ALL: OnceLock<Mutex<HashMap<String, Arc<Budget>>>> = OnceLock::new();
    let mut all = ALL.get_or_init(Default::default).lock().expect("budgets");
    all.entry(key.to_string())
        .or_insert_with(|| Arc::new(Budget::new(refill)))
        .clone()
}

/// The budget of `credential` at `provider`'s `api_url`, keyed by a one-way hash of the
/// credential (never the credential itself).
pub fn budget_for(provider: &str, api_url: &str, credential: &str, refill: f64) -> Arc<Budget> {
    use sha2::Digest;
    let id = hex::encode(&sha2::Sha256::digest(credential.as_bytes())[..8]);
    budget(&format!("{provider}:{api_url}:{id}"), refill)
}

impl Budget {
    pub fn new(refill: f64) -> Self {
        Self {
            state: Mutex::new(State {
                shape: Shape::Unknown,
                refill,
                in_flight: 0,
                sent: 0,
                sent_total: 0,
            }),
        }
    }

    /// Waits until the budget has room for one more request.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let wait = {
                let mut s = self.state.lock().expect("budget");
                match s.room(Instant::now()) {
                    None => {
                        s.in_flight += 1;
                        s.sent += 1;
                        s.sent_total += 1;
                        return Permit {
                            budget: self.clone(),
                            seq: s.sent_total,
                            done: false,
                        };
                    }
                    Some(w) => w,
                }
            };
            tokio::time::sleep(wait.min(MAX_WAIT)).await;
        }
    }
}

impl State {
    /// What the provider will still take now, less what is in flight; `None` when unknown.
    fn left(&self, now: Instant) -> Option<f64> {
        match &self.shape {
            Shape::Unknown => None,
            Shape::Window { left, .. } => Some(left - f64::from(self.sent)),
            Shape::Bucket { points, high, .. } => {
                let taken_in = points
                    .iter()
                    .rev()
                    .take(LATEST)
                    .map(|p| p.x + self.refill * now.duration_since(p.at).as_secs_f64())
                    .reduce(f64::min)?;
                let by_line = taken_in - self.sent_total as f64;
                Some(by_line.min(*high - f64::from(self.in_flight)))
            }
        }
    }

    /// `None` when a request may go now, else how long to wait.
    fn room(&mut self, now: Instant) -> Option<Duration> {
        if let Shape::Window { reset_at, .. } = self.shape
            && now >= reset_at
        {
            // A new window: unknown until the next answer says.
            self.shape = Shape::Unknown;
        }
        let left = self.left(now)?;
        let keep = 1.0 + RESERVE + 0.1 * f64::from(self.in_flight);
        if left >= keep {
            return None;
        }
        Some(match self.shape {
            Shape::Window { reset_at, .. } => reset_at - now,
            _ => Duration::from_secs_f64((keep - left) / self.refill.max(0.01)),
        })
    }

    /// A bucket answer: keep its point, and every so often learn the refill rate from the lowest
    /// points at either end of what is kept, if the bucket was never full in between.
    fn observe_bucket(&mut self, r: f64, seq: u64, now: Instant) {
        if !matches!(self.shape, Shape::Bucket { .. }) {
            self.shape = Shape::Bucket {
                points: VecDeque::new(),
                high: r,
                next_sample: now + SAMPLE_SPAN,
            };
        }
        let Shape::Bucket {
            points,
            high,
            next_sample,
        } = &mut self.shape
        else {
            unreachable!("made a bucket above");
        };
        *high = high.max(r);
        let full = r >= *high - 1.0;
        if !full {
            // Points from a full bucket are off the line (it did not refill): drop them.
            points.retain(|p| !p.full);
        }
        points.push_back(Point {
            at: now,
            x: r + seq as f64,
            full,
        });
        while points
            .front()
            .is_some_and(|p| now.duration_since(p.at) > KEPT)
        {
            points.pop_front();
        }
        let first = points.front().expect("just pushed").at;
        if now < *next_sample || now.duration_since(first) < SAMPLE_SPAN {
            return;
        }
        *next_sample = now + RECENT;
        if points.iter().any(|p| p.full) {
            return;
        }
        let lowest =
            |pts: &mut dyn Iterator<Item = &Point>| pts.min_by(|a, b| a.x.total_cmp(&b.x)).copied();
        let early = lowest(
            &mut points
                .iter()
                .filter(|p| p.at.duration_since(first) <= RECENT),
        );
        let late = lowest(&mut points.iter().filter(|p| now.duration_since(p.at) <= RECENT));
        if let (Some(a), Some(b)) = (early, late) {
            let dt = b.at.duration_since(a.at).as_secs_f64();
            let sample = (b.x - a.x) / dt;
            if dt > 0.5 && sample > 0.0 {
                // Halfway to the sample, at most doubling: too slow costs a little time, too
                // fast a 429.
                self.refill = (0.5 * self.refill + 0.5 * sample).min(2.0 * self.refill);
            }
        }
    }
}

impl Permit {
    /// The answer said `remaining` requests are left in a bucket (Heroku's `RateLimit-Remaining`);
    /// `limited`: it was a 429.
    pub fn bucket(mut self, remaining: Option<u64>, limited: bool) {
        self.done = true;
        let mut s = self.budget.state.lock().expect("budget");
        s.in_flight -= 1;
        if limited {
            // The estimate ran ahead of the provider: slow down.
            s.refill *= 0.8;
        }
        if let Some(r) = remaining.map(|r| r as f64).or(limited.then_some(0.0)) {
            s.observe_bucket(r, self.seq, Instant::now());
        }
    }

    /// The answer said `remaining` requests are left until the window resets in `reset`.
    pub fn window(mut self, remaining: Option<u64>, reset: Option<Duration>) {
        self.done = true;
        let mut s = self.budget.state.lock().expect("budget");
        s.in_flight -= 1;
        if let (Some(r), Some(t)) = (remaining, reset) {
            // Requests still in flight are not counted in `r` yet.
            s.sent = s.in_flight;
            s.shape = Shape::Window {
                left: r as f64,
                reset_at: Instant::now() + t,
            };
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            let mut s = self.budget.state.lock().expect("budget");
            s.in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lower bounds only: a loaded machine makes waits longer, never shorter.
    #[tokio::test]
    async fn a_bucket_waits_for_refill_before_it_is_empty() {
        let b = Arc::new(Budget::new(10.0));
        // Unknown: requests go.
        b.acquire().await.bucket(Some(5), false);
        // 5 left, 2 kept back: three more go at once, the next waits for refill.
        for _ in 0..3 {
            b.acquire().await.bucket(None, false);
        }
        let start = Instant::now();
        let p = b.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
        p.bucket(Some(2), false);
    }

    #[tokio::test]
    async fn a_window_waits_for_its_reset() {
        let b = Arc::new(Budget::new(1.0));
        b.acquire()
            .await
            .window(Some(3), Some(Duration::from_millis(300)));
        // 3 left, 2 kept back: one goes, the next waits for the reset.
        b.acquire().await.window(None, None);
        let start = Instant::now();
        b.acquire()
            .await
            .window(Some(2), Some(Duration::from_millis(300)));
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }

    /// A bucket refilling at 10 a second while 5 a second are spent, one answer every 200 ms,
    /// every third one stale (reporting 6 more than was left): the rate is learned, and the
    /// stale answers do not raise what is thought left.
    #[test]
    fn the_refill_rate_is_learned_and_stale_answers_ignored() {
        let b = Budget::new(1.25);
        let mut s = b.state.lock().unwrap();
        let t0 = Instant::now();
        s.sent_total = 1;
        s.observe_bucket(100.0, 1, t0);
        let mut remaining = 40.0;
        for i in 1..=40u64 {
            let t = t0 + Duration::from_millis(200 * i);
            remaining += 10.0 * 0.2 - 1.0;
            s.sent_total += 1;
            // Every third answer is of a request sent two earlier, answered late.
            let (r, seq) = if i % 3 == 0 {
                (remaining + 2.0, s.sent_total - 2)
            } else {
                (remaining, s.sent_total)
            };
            s.observe_bucket(r, seq, t);
            if i > 30 {
                let left = s.left(t).unwrap();
                assert!(
                    (left - remaining).abs() <= 1.0,
                    "{i}: thought {left}, was {remaining}"
                );
            }
        }
        assert!(s.refill > 8.0 && s.refill < 11.0, "{}", s.refill);
    }

    #[test]
    fn a_dropped_permit_frees_its_place() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = Arc::new(Budget::new(1.0));
        rt.block_on(async {
            drop(b.acquire().await);
        });
        assert_eq!(b.state.lock().unwrap().in_flight, 0);
    }
}
