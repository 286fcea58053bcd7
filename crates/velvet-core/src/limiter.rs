//! A failure limiter (design §7, §10): counts failures per key in a fixed window and refuses
//! further tries once the budget is spent, until the window passes. Kept per process: a replica
//! restart forgets it, which only ever lets a locked-out caller try again sooner.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct FailureLimiter<K> {
    budget: u32,
    window: Duration,
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq> FailureLimiter<K> {
    pub fn new(budget: u32, window: Duration) -> Self {
        Self {
            budget,
            window,
            windows: Mutex::default(),
        }
    }

    /// Seconds until `key` may try again, if it spent its budget in the current window.
    pub fn blocked<Q>(&self, key: &Q) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.blocked_at(key, Instant::now())
    }

    /// Counts a failure; true when this one spent the budget (the moment to raise an alarm).
    pub fn record<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.record_at(key, Instant::now())
    }

    fn blocked_at<Q>(&self, key: &Q, now: Instant) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let windows = self.windows.lock().expect("never poisoned");
        let (start, n) = windows.get(key)?;
        let left = self
            .window
            .checked_sub(now.saturating_duration_since(*start))
            .filter(|left| !left.is_zero())?;
        (*n >= self.budget).then(|| left.as_secs().max(1))
    }

    fn record_at<Q>(&self, key: &Q, now: Instant) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut windows = self.windows.lock().expect("never poisoned");
        let window = self.window;
        let ended = |start: Instant| now.saturating_duration_since(start) >= window;
        // Forget finished windows so the map only holds recent offenders.
        if windows.len() > 10_000 {
            windows.retain(|_, (start, _)| !ended(*start));
        }
        let w = match windows.get_mut(key) {
            Some(w) => w,
            None => windows.entry(key.to_owned()).or_insert((now, 0)),
        };
        if ended(w.0) {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 == self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_blocked_once_its_budget_is_spent_and_others_are_not() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        assert!(!l.record(&"a"));
        assert!(!l.record(&"a"));
        assert_eq!(l.blocked(&"a"), None);
        assert!(l.record(&"a"), "the third spends the budget");
        assert!(l.blocked(&"a").is_some_and(|s| (1..=60).contains(&s)));
        assert_eq!(l.blocked(&"b"), None);
        assert!(
            !l.record(&"a"),
            "only the spending failure raises the alarm"
        );
    }

    #[test]
    fn the_window_passes_and_a_new_one_starts_counting_afresh() {
        let l = FailureLimiter::new(2, Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        l.record_at(&1, t0);
        assert!(l.record_at(&1, at(1)), "spent");
        assert_eq!(l.blocked_at(&1, at(1)), Some(29));
        assert_eq!(l.blocked_at(&1, at(29)), Some(1));
        assert_eq!(l.blocked_at(&1, at(30)), None, "the window is over");
        assert!(!l.record_at(&1, at(31)), "a new window counts from one");
        assert_eq!(l.blocked_at(&1, at(31)), None);
        assert!(l.record_at(&1, at(32)));
        assert!(l.blocked_at(&1, at(32)).is_some());
    }
}
