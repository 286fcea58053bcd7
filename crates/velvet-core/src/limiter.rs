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
        let windows = self.windows.lock().expect("never poisoned");
        let (start, n) = windows.get(key)?;
        let left = self.window.checked_sub(start.elapsed())?;
        (*n >= self.budget).then(|| left.as_secs().max(1))
    }

    /// Counts a failure; true when this one spent the budget (the moment to raise an alarm).
    pub fn record<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut windows = self.windows.lock().expect("never poisoned");
        // Forget finished windows so the map only holds recent offenders.
        if windows.len() > 10_000 {
            let window = self.window;
            windows.retain(|_, (start, _)| start.elapsed() < window);
        }
        let w = match windows.get_mut(key) {
            Some(w) => w,
            None => windows.entry(key.to_owned()).or_insert((Instant::now(), 0)),
        };
        if w.0.elapsed() >= self.window {
            *w = (Instant::now(), 0);
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
    fn the_window_passes() {
        let l = FailureLimiter::new(1, Duration::from_millis(30));
        l.record(&1);
        assert!(l.blocked(&1).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(l.blocked(&1), None);
    }
}
