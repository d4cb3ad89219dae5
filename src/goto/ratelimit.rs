//! Client-side rate limiting: one token bucket per GoTo API.
//!
//! GoTo allows 10 requests per second per API and answers 429 beyond that. Hitting the limit
//! and backing off wastes a round trip and, worse, makes a burst of back-fill requests slower
//! than pacing them would be; so every request first takes a token from its API's bucket and
//! *waits* for one when the bucket is empty. Waits are counted so metrics and tests can see
//! the limiter at work. Time comes from `tokio::time`, which makes the limiter deterministic
//! under `tokio::time::pause()`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::endpoint::Api;

/// Per-API token buckets. Burst capacity equals one second's worth of requests.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_second: u32,
    buckets: [Mutex<Bucket>; 4],
    waits: [AtomicU64; 4],
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: a waiting caller reserves its token before sleeping, so callers are
    /// served in arrival order and the bucket never hands out more than the rate.
    tokens: f64,
    last_refill: Instant,
}

impl RateLimiter {
    /// A limiter allowing `rate_per_second` requests per second to each API; 0 disables it.
    pub fn new(rate_per_second: u32) -> Self {
        let now = Instant::now();
        let full = || {
            Mutex::new(Bucket {
                tokens: f64::from(rate_per_second),
                last_refill: now,
            })
        };
        RateLimiter {
            rate_per_second,
            buckets: [full(), full(), full(), full()],
            waits: Default::default(),
        }
    }

    /// Takes one token for `api`, waiting as long as needed. Never fails.
    pub async fn acquire(&self, api: Api) {
        if let Some(wait) = self.reserve(api) {
            self.waits[api.index()].fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                api = api.as_str(),
                wait_ms = wait.as_millis() as u64,
                "rate limited, waiting"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// How many times a request to `api` had to wait for a token.
    pub fn waits(&self, api: Api) -> u64 {
        self.waits[api.index()].load(Ordering::Relaxed)
    }

    /// Takes a token now, or reserves the next one and returns how long to wait for it.
    fn reserve(&self, api: Api) -> Option<Duration> {
        if self.rate_per_second == 0 {
            return None;
        }
        let rate = f64::from(self.rate_per_second);
        let mut bucket = self.buckets[api.index()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(bucket.last_refill);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * rate).min(rate);
        bucket.last_refill = now;
        bucket.tokens -= 1.0;
        if bucket.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-bucket.tokens / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn burst_then_paced() {
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
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_millis(510),
            "{waited:?}"
        );
        limiter.acquire(Api::CallEvents).await;
        let waited = Instant::now() - start;
        assert!(
            waited >= Duration::from_millis(1000) && waited < Duration::from_millis(1010),
            "{waited:?}"
        );
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
        assert!(
            Instant::now() > start,
            "capacity is capped at one second's worth"
        );
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
        // 10 immediately, then one every 100 ms: the 30th at ~2 s, and never faster.
        assert_eq!(done[9], Duration::ZERO);
        assert!(done[10] >= Duration::from_millis(100), "{:?}", done[10]);
        assert!(
            done[29] >= Duration::from_millis(2000) && done[29] < Duration::from_millis(2050),
            "{:?}",
            done[29]
        );
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
