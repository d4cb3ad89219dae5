//! Fault injection: the settings and the dice.
//!
//! The bridge exists to survive GoTo misbehaving, so the simulator must misbehave on purpose, in
//! every way the bridge claims to survive, at rates the tester picks and can change while traffic
//! runs (control endpoint `PATCH /_simulator/faults`). Every decision is taken here with one
//! seeded RNG so a test can reason about what "rate 1.0" or "rate 0.0" means without timing luck.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Every fault knob. Rates are probabilities in 0..=1; `*_every` are schedules (None = off).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultsConfig {
    /// Seed of the fault dice.
    pub seed: u64,
    /// Per state: never delivered, still returned by the back-fill endpoint.
    pub drop_rate: f64,
    /// Per state: delivered twice with the same notification id.
    pub duplicate_rate: f64,
    /// Per state: delivered twice, the second copy with a new notification id.
    pub duplicate_new_id_rate: f64,
    /// Per state: held back by a random delay up to `max_delay` (reorders).
    pub delay_rate: f64,
    /// Upper bound of the delay fault.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Every this often a burst window opens: deliveries are held until it closes.
    #[serde(with = "humantime_serde")]
    pub burst_every: Option<Duration>,
    /// Length of a burst window; everything held in it is released together at its end.
    #[serde(with = "humantime_serde")]
    pub burst_hold: Duration,
    /// Per webhook attempt: the request is lost in the network (never arrives) → retried.
    pub webhook_attempt_lost_rate: f64,
    /// Per webhook attempt: the receiver gets it but its answer is lost → retried (duplicate).
    pub webhook_response_lost_rate: f64,
    /// Every this often one connected WebSocket is cut (no close frame).
    #[serde(with = "humantime_serde")]
    pub websocket_disconnect_every: Option<Duration>,
    /// Every this often one connected WebSocket gets `WEBSOCKET_TO_BE_CLOSED`.
    #[serde(with = "humantime_serde")]
    pub websocket_to_be_closed_every: Option<Duration>,
    /// While set, opening the socket of a WebSocket channel that exists (the upgrade at its
    /// `channelURL`) is answered with this status instead of `101 Switching Protocols` (a JSON
    /// body: 404 `RTC-NOTIFICATION-CHANNEL-NOT-FOUND`, 410 `GONE`, 401 `AUTHN_INVALID_TOKEN`,
    /// 403 `AUTHZ_INSUFFICIENT_SCOPE`, 429 `TOO_MANY_REQUESTS`, anything else `UNKNOWN_ERROR`),
    /// the channel untouched, still listed and refreshed: GoTo's socket host refusing a channel
    /// its REST API still serves.
    pub websocket_upgrade_status: Option<u16>,
    /// The channels (ids) `websocket_upgrade_status` and `websocket_upgrade_delay` apply to;
    /// empty: every channel. A channel GoTo no longer serves while new ones work.
    pub websocket_upgrade_channels: Vec<String>,
    /// While set, the upgrade of a WebSocket channel's socket is answered only this long after
    /// it arrived, whether `websocket_upgrade_status` refuses it or it is accepted: a slow
    /// socket host, a refusal that takes long to come.
    #[serde(with = "humantime_serde")]
    pub websocket_upgrade_delay: Option<Duration>,
    /// Every this often one channel is deleted.
    #[serde(with = "humantime_serde")]
    pub channel_delete_every: Option<Duration>,
    /// While set, every refresh (`PUT …/channels/{nickname}/{channelId}`) of a channel that
    /// exists is answered with this status instead (404 `RTC-NOTIFICATION-CHANNEL-NOT-FOUND`,
    /// 410 `GONE`, 400 `BAD_REQUEST`, 401 `AUTHN_INVALID_TOKEN`, 429 `TOO_MANY_REQUESTS`,
    /// anything else `UNKNOWN_ERROR`), the channel untouched: an expired channel GoTo still
    /// lists, a REST outage of the refresh alone, a revoked token.
    pub channel_refresh_status: Option<u16>,
    /// While set, deleting a channel that exists (`DELETE …/channels/{nickname}/{channelId}`)
    /// is answered with this status instead (same bodies as `channel_refresh_status`), the
    /// channel left in place: GoTo answering 410 for a channel it no longer serves but still
    /// lists, refusing the delete, or failing.
    pub channel_delete_status: Option<u16>,
    /// While true, a successful refresh answers only `{"channelLifetime": …}`: GoTo does not
    /// document that answer's body.
    pub channel_refresh_lifetime_only: bool,
    /// Every this often all access tokens are revoked.
    #[serde(with = "humantime_serde")]
    pub token_revoke_every: Option<Duration>,
    /// Per REST request: answered 429.
    pub rest_429_rate: f64,
    /// Per REST request: answered 503.
    pub rest_5xx_rate: f64,
    /// Per state (never the last): not delivered and never returned by back-fill or report.
    pub unrecoverable_rate: f64,
    /// While true, back-fill answers a known call whose every state aged out of `retention` with
    /// 200 and no states (in the configured shape) instead of 404: GoTo unknown #7 leaves open
    /// how back-fill answers past its retention.
    pub backfill_empty_after_retention: bool,
    /// While set, every item of a subscribe request is refused with this status (403
    /// `AUTHZ_INSUFFICIENT_SCOPE`, 429 `TOO_MANY_REQUESTS`, anything else `UNKNOWN_ERROR`),
    /// the 207 itself still answered: GoTo's failed items carry their own status.
    pub subscription_item_status: Option<u16>,
    /// While set, a subscribe request (`POST /call-events/v1/subscriptions`) is answered with
    /// this status as a whole (429 `TOO_MANY_REQUESTS`, 401 `AUTHN_INVALID_TOKEN`, 403
    /// `AUTHZ_INSUFFICIENT_SCOPE`, 400 `BAD_REQUEST`, anything else `UNKNOWN_ERROR`) and
    /// nothing is subscribed: the subscribe failing after the channel was made, while every
    /// other request still works.
    pub subscription_request_status: Option<u16>,
    /// While true, an item for an account already subscribed on the channel answers 409
    /// `CONFLICT` "Subscription already exists" (as GoTo's messaging API answers a duplicate)
    /// instead of 200; the subscription stays as it was.
    pub subscription_conflict_when_subscribed: bool,
    /// While true, a subscribe answers 201 with an empty body (the subscriptions are still
    /// made): a 2xx that confirms no account key.
    pub subscription_empty_answer: bool,
    /// While set, reading one channel (`GET …/channels/{nickname}/{channelId}`, documented by
    /// claim only) answers this status for every channel (405 `METHOD_NOT_ALLOWED`, 403
    /// `AUTHZ_INSUFFICIENT_SCOPE`, 410 `GONE` naming the channel, anything else `BAD_REQUEST`),
    /// while the listing still works.
    pub channel_get_status: Option<u16>,
    /// While true, reading one channel (`GET …/channels/{nickname}/{channelId}`, documented by
    /// claim only) answers 404 `NOT_FOUND` for every channel, while the listing still shows them:
    /// a route that does not behave as GoTo's docs claim.
    pub channel_get_not_found: bool,
    /// While true, listing active calls (`GET /call-events/v1/conversation-spaces`) is held
    /// unanswered until it turns false again (or the client gives up): a slow or stuck GoTo.
    /// The listings in flight are counted in the stats (`activeCallListings`).
    pub active_calls_paused: bool,
    /// States older than this are no longer returned by back-fill; None = kept forever.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

/// What happens to one generated state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateFate {
    /// Not delivered (recoverable unless `unrecoverable`).
    pub dropped: bool,
    /// Neither delivered nor recoverable.
    pub unrecoverable: bool,
    /// One extra copy with the same notification id.
    pub duplicate: bool,
    /// One extra copy with a fresh notification id.
    pub duplicate_new_id: bool,
    /// Held back this long before delivery.
    pub delay: Option<Duration>,
}

/// The seeded dice plus the current knobs.
pub struct Faults {
    config: FaultsConfig,
    rng: ChaCha8Rng,
    /// Burst windows are counted from here: the last time the burst schedule changed, so a
    /// tester switching bursts on sees a window open at once.
    burst_anchor: Instant,
}

impl Faults {
    /// Dice seeded from `config.seed`.
    pub fn new(config: FaultsConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self {
            config,
            rng,
            burst_anchor: Instant::now(),
        }
    }

    /// The current knobs.
    pub fn config(&self) -> &FaultsConfig {
        &self.config
    }

    /// Replace the knobs; the dice are reseeded only if the seed changed.
    pub fn set(&mut self, config: FaultsConfig) {
        if config.seed != self.config.seed {
            self.rng = ChaCha8Rng::seed_from_u64(config.seed);
        }
        if (config.burst_every, config.burst_hold)
            != (self.config.burst_every, self.config.burst_hold)
        {
            self.burst_anchor = Instant::now();
        }
        self.config = config;
    }

    /// Apply a partial JSON update (only the keys present change; `null` clears an option).
    pub fn patch(&mut self, patch: &serde_json::Value) -> Result<FaultsConfig, String> {
        let serde_json::Value::Object(changes) = patch else {
            return Err("faults patch must be a JSON object".into());
        };
        let mut current = serde_json::to_value(&self.config).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(map) = &mut current {
            for (k, v) in changes {
                map.insert(k.clone(), v.clone());
            }
        }
        let next: FaultsConfig = serde_json::from_value(current).map_err(|e| e.to_string())?;
        next.validate()?;
        self.set(next.clone());
        Ok(next)
    }

    /// One roll: true with probability `rate`.
    pub fn roll(&mut self, rate: f64) -> bool {
        rate > 0.0 && (rate >= 1.0 || self.rng.gen_bool(rate))
    }

    /// Decide the fate of a state. The last state of a call is never made unrecoverable: a lost
    /// tail cannot be detected from sequence numbers, so no consumer could ever notice it.
    pub fn decide_state(&mut self, is_last: bool) -> StateFate {
        let c = self.config.clone();
        let mut fate = StateFate::default();
        if !is_last && self.roll(c.unrecoverable_rate) {
            fate.unrecoverable = true;
            fate.dropped = true;
            return fate;
        }
        if self.roll(c.drop_rate) {
            fate.dropped = true;
            return fate;
        }
        fate.duplicate = self.roll(c.duplicate_rate);
        fate.duplicate_new_id = self.roll(c.duplicate_new_id_rate);
        if self.roll(c.delay_rate) {
            let max = c.max_delay.as_millis() as u64;
            let ms = if max == 0 {
                0
            } else {
                self.rng.gen_range(0..=max)
            };
            fate.delay = Some(Duration::from_millis(ms));
        }
        fate
    }

    /// When a delivery emitted at `now` must be released under the burst schedule.
    pub fn burst_release(&self, now: Instant) -> Option<Duration> {
        burst_release(
            &self.config,
            now.saturating_duration_since(self.burst_anchor),
        )
    }

    /// Pick one of `n` things.
    pub fn pick(&mut self, n: usize) -> Option<usize> {
        (n > 0).then(|| self.rng.gen_range(0..n))
    }
}

impl FaultsConfig {
    /// Rates must be probabilities.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("duplicate_new_id_rate", self.duplicate_new_id_rate),
            ("delay_rate", self.delay_rate),
            ("webhook_attempt_lost_rate", self.webhook_attempt_lost_rate),
            (
                "webhook_response_lost_rate",
                self.webhook_response_lost_rate,
            ),
            ("rest_429_rate", self.rest_429_rate),
            ("rest_5xx_rate", self.rest_5xx_rate),
            ("unrecoverable_rate", self.unrecoverable_rate),
        ];
        for (name, r) in rates {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, got {r}"));
            }
        }
        if let Some(status) = self.subscription_item_status {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "subscription_item_status must be a 4xx or 5xx status, got {status}"
                ));
            }
        }
        if let Some(status) = self.subscription_request_status {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "subscription_request_status must be a 4xx or 5xx status, got {status}"
                ));
            }
        }
        if let Some(status) = self.channel_get_status {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "channel_get_status must be a 4xx or 5xx status, got {status}"
                ));
            }
        }
        if let Some(status) = self.channel_delete_status {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "channel_delete_status must be a 4xx or 5xx status, got {status}"
                ));
            }
        }
        if let Some(status) = self.websocket_upgrade_status {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "websocket_upgrade_status must be a 4xx or 5xx status, got {status}"
                ));
            }
        }
        if let Some(status) = self.channel_refresh_status {
            if !(400..=599).contains(&status) {
                return Err(format!(
                    "channel_refresh_status must be a 4xx or 5xx status, got {status}"
                ));
            }
        }
        for (name, d) in [
            ("burst_every", self.burst_every),
            (
                "websocket_disconnect_every",
                self.websocket_disconnect_every,
            ),
            (
                "websocket_to_be_closed_every",
                self.websocket_to_be_closed_every,
            ),
            ("channel_delete_every", self.channel_delete_every),
            ("token_revoke_every", self.token_revoke_every),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(format!("{name} must be longer than zero"));
            }
        }
        Ok(())
    }
}

/// When a delivery emitted `since_start` after the burst anchor must be released, given the
/// burst schedule: inside a window `[k*every, k*every+hold)` it waits for the window's end.
pub fn burst_release(config: &FaultsConfig, since_start: Duration) -> Option<Duration> {
    let every = config.burst_every?;
    let hold = config.burst_hold.min(every);
    let every_ms = every.as_millis().max(1);
    let phase = since_start.as_millis() % every_ms;
    (phase < hold.as_millis()).then(|| Duration::from_millis((hold.as_millis() - phase) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_one_always_and_zero_never() {
        let mut f = Faults::new(FaultsConfig {
            drop_rate: 1.0,
            ..Default::default()
        });
        assert!((0..100).all(|_| f.decide_state(false).dropped));
        f.set(FaultsConfig::default());
        assert!((0..100).all(|_| f.decide_state(false) == StateFate::default()));
    }

    #[test]
    fn last_state_is_never_unrecoverable() {
        let mut f = Faults::new(FaultsConfig {
            unrecoverable_rate: 1.0,
            ..Default::default()
        });
        assert!(f.decide_state(false).unrecoverable);
        let last = f.decide_state(true);
        assert!(!last.unrecoverable);
        assert!(!last.dropped);
    }

    #[test]
    fn patch_changes_only_given_keys_and_refuses_nonsense() {
        let mut f = Faults::new(FaultsConfig {
            drop_rate: 0.5,
            ..Default::default()
        });
        let next = f
            .patch(&serde_json::json!({"duplicate_rate": 0.25, "burst_every": "2s"}))
            .unwrap();
        assert_eq!(next.drop_rate, 0.5);
        assert_eq!(next.duplicate_rate, 0.25);
        assert_eq!(next.burst_every, Some(Duration::from_secs(2)));
        assert!(f.patch(&serde_json::json!({"drop_rate": 2.0})).is_err());
        assert!(f.patch(&serde_json::json!({"no_such_fault": 1})).is_err());
        assert_eq!(f.config().drop_rate, 0.5);
    }

    #[test]
    fn the_upgrade_refusal_takes_channels_and_refuses_a_status_that_is_no_refusal() {
        let mut f = Faults::new(FaultsConfig::default());
        let next = f
            .patch(&serde_json::json!({
                "websocket_upgrade_status": 403,
                "websocket_upgrade_channels": ["c1"],
            }))
            .unwrap();
        assert_eq!(next.websocket_upgrade_status, Some(403));
        assert_eq!(next.websocket_upgrade_channels, vec!["c1".to_owned()]);
        assert!(f
            .patch(&serde_json::json!({"websocket_upgrade_status": 101}))
            .is_err());
        let cleared = f
            .patch(&serde_json::json!({
                "websocket_upgrade_status": null,
                "websocket_upgrade_channels": [],
            }))
            .unwrap();
        assert_eq!(cleared, FaultsConfig::default());
    }

    #[test]
    fn the_upgrade_delay_takes_a_duration_and_clears() {
        let mut f = Faults::new(FaultsConfig::default());
        let next = f
            .patch(&serde_json::json!({"websocket_upgrade_delay": "800ms"}))
            .unwrap();
        assert_eq!(
            next.websocket_upgrade_delay,
            Some(Duration::from_millis(800))
        );
        assert_eq!(
            serde_json::to_value(&next).unwrap()["websocket_upgrade_delay"],
            "800ms"
        );
        assert!(f
            .patch(&serde_json::json!({"websocket_upgrade_delay": 800}))
            .is_err());
        let cleared = f
            .patch(&serde_json::json!({"websocket_upgrade_delay": null}))
            .unwrap();
        assert_eq!(cleared, FaultsConfig::default());
    }

    #[test]
    fn burst_window_releases_at_its_end() {
        let c = FaultsConfig {
            burst_every: Some(Duration::from_secs(10)),
            burst_hold: Duration::from_secs(2),
            ..Default::default()
        };
        assert_eq!(
            burst_release(&c, Duration::from_millis(10_500)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(burst_release(&c, Duration::from_secs(13)), None);
    }
}
