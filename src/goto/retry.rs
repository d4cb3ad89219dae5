//! When to try again, and how long to wait first.
//!
//! Pure policy, no I/O: exponential backoff with jitter (so many bridges recovering from the
//! same GoTo outage do not retry in lock-step) and the parsing of a server's `Retry-After`
//! header, in either of its forms (delta-seconds or HTTP date). GoTo does not document
//! sending `Retry-After`, so it is honoured when present and backoff is used otherwise.
//! [`retrying`] is the one loop that applies the policy, for API calls and token requests.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::endpoint::Endpoint;
use super::error::GotoError;

/// Longest `Retry-After` honoured; a longer one (or a date far ahead) is cut to this, so a
/// misbehaving server cannot park a request for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Attempts and delays for retryable failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included.
    pub max_attempts: u32,
    /// Backoff ceiling after the first failure; doubles per further failure.
    pub base_delay: Duration,
    /// Cap on the backoff ceiling.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The backoff ceiling after `failed_attempts` failures (1-based): `base * 2^(n-1)`,
    /// capped at `max_delay`.
    pub fn ceiling(&self, failed_attempts: u32) -> Duration {
        let exponent = failed_attempts.saturating_sub(1).min(31);
        self.base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay)
    }

    /// "Equal jitter" backoff: a uniformly random delay in `[ceiling/2, ceiling]`. Half the
    /// ceiling is always waited, so retries back off even with unlucky draws.
    pub fn backoff<R: Rng + ?Sized>(&self, failed_attempts: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(failed_attempts);
        let half = ceiling / 2;
        let spread = ceiling - half;
        let jitter = if spread.is_zero() {
            Duration::ZERO
        } else {
            spread.mul_f64(rng.gen_range(0.0..=1.0))
        };
        half + jitter
    }

    /// The wait before the next attempt: the server's `Retry-After` when it gave one (capped
    /// at [`MAX_RETRY_AFTER`]), jittered backoff otherwise.
    pub fn delay<R: Rng + ?Sized>(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Duration {
        match retry_after {
            Some(server_says) => server_says.min(MAX_RETRY_AFTER),
            None => self.backoff(failed_attempts, rng),
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the policy's attempts are spent.
///
/// Retryable failures (429, 5xx, transport) are retried after [`RetryPolicy::delay`] only when
/// `retry_allowed`: a request that is not idempotent (channel creation) must not be repeated
/// blindly, so its first failure is returned as is and the caller finds out what happened.
/// When attempts run out the last error is wrapped in [`GotoError::RetriesExhausted`].
pub(crate) async fn retrying<T, F, Fut>(
    endpoint: Endpoint,
    policy: &RetryPolicy,
    retry_allowed: bool,
    mut attempt: F,
) -> Result<T, GotoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, GotoError>>,
{
    let mut failed = 0u32;
    loop {
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        failed += 1;
        if !err.is_retryable() || !retry_allowed {
            return Err(err);
        }
        if failed >= policy.max_attempts {
            if failed == 1 {
                return Err(err);
            }
            return Err(GotoError::RetriesExhausted {
                endpoint,
                attempts: failed,
                last: Box::new(err),
            });
        }
        let delay = policy.delay(failed, err.retry_after(), &mut rand::thread_rng());
        tracing::warn!(
            %endpoint,
            attempt = failed,
            delay_ms = delay.as_millis() as u64,
            error = %err,
            "GoTo request failed, retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Parses a `Retry-After` value: delta-seconds (`"120"`) or an HTTP date (IMF-fixdate,
/// RFC 850 or asctime form), relative to `now`. A date in the past means "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `Retry-After` of an answer's `headers`, when it has one GoTo's way or the other
/// ([`parse_retry_after`]); the REST answers and a refused WebSocket upgrade alike.
pub fn retry_after_header(
    headers: &reqwest::header::HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now))
}

/// Parses the three date formats HTTP/1.1 allows (RFC 9110 §5.6.7). The weekday is ignored.
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let (day, month, year, time) = match parts.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [weekday, day, month, year, time, "GMT"] if weekday.ends_with(',') => {
            (day.parse().ok()?, *month, year.parse().ok()?, *time)
        }
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [weekday, date, time, "GMT"] if weekday.ends_with(',') => {
            let mut it = date.split('-');
            let day = it.next()?.parse().ok()?;
            let month = it.next()?;
            let yy: i64 = it.next()?.parse().ok()?;
            if it.next().is_some() {
                return None;
            }
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (day, month, year, *time)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_weekday, month, day, time, year] => {
            (day.parse().ok()?, *month, year.parse().ok()?, *time)
        }
        _ => return None,
    };
    let month = month_number(month)?;
    let mut hms = time.split(':');
    let hour: i64 = hms.next()?.parse().ok()?;
    let minute: i64 = hms.next()?.parse().ok()?;
    let second: i64 = hms.next()?.parse().ok()?;
    if hms.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if !(1..=31).contains(&day) || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn month_number(name: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS
        .iter()
        .position(|m| *m == name)
        .and_then(|i| i64::try_from(i + 1).ok())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        let p = policy();
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(2), Duration::from_millis(400));
        assert_eq!(p.ceiling(3), Duration::from_millis(800));
        assert_eq!(p.ceiling(6), Duration::from_millis(6400));
        assert_eq!(p.ceiling(7), Duration::from_secs(10));
        assert_eq!(p.ceiling(1000), Duration::from_secs(10));
        assert_eq!(p.ceiling(0), Duration::from_millis(200));
    }

    #[test]
    fn backoff_stays_within_half_and_full_ceiling_and_varies() {
        let p = policy();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for attempt in 1..10 {
            let ceiling = p.ceiling(attempt);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..200 {
                let d = p.backoff(attempt, &mut rng);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
                seen.insert(d);
            }
            assert!(seen.len() > 10, "jitter must spread delays");
        }
    }

    #[test]
    fn retry_after_wins_over_backoff_and_is_capped() {
        let p = policy();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3)), &mut rng),
            Duration::from_secs(3)
        );
        assert_eq!(p.delay(1, Some(Duration::ZERO), &mut rng), Duration::ZERO);
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(86_400)), &mut rng),
            MAX_RETRY_AFTER
        );
        let d = p.delay(2, None, &mut rng);
        assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(400));
    }

    #[test]
    fn parses_delta_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn parses_all_three_http_date_forms() {
        // 1994-11-06T08:49:37Z = 784111777
        let expected = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(expected)
        );
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(expected)
        );
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(expected));
        // Leap day after 2000 and the epoch itself.
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1_709_164_800))
        );
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 CET"), None);
    }

    #[test]
    fn http_date_retry_after_is_relative_to_now() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means retry now"
        );
    }

    mod looping {
        use super::super::*;
        use crate::goto::endpoint::{GET_CHANNEL, LIST_CHANNELS};
        use std::cell::Cell;
        use tokio::time::Instant;

        fn policy(max_attempts: u32) -> RetryPolicy {
            RetryPolicy {
                max_attempts,
                base_delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(1),
            }
        }

        fn failure(status: u16, retry_after: Option<Duration>) -> GotoError {
            GotoError::from_api_response(GET_CHANNEL, status, b"{}", retry_after)
        }

        #[tokio::test(start_paused = true)]
        async fn retries_until_success_with_growing_delays() {
            let calls = Cell::new(0u32);
            let start = Instant::now();
            let result = retrying(GET_CHANNEL, &policy(5), true, || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Err(failure(503, None))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
            assert_eq!(result.unwrap(), 4);
            // Waits of [50,100] + [100,200] + [200,400] ms.
            let waited = Instant::now() - start;
            assert!(
                waited >= Duration::from_millis(350) && waited <= Duration::from_millis(705),
                "{waited:?}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn exhausts_and_wraps_the_last_error() {
            let calls = Cell::new(0u32);
            let err = retrying(LIST_CHANNELS, &policy(3), true, || {
                calls.set(calls.get() + 1);
                async { Err::<(), _>(failure(429, None)) }
            })
            .await
            .unwrap_err();
            assert_eq!(calls.get(), 3);
            assert!(matches!(
                err,
                GotoError::RetriesExhausted { attempts: 3, endpoint, .. } if endpoint == LIST_CHANNELS
            ));
        }

        #[tokio::test(start_paused = true)]
        async fn honours_retry_after() {
            let calls = Cell::new(0u32);
            let start = Instant::now();
            retrying(GET_CHANNEL, &policy(5), true, || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n == 1 {
                        Err(failure(429, Some(Duration::from_secs(7))))
                    } else {
                        Ok(())
                    }
                }
            })
            .await
            .unwrap();
            let waited = Instant::now() - start;
            assert!(
                waited >= Duration::from_secs(7) && waited < Duration::from_millis(7010),
                "{waited:?}"
            );
        }

        #[tokio::test(start_paused = true)]
        async fn permanent_errors_and_non_idempotent_requests_fail_at_once() {
            for (status, allowed) in [(400, true), (404, true), (503, false)] {
                let calls = Cell::new(0u32);
                let err = retrying(GET_CHANNEL, &policy(5), allowed, || {
                    calls.set(calls.get() + 1);
                    async move { Err::<(), _>(failure(status, None)) }
                })
                .await
                .unwrap_err();
                assert_eq!(calls.get(), 1, "status {status}");
                assert_eq!(err.status(), Some(status));
                assert!(!matches!(err, GotoError::RetriesExhausted { .. }));
            }
        }
    }
}
