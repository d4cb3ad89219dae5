//! GoTo's per-API rate limit: N requests per second, 429 beyond.
//!
//! A sliding one-second window per API. Two windows are kept: requests *seen* (for the
//! "busiest second" statistic, which must include rejected requests to show a client hammering)
//! and requests *admitted* (the limit itself, so a client that keeps retrying is not locked out
//! for ever by its own rejected requests).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::errors::Api;

const WINDOW: Duration = Duration::from_secs(1);

/// Sliding windows per API.
#[derive(Debug, Default)]
pub struct RateLimiter {
    seen: HashMap<Api, VecDeque<Instant>>,
    admitted: HashMap<Api, VecDeque<Instant>>,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// False = answer 429.
    pub admitted: bool,
    /// Requests seen in the last second, this one included.
    pub seen_in_window: usize,
}

fn trim(q: &mut VecDeque<Instant>, now: Instant) {
    while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        q.pop_front();
    }
}

impl RateLimiter {
    /// Record a request at `now` and decide; `limit` 0 = unlimited.
    pub fn check(&mut self, api: Api, limit: u32, now: Instant) -> Admission {
        let seen = self.seen.entry(api).or_default();
        trim(seen, now);
        seen.push_back(now);
        let seen_in_window = seen.len();
        let admitted_q = self.admitted.entry(api).or_default();
        trim(admitted_q, now);
        let admitted = limit == 0 || admitted_q.len() < limit as usize;
        if admitted {
            admitted_q.push_back(now);
        }
        Admission {
            admitted,
            seen_in_window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_per_api_and_recovers_after_a_second() {
        let mut r = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(r.check(Api::CallEvents, 10, t0).admitted);
        }
        let eleventh = r.check(Api::CallEvents, 10, t0);
        assert!(!eleventh.admitted);
        assert_eq!(eleventh.seen_in_window, 11);
        assert!(
            r.check(Api::OAuth, 10, t0).admitted,
            "other APIs unaffected"
        );
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert!(r.check(Api::CallEvents, 10, Instant::now()).admitted);
        assert!(r.check(Api::CallEvents, 0, t0).admitted, "0 = unlimited");
    }
}
