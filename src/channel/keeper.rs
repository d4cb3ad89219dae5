//! Keeps callbridge's notification channel and its call-events subscriptions in place.
//!
//! GoTo tells nobody when a webhook channel disappears, and a WebSocket channel expires on its
//! own, so the keeper both sets things up at start-up and checks them periodically (the repair
//! loop). It never creates a second channel blindly: after a failed create it lists the channels
//! to see whether GoTo made one anyway.

use crate::goto::{
    AccountSubscription, Channel, ChannelKind, ChannelRequest, GotoClient, GotoError,
    SubscriptionOutcome,
};
use crate::secret::Secret;
use std::time::Duration;

/// Subscribe requests per round before the keeper gives the round up as transient (the caller
/// retries the round with its backoff).
const SUBSCRIBE_ATTEMPTS: u32 = 5;

/// What the keeper could not do.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// GoTo refused something retrying will not fix; start-up stops with the fix.
    #[error("GoTo refused the subscription of account {account_key}: status {status}, errorCode {error_code}: {message}. Fix: {fix}")]
    SubscriptionRefused {
        /// The account key.
        account_key: String,
        /// Item status.
        status: u16,
        /// GoTo's errorCode.
        error_code: String,
        /// GoTo's message.
        message: String,
        /// What the operator should do.
        fix: &'static str,
    },
    /// A GoTo call failed (the error names the endpoint, status and errorCode).
    #[error("{context}: {source}")]
    Goto {
        /// What the keeper was doing.
        context: &'static str,
        /// The client's error.
        #[source]
        source: GotoError,
    },
    /// Subscription items kept failing with a status retrying can fix (429, 5xx) or were left
    /// out of GoTo's answer: transient, the next round subscribes them again.
    #[error("subscribing to call events (POST /call-events/v1/subscriptions): {accounts} still not subscribed after {attempts} attempts; retrying")]
    SubscriptionsPending {
        /// Each account still pending with its last verdict (`status errorCode`, or
        /// `not in the answer`).
        accounts: String,
        /// Attempts made in this round.
        attempts: u32,
    },
    /// A call on our channel answered 404: the channel vanished (deleted, expired) between two
    /// steps. Transient: the next round finds or creates a channel again.
    #[error("{context}: notification channel {channel_id} is gone: {source}")]
    ChannelGone {
        /// What the keeper was doing.
        context: &'static str,
        /// The vanished channel.
        channel_id: String,
        /// The client's error (endpoint, status, errorCode).
        #[source]
        source: GotoError,
    },
    /// The channel GoTo returned has no URL to connect to.
    #[error("GoTo returned WebSocket channel {channel_id} without a channelURL")]
    NoUrl {
        /// The channel.
        channel_id: String,
    },
}

impl ChannelError {
    /// True when retrying later can help (network, 5xx, 429); false for configuration problems.
    pub fn is_transient(&self) -> bool {
        match self {
            ChannelError::SubscriptionRefused { .. } => false,
            ChannelError::NoUrl { .. }
            | ChannelError::ChannelGone { .. }
            | ChannelError::SubscriptionsPending { .. } => true,
            ChannelError::Goto { source, .. } => match source.status() {
                Some(401 | 403 | 400 | 404) => false,
                _ => !matches!(source, GotoError::Auth { .. } | GotoError::Config { .. }),
            },
        }
    }
}

fn goto(context: &'static str) -> impl FnOnce(GotoError) -> ChannelError {
    move |source| ChannelError::Goto { context, source }
}

/// For calls on one channel: a 404 means the channel is gone (GoTo deletes and expires channels
/// on its own, possibly between our create and our subscribe), which a new round repairs; any
/// other failure is classified as usual.
fn on_channel(context: &'static str, channel_id: &str) -> impl FnOnce(GotoError) -> ChannelError {
    let channel_id = channel_id.to_string();
    move |source| {
        if source.status() == Some(404) {
            ChannelError::ChannelGone {
                context,
                channel_id,
                source,
            }
        } else {
            ChannelError::Goto { context, source }
        }
    }
}

/// The channel callbridge wants.
#[derive(Clone, Debug)]
pub enum DesiredChannel {
    /// A webhook to this URL (it holds the path secret, hence [`Secret`]).
    Webhook {
        /// Full URL including the secret.
        url: Secret,
    },
    /// A WebSocket channel.
    WebSocket,
}

/// Sets up and repairs the channel and subscriptions.
#[derive(Clone)]
pub struct ChannelKeeper {
    client: GotoClient,
    nickname: String,
    desired: DesiredChannel,
    account_keys: Vec<String>,
    events: Vec<String>,
}

/// What a repair pass found.
#[derive(Debug, PartialEq, Eq)]
pub enum Repair {
    /// Everything in place.
    Healthy,
    /// The channel was gone and was recreated (with its subscriptions).
    ChannelRecreated,
    /// Some subscriptions were missing and were restored.
    Resubscribed(usize),
}

impl ChannelKeeper {
    /// A keeper for `nickname`.
    pub fn new(
        client: GotoClient,
        nickname: impl Into<String>,
        desired: DesiredChannel,
        account_keys: Vec<String>,
        events: Vec<String>,
    ) -> Self {
        Self {
            client,
            nickname: nickname.into(),
            desired,
            account_keys,
            events,
        }
    }

    /// The API client (the sequencer's back-fill shares its token and rate limiter).
    pub fn client(&self) -> &GotoClient {
        &self.client
    }

    /// The account keys kept subscribed.
    pub fn account_keys(&self) -> &[String] {
        &self.account_keys
    }

    fn request(&self) -> ChannelRequest {
        match &self.desired {
            DesiredChannel::Webhook { url } => ChannelRequest::Webhook {
                url: url.expose().to_string(),
            },
            DesiredChannel::WebSocket => ChannelRequest::WebSocket { lifetime: None },
        }
    }

    fn is_ours(&self, c: &Channel) -> bool {
        if c.nickname != self.nickname {
            return false;
        }
        match (&self.desired, &c.kind) {
            (DesiredChannel::Webhook { url }, ChannelKind::Webhook { url: Some(u) }) => {
                u == url.expose()
            }
            (DesiredChannel::WebSocket, ChannelKind::WebSocket { .. }) => true,
            _ => false,
        }
    }

    /// Finds our channel by nickname (and URL for webhooks), or creates it. Extra channels with
    /// our nickname (left by an earlier crash, or an old webhook URL) are deleted.
    pub async fn ensure_channel(&self) -> Result<Channel, ChannelError> {
        let channels = self
            .client
            .list_channels()
            .await
            .map_err(goto("listing notification channels"))?;
        let mut ours: Option<Channel> = None;
        for c in channels.into_iter().filter(|c| c.nickname == self.nickname) {
            if ours.is_none() && self.is_ours(&c) {
                ours = Some(c);
            } else {
                tracing::info!(channel_id = %c.channel_id, "deleting a stale channel with our nickname");
                self.client
                    .delete_channel(&self.nickname, &c.channel_id)
                    .await
                    .map_err(goto("deleting a stale channel"))?;
            }
        }
        // A WebSocket channel found by listing may be close to expiry; refresh it to know its URL
        // and lifetime afresh.
        if let Some(c) = ours {
            if matches!(self.desired, DesiredChannel::WebSocket) {
                return self.refresh(&c).await;
            }
            tracing::info!(channel_id = %c.channel_id, "reusing the existing channel");
            return Ok(c);
        }
        self.create().await
    }

    async fn create(&self) -> Result<Channel, ChannelError> {
        match self.create_once().await {
            // GoTo's samples spell a WebSocket channel's type both "WebSocket" and "WebSockets",
            // and which one the live API takes is unknown: a 400 to one is worth one try of the
            // other, which is then kept (refreshes send it too).
            Err(ChannelError::Goto { source, .. })
                if source.status() == Some(400)
                    && matches!(self.desired, DesiredChannel::WebSocket) =>
            {
                let refused = self.client.websocket_type();
                let other = self.client.switch_websocket_type();
                tracing::warn!(
                    refused = refused.as_str(),
                    trying = other.as_str(),
                    error = %source,
                    "GoTo refused the WebSocket channel; trying the other channelType spelling"
                );
                match self.create_once().await {
                    Ok(c) => {
                        tracing::warn!(channel_type = other.as_str(), "GoTo took this channelType spelling: set channel.websocket_type to it to skip the refused attempt");
                        Ok(c)
                    }
                    Err(e) => {
                        // Neither spelling: the 400 was about something else. Back to the
                        // configured one, and report the first refusal.
                        self.client.switch_websocket_type();
                        tracing::warn!(error = %e, "the other channelType spelling was refused too");
                        Err(ChannelError::Goto {
                            context: "creating the notification channel",
                            source,
                        })
                    }
                }
            }
            other => other,
        }
    }

    /// One create, and after a failure that may have created it anyway, a look at the list.
    async fn create_once(&self) -> Result<Channel, ChannelError> {
        match self
            .client
            .create_channel(&self.nickname, &self.request())
            .await
        {
            Ok(c) => {
                tracing::info!(channel_id = %c.channel_id, lifetime_secs = ?c.lifetime_secs, "notification channel created");
                Ok(c)
            }
            Err(e) if e.is_retryable() => {
                // GoTo may have created it before the failure: look before trying again.
                let channels = self
                    .client
                    .list_channels()
                    .await
                    .map_err(goto("listing channels after a failed create"))?;
                match channels.into_iter().find(|c| self.is_ours(c)) {
                    Some(c) => Ok(c),
                    None => Err(ChannelError::Goto {
                        context: "creating the notification channel",
                        source: e,
                    }),
                }
            }
            Err(e) => Err(ChannelError::Goto {
                context: "creating the notification channel",
                source: e,
            }),
        }
    }

    /// PUT-refreshes a WebSocket channel (GoTo's answer to `WEBSOCKET_REFRESH_REQUIRED`).
    pub async fn refresh(&self, channel: &Channel) -> Result<Channel, ChannelError> {
        let mut refreshed = self
            .client
            .refresh_channel(&self.nickname, &channel.channel_id, &self.request())
            .await
            .map_err(on_channel(
                "refreshing the notification channel",
                &channel.channel_id,
            ))?;
        // GoTo may answer a refresh without the channel's URL (or without a body at all): the
        // socket URL does not change on refresh, so keep the one we have.
        if let (ChannelKind::WebSocket { url: new @ None }, ChannelKind::WebSocket { url: old }) =
            (&mut refreshed.kind, &channel.kind)
        {
            new.clone_from(old);
        }
        Ok(refreshed)
    }

    /// Deletes `old` (if still there), creates a new channel and subscribes it.
    pub async fn recreate(&self, old: Option<&Channel>) -> Result<Channel, ChannelError> {
        if let Some(old) = old {
            if let Err(e) = self
                .client
                .delete_channel(&self.nickname, &old.channel_id)
                .await
            {
                tracing::warn!(error = %e, "deleting the old channel failed; creating a new one anyway");
            }
        }
        let c = self.create().await?;
        self.ensure_subscriptions(&c).await?;
        Ok(c)
    }

    /// Subscribes every configured account key and checks every item of the 207 answer.
    /// Transient item failures are retried a few times; a permanent one is an error that says
    /// what to fix.
    pub async fn ensure_subscriptions(&self, channel: &Channel) -> Result<(), ChannelError> {
        let mut pending: Vec<String> = self.account_keys.clone();
        // Each pending account's last verdict, for the error when the round gives up.
        let mut verdicts: Vec<String> = Vec::new();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=SUBSCRIBE_ATTEMPTS {
            let request: Vec<AccountSubscription> = pending
                .iter()
                .map(|k| AccountSubscription {
                    account_key: k.clone(),
                    events: Some(self.events.clone()),
                })
                .collect();
            let outcomes = self
                .client
                .subscribe_call_events(&channel.channel_id, &request)
                .await
                .map_err(on_channel(
                    "subscribing to call events",
                    &channel.channel_id,
                ))?;
            let mut retry = Vec::new();
            verdicts.clear();
            for outcome in outcomes {
                match outcome {
                    SubscriptionOutcome::Subscribed { .. } => {}
                    SubscriptionOutcome::Failed {
                        account_key,
                        status,
                        error_code,
                        message,
                        permanent: true,
                    } => {
                        let fix = match status {
                            403 => "grant the OAuth client the scope call-events.v1.notifications.manage and use a token of a super admin of that account",
                            404 => "check goto.account_keys: GoTo does not know this account key",
                            _ => "check goto.account_keys and goto.events against GoTo's message",
                        };
                        return Err(ChannelError::SubscriptionRefused {
                            account_key,
                            status,
                            error_code: error_code.unwrap_or_default(),
                            message: message.unwrap_or_default(),
                            fix,
                        });
                    }
                    SubscriptionOutcome::Failed {
                        account_key,
                        status,
                        error_code,
                        ..
                    } => {
                        verdicts.push(format!(
                            "{account_key} ({status} {})",
                            error_code.as_deref().unwrap_or("without errorCode")
                        ));
                        retry.push(account_key);
                    }
                    SubscriptionOutcome::Unconfirmed { account_key } => {
                        verdicts.push(format!("{account_key} (not in the answer)"));
                        retry.push(account_key);
                    }
                }
            }
            if retry.is_empty() {
                tracing::info!(channel_id = %channel.channel_id, accounts = self.account_keys.len(), "call events subscribed");
                return Ok(());
            }
            pending = retry;
            if attempt < SUBSCRIBE_ATTEMPTS {
                tracing::warn!(attempt, accounts = %verdicts.join(", "), "subscription items failed transiently; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        Err(ChannelError::SubscriptionsPending {
            accounts: verdicts.join(", "),
            attempts: SUBSCRIBE_ATTEMPTS,
        })
    }

    /// Whether GoTo's channel listing still shows `channel_id`.
    async fn still_listed(&self, channel_id: &str) -> Result<bool, ChannelError> {
        let listed = self
            .client
            .list_channels()
            .await
            .map_err(goto("listing notification channels"))?;
        Ok(listed.iter().any(|c| c.channel_id == channel_id))
    }

    /// One repair pass: the channel must exist and every account key must be subscribed.
    pub async fn repair(&self, channel: &mut Channel) -> Result<Repair, ChannelError> {
        let found = self
            .client
            .get_channel(&self.nickname, &channel.channel_id)
            .await
            .map_err(goto("reading the notification channel"))?;
        match found {
            // Reading one channel is documented by claim only; the listing is observed. A 404
            // from a route that does not behave as claimed must not make every pass create
            // another channel while the old one keeps delivering: the listing decides.
            None if self.still_listed(&channel.channel_id).await? => {
                tracing::warn!(channel_id = %channel.channel_id, "GoTo answered 404 reading the notification channel but still lists it; keeping it");
            }
            None => {
                tracing::warn!(channel_id = %channel.channel_id, "notification channel is gone; recreating it");
                *channel = self.recreate(None).await?;
                return Ok(Repair::ChannelRecreated);
            }
            Some(c) => {
                if let Some(since) = &c.unreachable_since {
                    tracing::warn!(channel_id = %c.channel_id, %since, "GoTo marked the webhook unreachable");
                }
            }
        }
        let subscribed = self
            .client
            .call_event_subscriptions(&channel.channel_id)
            .await
            .map_err(goto("reading call-events subscriptions"))?;
        let missing = self
            .account_keys
            .iter()
            .filter(|k| !subscribed.contains(k))
            .count();
        if missing == 0 {
            return Ok(Repair::Healthy);
        }
        tracing::warn!(
            missing,
            "call-events subscriptions missing; subscribing again"
        );
        match self.ensure_subscriptions(channel).await {
            Ok(()) => Ok(Repair::Resubscribed(missing)),
            // Deleted between the two reads: recreate now rather than one repair interval later,
            // since nothing is delivered meanwhile.
            Err(ChannelError::ChannelGone { .. }) => {
                tracing::warn!(channel_id = %channel.channel_id, "notification channel vanished while resubscribing; recreating it");
                *channel = self.recreate(None).await?;
                Ok(Repair::ChannelRecreated)
            }
            Err(e) => Err(e),
        }
    }
}
