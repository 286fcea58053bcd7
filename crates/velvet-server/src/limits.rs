//! Failure limiters (design §7, §10): failed authentications per client address, failed
//! console logins per operator, and wrong step-up codes per operator. Each counts failures in a
//! fixed window and refuses further tries once the budget is spent, until the window passes.
//! Kept per process: a replica restart forgets them, which only ever lets a locked-out caller
//! try again sooner.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
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

/// Event streams open per client address (`server.max_streams_per_client`).
#[derive(Debug, Default)]
pub struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; the slot frees when it drops (the stream ended or the client went away).
#[derive(Debug)]
pub struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    client: String,
}

impl StreamSlots {
    /// A slot for `client`, unless it already has `max` streams open.
    pub fn take(&self, client: &str, max: usize) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("never poisoned");
        let n = open.entry(client.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            open: self.open.clone(),
            client: client.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("never poisoned");
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// The limiters a server keeps.
#[derive(Debug)]
pub struct Limiters {
    /// Failed authentications (a presented credential that is not valid) per client address.
    pub auth: FailureLimiter<std::net::IpAddr>,
    /// Failed console logins per operator name.
    pub login: FailureLimiter<String>,
    /// Wrong TOTP codes at a gate or an approval, per operator (§10: 5 in 15 minutes).
    pub step_up: FailureLimiter<String>,
    pub streams: StreamSlots,
}

impl Default for Limiters {
    fn default() -> Self {
        Self {
            auth: FailureLimiter::new(10, Duration::from_secs(60)),
            login: FailureLimiter::new(10, Duration::from_secs(15 * 60)),
            step_up: FailureLimiter::new(5, Duration::from_secs(15 * 60)),
            streams: StreamSlots::default(),
        }
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
    fn stream_slots_free_when_dropped() {
        let s = StreamSlots::default();
        let a = s.take("1.2.3.4", 2).unwrap();
        let _b = s.take("1.2.3.4", 2).unwrap();
        assert!(s.take("1.2.3.4", 2).is_none());
        assert!(s.take("5.6.7.8", 2).is_some());
        drop(a);
        assert!(s.take("1.2.3.4", 2).is_some());
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
