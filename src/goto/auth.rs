//! The access-token manager.
//!
//! Every GoTo call needs a bearer token obtained from the OAuth token endpoint with either a
//! personal access token or a refresh token. Tokens live an hour; following GoTo's own demos
//! the manager refreshes proactively once a fraction (default ⅓) of the lifetime has passed,
//! so that a failed refresh can be retried while the current token still works.
//!
//! Token requests are single-flight: one caller at a time holds `requesting` while it asks
//! the token endpoint, and callers without a usable token wait for it and then share its
//! result (the full retrying request). A caller whose token is still valid never waits for
//! it: the proactive refresh is one attempt, bounded by [`PROACTIVE_ATTEMPT_TIMEOUT`], made by
//! the one caller that finds it due while no request is in flight; everyone else keeps using
//! the cached token meanwhile. A failed proactive refresh is tried again by the next caller
//! once, then only after a back-off that doubles up to [`PROACTIVE_BACKOFF_MAX`], so a login
//! host that is down or hanging while the token is valid costs an API call at most one short
//! wait now and then, not a retry cycle per request. Once the token has expired (or was
//! dropped after a 401) the full retrying request is made. When an API answers 401 the caller
//! invalidates the token *generation* it used, so a burst of 401s for one stale token
//! triggers one refresh, not one per request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::config::{Credential, Secret};
use super::endpoint::{Api, TOKEN};
use super::error::GotoError;
use super::ratelimit::RateLimiter;
use super::retry::{retrying, RetryPolicy};

/// GoTo's documented access-token lifetime, used when a response omits `expires_in`.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// Longest a proactive refresh may take (the request timeout, when shorter, applies instead):
/// the caller making it waits for it while its token is still good.
pub(crate) const PROACTIVE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Wait after the second consecutive failed proactive refresh; doubles per further failure.
const PROACTIVE_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Cap on the wait between proactive refreshes that keep failing.
pub(crate) const PROACTIVE_BACKOFF_MAX: Duration = Duration::from_secs(60);

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
    /// Timeout of the one attempt of a proactive refresh.
    proactive_timeout: Duration,
    /// Where the refresh token is kept across restarts (see `GotoClientConfig`).
    refresh_token_file: Option<PathBuf>,
    /// The file's content as this manager last read or wrote it: only a change made by someone
    /// else is picked up (a file it could not write still holds the token GoTo retired).
    file_token: Mutex<Option<String>>,
    limiter: Arc<RateLimiter>,
    /// The cache; locked briefly, never across I/O.
    state: Mutex<TokenState>,
    /// Held by the one caller requesting a token (single flight).
    requesting: tokio::sync::Mutex<()>,
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
    /// When the next proactive refresh is due: a fraction of the lifetime after the token was
    /// obtained, moved later after each failed proactive refresh.
    refresh_at: Instant,
    expires_at: Instant,
    /// Consecutive failed proactive refreshes of this token.
    failed_refreshes: u32,
}

/// What the cache can do for a caller at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Freshness {
    /// Use it.
    Fresh,
    /// Still valid, but its refresh point has passed: one caller tries a refresh, and
    /// everyone (that caller too, if it fails) keeps using the token meanwhile.
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
            failed_refreshes: 0,
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

    /// Records a failed proactive refresh at `now`: the next one is due after
    /// [`proactive_backoff`] (or the server's `Retry-After`, if longer), never after expiry.
    /// Returns the wait.
    fn refresh_failed(&mut self, now: Instant, retry_after: Option<Duration>) -> Duration {
        self.failed_refreshes = self.failed_refreshes.saturating_add(1);
        let wait = proactive_backoff(self.failed_refreshes)
            .max(retry_after.unwrap_or_default().min(PROACTIVE_BACKOFF_MAX));
        self.refresh_at = (now + wait).min(self.expires_at);
        wait
    }
}

/// Replaces `path` with `contents` in one step (a temporary file beside it, then a rename), so
/// a reader never sees half a token. Owner-only permissions where the platform has them.
async fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, contents).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, path).await
}

/// The wait before the next proactive refresh after `failures` consecutive failed ones: none
/// after the first (a one-off failure is tried again by the next caller), then
/// [`PROACTIVE_BACKOFF_BASE`] doubling up to [`PROACTIVE_BACKOFF_MAX`].
fn proactive_backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let exponent = (failures - 2).min(31);
    PROACTIVE_BACKOFF_BASE
        .saturating_mul(1u32 << exponent)
        .min(PROACTIVE_BACKOFF_MAX)
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
        request_timeout: Duration,
        refresh_token_file: Option<PathBuf>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        TokenManager {
            http,
            token_url,
            client_id,
            client_secret,
            refresh_after_fraction,
            policy,
            proactive_timeout: request_timeout.min(PROACTIVE_ATTEMPT_TIMEOUT),
            refresh_token_file,
            file_token: Mutex::new(None),
            limiter,
            state: Mutex::new(TokenState {
                credential,
                cached: None,
                generation: 0,
            }),
            requesting: tokio::sync::Mutex::new(()),
            refreshes: AtomicU64::new(0),
        }
    }

    /// Successful token requests so far, the first one included.
    pub(crate) fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, TokenState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The generation of the cached token, if any, without asking for one: to renew, after a
    /// refusal outside the transport's own 401 handling, the token a request went with.
    pub(crate) fn cached_generation(&self) -> Option<u64> {
        self.state().cached.as_ref().map(|c| c.generation)
    }

    /// The cached token and what it is good for now; `None` when there is none.
    fn cached(&self) -> Option<(BearerToken, Freshness)> {
        let state = self.state();
        state
            .cached
            .as_ref()
            .map(|c| (c.bearer(), c.freshness(Instant::now())))
    }

    /// A usable access token, refreshing first when due. Callers without a valid token share
    /// one token request; callers with one never wait for a request another caller makes.
    pub(crate) async fn bearer(&self) -> Result<BearerToken, GotoError> {
        match self.cached() {
            Some((token, Freshness::Fresh)) => return Ok(token),
            Some((token, Freshness::RefreshDue)) => {
                // A token request in flight: it is someone else's; keep using this token.
                let Ok(_flight) = self.requesting.try_lock() else {
                    return Ok(token);
                };
                // Look again: the request that just ended may have replaced the token or
                // put the next refresh off.
                match self.cached() {
                    Some((token, Freshness::Fresh)) => return Ok(token),
                    Some((token, Freshness::RefreshDue)) => {
                        if let Some(token) = self.refresh_early(token).await {
                            return Ok(token);
                        }
                    }
                    Some((_, Freshness::Expired)) | None => {}
                }
                // Dropped after a 401, or expired meanwhile: a new token is needed now.
                return self.fetch().await;
            }
            Some((_, Freshness::Expired)) | None => {}
        }
        let _flight = self.requesting.lock().await;
        // Another caller may have obtained a token while this one waited.
        if let Some((token, Freshness::Fresh | Freshness::RefreshDue)) = self.cached() {
            return Ok(token);
        }
        self.fetch().await
    }

    /// The proactive refresh, by the caller holding `requesting` while `current` is still
    /// valid: one attempt, bounded by `proactive_timeout`. On failure the cached token stays
    /// and the next refresh is put off ([`CachedToken::refresh_failed`]). `None` when there is
    /// no valid token to fall back to any more (a 401 dropped it, or it expired meanwhile).
    async fn refresh_early(&self, current: BearerToken) -> Option<BearerToken> {
        let err = match self.request_and_cache(false).await {
            Ok(token) => return Some(token),
            Err(err) => err,
        };
        let now = Instant::now();
        let mut state = self.state();
        let cached = state.cached.as_mut().filter(|c| {
            c.generation == current.generation && c.freshness(now) != Freshness::Expired
        })?;
        let wait = cached.refresh_failed(now, err.retry_after());
        tracing::warn!(
            error = %err,
            failures = cached.failed_refreshes,
            next_attempt_in_ms = wait.as_millis() as u64,
            valid_for_secs = cached.expires_at.saturating_duration_since(now).as_secs(),
            "proactive token refresh failed, using the current token"
        );
        Some(current)
    }

    /// The token to send for a request that took `taken` before waiting for its rate-limit
    /// slot: the cached one when a refresh replaced `taken` meanwhile, a new one when a 401
    /// elsewhere dropped it or it expired, else `taken` itself. It never starts a refresh that
    /// is merely due (the caller's `bearer` before the wait did), so the send keeps its slot.
    pub(crate) async fn after_wait(&self, taken: BearerToken) -> Result<BearerToken, GotoError> {
        if let Some((cached, freshness)) = self.cached() {
            if freshness != Freshness::Expired {
                return Ok(if cached.generation == taken.generation {
                    taken
                } else {
                    cached
                });
            }
        }
        self.bearer().await
    }

    /// Forgets the token of `generation` after GoTo rejected it with 401. A newer token (from
    /// a refresh another request already made) is kept.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut state = self.state();
        if state
            .cached
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            tracing::info!("access token rejected by GoTo, will refresh");
            state.cached = None;
        }
    }

    /// Requests a new token with retries and caches it. Called holding `requesting`.
    async fn fetch(&self) -> Result<BearerToken, GotoError> {
        self.request_and_cache(true).await
    }

    /// Requests a new token and caches it: with the retry policy when `retry`, else one
    /// attempt bounded by `proactive_timeout`. Called holding `requesting`, so no other token
    /// request runs meanwhile and the credential cannot change under it.
    async fn request_and_cache(&self, retry: bool) -> Result<BearerToken, GotoError> {
        self.pick_up_stored_refresh_token().await;
        let (grant, field, credential) = match &self.state().credential {
            Credential::PersonalAccessToken(pat) => ("personal_access_token", "pat", pat.clone()),
            Credential::RefreshToken(rt) => ("refresh_token", "refresh_token", rt.clone()),
        };
        let (response, obtained_at) = if retry {
            retrying(TOKEN, &self.policy, true, || {
                self.request_once(grant, field, &credential, None)
            })
            .await?
        } else {
            self.request_once(grant, field, &credential, Some(self.proactive_timeout))
                .await?
        };

        let lifetime = response
            .expires_in
            .as_ref()
            .and_then(seconds)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_EXPIRES_IN)
            .max(Duration::from_secs(1));
        // In a block: the guard must be gone before the await below (an explicit drop does
        // not end its scope for the future's `Send` check).
        let (token, rotated) = {
            let mut state = self.state();
            let mut rotated = None;
            if let (Credential::RefreshToken(_), Some(new_rt)) =
                (&state.credential, response.refresh_token)
            {
                // Only replaced when GoTo issues a new one; the refresh response normally has none.
                if !new_rt.is_empty() {
                    state.credential = Credential::RefreshToken(new_rt.clone());
                    rotated = Some(new_rt);
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
            (token, rotated)
        };
        if let Some(new_rt) = rotated {
            self.store_refresh_token(&new_rt).await;
        }
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("callbridge_goto_token_refreshes_total", "grant" => grant).increment(1);
        tracing::debug!(
            grant,
            lifetime_secs = lifetime.as_secs(),
            "obtained GoTo access token"
        );
        Ok(token)
    }

    /// Before a refresh grant: a refresh token in `refresh_token_file` other than the one in
    /// memory was put there by another process (a replica GoTo gave a new one) or an operator,
    /// and is used. Called holding `requesting`.
    async fn pick_up_stored_refresh_token(&self) {
        let Some(path) = &self.refresh_token_file else {
            return;
        };
        if !matches!(self.state().credential, Credential::RefreshToken(_)) {
            return;
        }
        let stored = match tokio::fs::read_to_string(path).await {
            Ok(text) => text.trim().to_owned(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read goto.refresh_token_file; using the refresh token in memory");
                return;
            }
        };
        {
            let mut seen = self
                .file_token
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.as_deref() == Some(stored.as_str()) {
                return; // unchanged since this manager read or wrote it
            }
            *seen = Some(stored.clone());
        }
        let mut state = self.state();
        if let Credential::RefreshToken(current) = &state.credential {
            if !stored.is_empty() && stored != current.expose() {
                tracing::info!(path = %path.display(), "using the refresh token found in goto.refresh_token_file");
                state.credential = Credential::RefreshToken(Secret::new(stored));
            }
        }
    }

    /// GoTo issued a new refresh token and retired the old one: keep it where a restart (and
    /// other replicas sharing the file) will find it, or say loudly that nothing will.
    async fn store_refresh_token(&self, new_rt: &Secret) {
        let Some(path) = &self.refresh_token_file else {
            tracing::error!("GoTo issued a new refresh token; it is kept in memory only, so after a restart the configured one may be refused. Fix: set goto.refresh_token_file to a writable file, or use a personal access token");
            return;
        };
        match write_atomically(path, new_rt.expose().as_bytes()).await {
            Ok(()) => {
                *self
                    .file_token
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                    Some(new_rt.expose().to_owned());
                tracing::info!(path = %path.display(), "GoTo issued a new refresh token; written to goto.refresh_token_file")
            }
            Err(e) => tracing::error!(
                path = %path.display(), error = %e,
                "GoTo issued a new refresh token that could not be written; it is kept in memory only, so after a restart the one in the file may be refused. Fix: make goto.refresh_token_file writable, or use a personal access token"
            ),
        }
    }

    /// One POST to the token endpoint, with `timeout` instead of the client's when given.
    /// Returns the response and the instant the request left, from which the token's lifetime
    /// is counted (conservatively).
    async fn request_once(
        &self,
        grant: &'static str,
        field: &'static str,
        credential: &Secret,
        timeout: Option<Duration>,
    ) -> Result<(TokenResponse, Instant), GotoError> {
        self.limiter.acquire(Api::OAuth).await;
        let sent_at = Instant::now();
        let mut request = self
            .http
            .post(self.token_url.clone())
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .header(ACCEPT, "application/json")
            .form(&[("grant_type", grant), (field, credential.expose())]);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
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
    fn failed_proactive_refreshes_back_off_but_never_past_expiry() {
        assert_eq!(proactive_backoff(1), Duration::ZERO);
        assert_eq!(proactive_backoff(2), Duration::from_secs(1));
        assert_eq!(proactive_backoff(3), Duration::from_secs(2));
        assert_eq!(proactive_backoff(8), PROACTIVE_BACKOFF_MAX);
        assert_eq!(proactive_backoff(u32::MAX), PROACTIVE_BACKOFF_MAX);

        let t0 = Instant::now();
        let mut token = CachedToken::new(
            Secret::new("t"),
            1,
            t0,
            Duration::from_secs(3600),
            1.0 / 3.0,
        );
        let due = t0 + Duration::from_secs(1200);
        // The first failure leaves the refresh due; the next ones put it off.
        assert_eq!(token.refresh_failed(due, None), Duration::ZERO);
        assert_eq!(token.freshness(due), Freshness::RefreshDue);
        assert_eq!(token.refresh_failed(due, None), Duration::from_secs(1));
        assert_eq!(token.freshness(due), Freshness::Fresh);
        assert_eq!(
            token.freshness(due + Duration::from_secs(1)),
            Freshness::RefreshDue
        );
        // A server's Retry-After is honoured when longer (capped like the backoff).
        let wait = token.refresh_failed(due, Some(Duration::from_secs(30)));
        assert_eq!(wait, Duration::from_secs(30));
        let wait = token.refresh_failed(due, Some(Duration::from_secs(3600)));
        assert_eq!(wait, PROACTIVE_BACKOFF_MAX);
        // Near expiry the refresh point stops at expiry: then the token is simply expired.
        let late = t0 + Duration::from_secs(3599);
        token.refresh_failed(late, None);
        assert_eq!(token.refresh_at, token.expires_at);
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
