//! The access-token manager.
//!
//! Every GoTo call needs a bearer token obtained from the OAuth token endpoint with either a
//! personal access token or a refresh token. Tokens live an hour; following GoTo's own demos
//! the manager refreshes proactively once a fraction (default ⅓) of the lifetime has passed,
//! so that a failed refresh can be retried while the current token still works. A tokio
//! mutex held across the token request makes refreshes single-flight: concurrent callers wait
//! for the one refresh in progress and then share its result. When an API answers 401 the
//! caller invalidates the token *generation* it used, so a burst of 401s for one stale token
//! triggers one refresh, not one per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

use super::config::{Credential, Secret};
use super::endpoint::{Api, TOKEN};
use super::error::GotoError;
use super::ratelimit::RateLimiter;
use super::retry::{retrying, RetryPolicy};

/// GoTo's documented access-token lifetime, used when a response omits `expires_in`.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// A token handed to a request, with the generation to invalidate if GoTo rejects it.
#[derive(Clone, Debug)]
pub(crate) struct BearerToken {
    pub(crate) secret: Secret,
    pub(crate) generation: u64,
}

/// Obtains, caches and refreshes access tokens.
pub(crate) struct TokenManager {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    refresh_after_fraction: f64,
    policy: RetryPolicy,
    limiter: Arc<RateLimiter>,
    state: Mutex<TokenState>,
    refreshes: AtomicU64,
}

struct TokenState {
    credential: Credential,
    cached: Option<CachedToken>,
    generation: u64,
}

/// A cached access token and the instants that decide when to replace it.
#[derive(Clone, Debug)]
struct CachedToken {
    secret: Secret,
    generation: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

/// What the cache can do for a caller at a given instant.
#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    /// Use it.
    Fresh,
    /// Still valid, but its refresh point has passed: refresh, and fall back to it on failure.
    RefreshDue,
    /// Unusable.
    Expired,
}

impl CachedToken {
    fn new(
        secret: Secret,
        generation: u64,
        obtained_at: Instant,
        lifetime: Duration,
        fraction: f64,
    ) -> Self {
        CachedToken {
            secret,
            generation,
            refresh_at: obtained_at + lifetime.mul_f64(fraction),
            expires_at: obtained_at + lifetime,
        }
    }

    fn freshness(&self, now: Instant) -> Freshness {
        if now < self.refresh_at {
            Freshness::Fresh
        } else if now < self.expires_at {
            Freshness::RefreshDue
        } else {
            Freshness::Expired
        }
    }

    fn bearer(&self) -> BearerToken {
        BearerToken {
            secret: self.secret.clone(),
            generation: self.generation,
        }
    }
}

/// The token endpoint's success body; unknown fields (`scope`, `principal`, `loa`) ignored.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Secret,
    #[serde(default)]
    expires_in: Option<Value>,
    #[serde(default)]
    refresh_token: Option<Secret>,
}

impl TokenManager {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        http: reqwest::Client,
        token_url: Url,
        client_id: String,
        client_secret: Secret,
        credential: Credential,
        refresh_after_fraction: f64,
        policy: RetryPolicy,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        TokenManager {
            http,
            token_url,
            client_id,
            client_secret,
            refresh_after_fraction,
            policy,
            limiter,
            state: Mutex::new(TokenState {
                credential,
                cached: None,
                generation: 0,
            }),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Successful token requests so far, the first one included.
    pub(crate) fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// A usable access token, refreshing first when due. Concurrent callers share one refresh.
    pub(crate) async fn bearer(&self) -> Result<BearerToken, GotoError> {
        let mut state = self.state.lock().await;
        if let Some(cached) = &state.cached {
            match cached.freshness(Instant::now()) {
                Freshness::Fresh => return Ok(cached.bearer()),
                Freshness::RefreshDue => {
                    let fallback = cached.bearer();
                    return match self.fetch(&mut state).await {
                        Ok(token) => Ok(token),
                        Err(err) => {
                            // The old token still works; the next caller tries again.
                            tracing::warn!(error = %err, "proactive token refresh failed, using the current token");
                            Ok(fallback)
                        }
                    };
                }
                Freshness::Expired => {}
            }
        }
        self.fetch(&mut state).await
    }

    /// The token to send for a request that took `taken` before waiting for its rate-limit
    /// slot: the cached one when a refresh replaced `taken` meanwhile, a new one when a 401
    /// elsewhere dropped it or it expired, else `taken` itself. It never starts a refresh that
    /// is merely due (the caller's `bearer` before the wait did), so the send keeps its slot.
    pub(crate) async fn after_wait(&self, taken: BearerToken) -> Result<BearerToken, GotoError> {
        {
            let state = self.state.lock().await;
            if let Some(cached) = &state.cached {
                if cached.freshness(Instant::now()) != Freshness::Expired {
                    return Ok(if cached.generation == taken.generation {
                        taken
                    } else {
                        cached.bearer()
                    });
                }
            }
        }
        self.bearer().await
    }

    /// Forgets the token of `generation` after GoTo rejected it with 401. A newer token (from
    /// a refresh another request already made) is kept.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state
            .cached
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            tracing::info!("access token rejected by GoTo, will refresh");
            state.cached = None;
        }
    }

    /// Requests a new token (with retries) and caches it. Called with the state lock held.
    async fn fetch(&self, state: &mut TokenState) -> Result<BearerToken, GotoError> {
        let (grant, field, credential) = match &state.credential {
            Credential::PersonalAccessToken(pat) => ("personal_access_token", "pat", pat.clone()),
            Credential::RefreshToken(rt) => ("refresh_token", "refresh_token", rt.clone()),
        };
        let (response, obtained_at) = retrying(TOKEN, &self.policy, true, || {
            self.request_once(grant, field, &credential)
        })
        .await?;

        let lifetime = response
            .expires_in
            .as_ref()
            .and_then(seconds)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_EXPIRES_IN)
            .max(Duration::from_secs(1));
        if let (Credential::RefreshToken(_), Some(new_rt)) =
            (&state.credential, response.refresh_token)
        {
            // Only replaced when GoTo issues a new one; the refresh response normally has none.
            if !new_rt.is_empty() {
                state.credential = Credential::RefreshToken(new_rt);
            }
        }
        state.generation += 1;
        let cached = CachedToken::new(
            response.access_token,
            state.generation,
            obtained_at,
            lifetime,
            self.refresh_after_fraction,
        );
        let token = cached.bearer();
        state.cached = Some(cached);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("callbridge_goto_token_refreshes_total", "grant" => grant).increment(1);
        tracing::debug!(
            grant,
            lifetime_secs = lifetime.as_secs(),
            "obtained GoTo access token"
        );
        Ok(token)
    }

    /// One POST to the token endpoint. Returns the response and the instant the request
    /// left, from which the token's lifetime is counted (conservatively).
    async fn request_once(
        &self,
        grant: &'static str,
        field: &'static str,
        credential: &Secret,
    ) -> Result<(TokenResponse, Instant), GotoError> {
        self.limiter.acquire(Api::OAuth).await;
        let sent_at = Instant::now();
        let request = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header(ACCEPT, "application/json")
            .form(&[("grant_type", grant), (field, credential.expose())]);
        let (status, retry_after, body) = super::transport::exchange(TOKEN, request).await?;
        if !(200..300).contains(&status) {
            return Err(GotoError::from_token_response(
                grant,
                status,
                &body,
                retry_after,
            ));
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| GotoError::decode(TOKEN, &e))?;
        if parsed.access_token.is_empty() {
            return Err(GotoError::Decode {
                endpoint: TOKEN,
                detail: "empty access_token".to_owned(),
            });
        }
        Ok((parsed, sent_at))
    }
}

/// `expires_in` as seconds; a number everywhere seen, a numeric string accepted too.
fn seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_the_refresh_fraction() {
        let t0 = Instant::now();
        let token = CachedToken::new(
            Secret::new("t"),
            1,
            t0,
            Duration::from_secs(3600),
            1.0 / 3.0,
        );
        assert_eq!(token.freshness(t0), Freshness::Fresh);
        assert_eq!(
            token.freshness(t0 + Duration::from_secs(1199)),
            Freshness::Fresh
        );
        assert_eq!(
            token.freshness(t0 + Duration::from_secs(1200)),
            Freshness::RefreshDue
        );
        assert_eq!(
            token.freshness(t0 + Duration::from_secs(3599)),
            Freshness::RefreshDue
        );
        assert_eq!(
            token.freshness(t0 + Duration::from_secs(3600)),
            Freshness::Expired
        );
    }

    #[test]
    fn token_response_accepts_pat_and_refresh_shapes() {
        let pat: TokenResponse = serde_json::from_str(
            r#"{"access_token":"a","token_type":"Bearer","expires_in":3600,"scope":"x y","principal":"u@example.com","loa":3}"#,
        )
        .unwrap();
        assert_eq!(pat.access_token.expose(), "a");
        assert!(pat.refresh_token.is_none());
        assert_eq!(pat.expires_in.as_ref().and_then(seconds), Some(3600));
        let refresh: TokenResponse = serde_json::from_str(
            r#"{"access_token":"b","expires_in":"1800","refresh_token":"new-rt"}"#,
        )
        .unwrap();
        assert_eq!(refresh.expires_in.as_ref().and_then(seconds), Some(1800));
        assert_eq!(refresh.refresh_token.unwrap().expose(), "new-rt");
    }
}
