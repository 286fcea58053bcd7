//! Retry delays: exponential from `initial_backoff`, capped at `max_backoff`, with full jitter
//! in its upper half, and never shorter than what the other side asked for (`Retry-After`).

use std::time::Duration;
use velvet_core::config::RetryPolicy;

/// The delay before attempt `attempt + 1` (attempts count from 1).
pub fn delay(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = policy
        .initial_backoff
        .saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1).min(20))
                .unwrap_or(u32::MAX),
        )
        .min(policy.max_backoff);
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("OS randomness");
    let jitter = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
    let backoff = exp.mul_f64(jitter);
    match retry_after {
        Some(asked) => asked
            .max(backoff)
            .min(velvet_adapters::http::MAX_RETRY_AFTER),
        None => backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_honours_retry_after() {
        let p = RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(10),
        };
        for _ in 0..100 {
            let d1 = delay(&p, 1, None);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = delay(&p, 3, None);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d9 = delay(&p, 9, None);
            assert!(
                d9 >= Duration::from_secs(5) && d9 <= Duration::from_secs(10),
                "capped: {d9:?}"
            );
            assert!(delay(&p, 1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        }
    }
}
