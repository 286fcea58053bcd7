//! Failure limiters (design §7, §10): failed authentications per client address, failed
//! console logins per operator, and wrong step-up codes per operator. Each counts failures in a
//! fixed window and refuses further tries once the budget is spent, until the window passes.
//! Kept per process: a replica restart forgets them, which only ever lets a locked-out caller
//! try again sooner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use velvet_core::limiter::FailureLimiter;

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
    pub streams: StreamSlots,
}

impl Default for Limiters {
    fn default() -> Self {
        Self {
            auth: FailureLimiter::new(10, Duration::from_secs(60)),
            login: FailureLimiter::new(10, Duration::from_secs(15 * 60)),
            streams: StreamSlots::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
