//! Client-side rate limiting: a sliding one-second window per GoTo API.
//!
//! GoTo allows 10 requests per second per API and answers 429 beyond that; how it counts is not
//! documented, so the limiter assumes the strictest reading: no more than `rate` requests in ANY
//! trailing second (a token bucket allows twice that across a refill boundary, which the contract
//! test against the simulator caught). Every request reserves the earliest slot that keeps the
//! window, plus a small margin for network jitter between sending and GoTo's arrival time, and
//! *waits* for it. Reservations are taken in arrival order, so callers are served fairly. Waits
//! are counted so metrics and tests can see the limiter at work. Time comes from `tokio::time`,
//! which makes the limiter deterministic under `tokio::time::pause()`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::endpoint::Api;

/// The window GoTo's limit is counted over.
const WINDOW: Duration = Duration::from_secs(1);
/// Extra spacing beyond the window, for jitter between our send and GoTo's receipt.
const JITTER_MARGIN: Duration = Duration::from_millis(50);

/// Per-API sliding windows.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_second: u32,
    windows: [Mutex<VecDeque<Instant>>; 4],
    waits: [AtomicU64; 4],
}

impl RateLimiter {
    /// A limiter allowing `rate_per_second` requests per second to each API; 0 disables it.
    pub fn new(rate_per_second: u32) -> Self {
        let empty = || Mutex::new(VecDeque::with_capacity(rate_per_second as usize + 1));
        RateLimiter {
            rate_per_second,
            windows: [empty(), empty(), empty(), empty()],
            waits: Default::default(),
        }
    }

    /// Takes one slot for `api`, waiting as long as needed. Never fails.
    pub async fn acquire(&self, api: Api) {
        if let Some(wait) = self.reserve(api) {
            self.waits[api.index()].fetch_add(1, Ordering::Relaxed);
            metrics::counter!("callbridge_goto_rate_limit_waits_total", "api" => api.as_str())
                .increment(1);
            tracing::debug!(
                api = api.as_str(),
                wait_ms = wait.as_millis() as u64,
                "rate limited, waiting"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// How many times a request to `api` had to wait for a slot.
    pub fn waits(&self, api: Api) -> u64 {
        self.waits[api.index()].load(Ordering::Relaxed)
    }

    /// Reserves the earliest send time that keeps at most `rate` sends in any window and returns
    /// how long to wait for it (`None`: send now).
    fn reserve(&self, api: Api) -> Option<Duration> {
        if self.rate_per_second == 0 {
            return None;
        }
        let rate = self.rate_per_second as usize;
        let mut slots = self.windows[api.index()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        // The `rate`-th most recent reservation bounds the next one.
        let at = if slots.len() < rate {
            now
        } else {
            let bound = slots[slots.len() - rate] + WINDOW + JITTER_MARGIN;
            bound.max(now)
        };
        slots.push_back(at);
        while slots.len() > rate {
            slots.pop_front();
        }
        (at > now).then(|| at - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn window_then_waits() {
        let limiter = RateLimiter::new(2);
        let start = Instant::now();
        limiter.acquire(Api::CallEvents).await;
        limiter.acquire(Api::CallEvents).await;
        assert_eq!(
            Instant::now(),
            start,
            "the burst capacity is served immediately"
        );
        assert_eq!(limiter.waits(Api::CallEvents), 0);

        limiter.acquire(Api::CallEvents).await;
        let waited = Instant::now() - start;
        assert_eq!(
            waited,
            WINDOW + JITTER_MARGIN,
            "the third waits for the window"
        );
        // The fourth fits in the same window as the third, without waiting.
        limiter.acquire(Api::CallEvents).await;
        let waited = Instant::now() - start;
        assert_eq!(waited, WINDOW + JITTER_MARGIN);
        limiter.acquire(Api::CallEvents).await;
        assert_eq!(Instant::now() - start, 2 * (WINDOW + JITTER_MARGIN));
        assert_eq!(limiter.waits(Api::CallEvents), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn apis_have_separate_buckets() {
        let limiter = RateLimiter::new(1);
        let start = Instant::now();
        limiter.acquire(Api::CallEvents).await;
        limiter.acquire(Api::NotificationChannel).await;
        limiter.acquire(Api::CallEventsReport).await;
        limiter.acquire(Api::OAuth).await;
        assert_eq!(Instant::now(), start);
        for api in Api::ALL {
            assert_eq!(limiter.waits(api), 0);
        }
        limiter.acquire(Api::CallEvents).await;
        assert!(Instant::now() - start >= Duration::from_secs(1));
        assert_eq!(limiter.waits(Api::CallEvents), 1);
        assert_eq!(limiter.waits(Api::NotificationChannel), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_while_idle_but_not_beyond_capacity() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            limiter.acquire(Api::OAuth).await;
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..3 {
            limiter.acquire(Api::OAuth).await;
        }
        assert_eq!(Instant::now(), start, "a full bucket after idling");
        limiter.acquire(Api::OAuth).await;
        assert!(Instant::now() > start, "at most one second's worth at once");
        assert_eq!(limiter.waits(Api::OAuth), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_are_spread_at_the_rate() {
        let limiter = Arc::new(RateLimiter::new(10));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                limiter.acquire(Api::NotificationChannel).await;
                Instant::now()
            }));
        }
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap() - start);
        }
        done.sort();
        // Never more than 10 in any trailing second (plus margin).
        for (i, t) in done.iter().enumerate().skip(10) {
            assert!(
                *t >= done[i - 10] + WINDOW + JITTER_MARGIN,
                "request {i} at {t:?} breaks the window"
            );
        }
        assert_eq!(done[9], Duration::ZERO);
        assert_eq!(limiter.waits(Api::NotificationChannel), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_disables_limiting() {
        let limiter = RateLimiter::new(0);
        let start = Instant::now();
        for _ in 0..1000 {
            limiter.acquire(Api::CallEvents).await;
        }
        assert_eq!(Instant::now(), start);
        assert_eq!(limiter.waits(Api::CallEvents), 0);
    }
}
