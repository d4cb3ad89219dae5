//! Keeps callbridge's notification channel and its call-events subscriptions in place.
//!
//! GoTo tells nobody when a webhook channel disappears, and a WebSocket channel expires on its
//! own, so the keeper both sets things up at start-up and checks them periodically (the repair
//! loop). It never creates a second channel blindly: after a failed create it lists the channels
//! to see whether GoTo made one anyway. Nor does it leave channels behind: a replacement it
//! could not subscribe is deleted again, and a channel it could not delete is tried again at its
//! next round (a webhook channel lives 68 years).

use crate::goto::endpoint::SUBSCRIBE_CALL_EVENTS;
use crate::goto::MAX_RETRY_AFTER;
use crate::goto::{
    AccountSubscription, Channel, ChannelKind, ChannelRequest, GotoClient, GotoError,
    SubscriptionOutcome,
};
use crate::secret::Secret;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Subscribe requests per round before the keeper gives the round up as transient (the caller
/// retries the round with its backoff).
const SUBSCRIBE_ATTEMPTS: u32 = 5;

/// Channels of ours whose deletion failed, remembered to try again; beyond this many the oldest
/// is forgotten (listing by nickname at the next start-up still finds it).
const MAX_ORPHANS: usize = 16;

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
    /// Subscription items kept answering 401 through the round, a new access token included.
    /// GoTo does not document a 401 inside its 207: a token expired or revoked while the request
    /// ran heals with the next token (the client renews it on a request's 401, but an item's
    /// bypasses that, so the keeper renews it), while a token whose user may not subscribe that
    /// account never will. Transient all the same: stopping start-up over the first reading
    /// would stop a bridge a minute later able to run; the callers retry with their backoff, and
    /// the error says what to fix when it lasts.
    #[error("subscribing to call events (POST /call-events/v1/subscriptions): GoTo answered status 401 for account(s) {accounts} at the last of {attempts} attempts{renewed}; retrying. If it persists, the token's user may not subscribe that account: use a token (goto.personal_access_token or goto.refresh_token) issued to a super admin of that GoTo Connect account, or re-issue it. Not subscribed: {pending}")]
    SubscriptionUnauthorized {
        /// The account keys whose items answered 401 at the last attempt.
        accounts: String,
        /// Every account still pending with its last verdict (`status errorCode`).
        pending: String,
        /// Attempts made in this round.
        attempts: u32,
        /// Whether the round renewed the access token, for the message.
        renewed: &'static str,
    },
    /// An item answered 404 or 410, which GoTo may mean for the account or for the channel (gone
    /// between its creation and the subscribe), and whether the channel still exists could not
    /// be checked. Transient: the next round checks again, where a permanent refusal would stop
    /// start-up over what may be a channel to replace.
    #[error(
        "subscribing to call events: GoTo answered account {account_key} with item status {status}, and whether notification channel {} still exists could not be checked: {source}; retrying",
        Channel::tag_of(channel_id)
    )]
    ChannelUnverified {
        /// The account key of the item.
        account_key: String,
        /// The item's status.
        status: u16,
        /// The channel subscribed.
        channel_id: String,
        /// Why the check failed.
        #[source]
        source: Box<ChannelError>,
    },
    /// A call on our channel answered 404: the channel vanished (deleted, expired) between two
    /// steps. Transient: the next round finds or creates a channel again. Shown with the id's
    /// tag only ([`Channel::tag_of`]): a WebSocket channel's id is part of its URL.
    #[error(
        "{context}: notification channel {} is gone: {source}",
        Channel::tag_of(channel_id)
    )]
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
    #[error(
        "GoTo returned WebSocket channel {} without a channelURL",
        Channel::tag_of(channel_id)
    )]
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
            | ChannelError::ChannelUnverified { .. }
            | ChannelError::SubscriptionUnauthorized { .. }
            | ChannelError::SubscriptionsPending { .. } => true,
            ChannelError::Goto { source, .. } => match source.status() {
                Some(401 | 403 | 400 | 404) => false,
                _ => !matches!(source, GotoError::Auth { .. } | GotoError::Config { .. }),
            },
        }
    }
}

impl ChannelError {
    /// True when GoTo said our channel no longer exists (404, or 410 Gone): only a new channel
    /// helps.
    pub fn is_channel_gone(&self) -> bool {
        match self {
            ChannelError::ChannelGone { .. } => true,
            ChannelError::Goto { source, .. } => matches!(source.status(), Some(404 | 410)),
            _ => false,
        }
    }

    /// GoTo's `Retry-After` on the failure, when it sent one (of the last attempt, when the
    /// client's own retries ran out), cut to [`MAX_RETRY_AFTER`] as the client cuts it: a
    /// misbehaving server must not park the channel for hours.
    ///
    /// Read from the first GoTo error among the causes, so that every variant wrapping one
    /// (directly, or inside another `ChannelError`) answers, including variants added later.
    pub fn retry_after(&self) -> Option<Duration> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if let Some(goto) = error.downcast_ref::<GotoError>() {
                return goto.retry_after().map(|wait| wait.min(MAX_RETRY_AFTER));
            }
            cause = error.source();
        }
        None
    }

    /// What the channel state (and so `/readyz`) says after a set-up round failed with this
    /// transient error: the error itself when it names a fix only an operator can make (items
    /// answering 401 round after round), or else only that the set-up failed (the log says why).
    pub(crate) fn set_up_failed_text(&self) -> String {
        match self {
            ChannelError::SubscriptionUnauthorized { .. } => {
                format!("channel set-up failed: {self}")
            }
            _ => "channel set-up failed".to_owned(),
        }
    }
}

/// Whether a failed call on a listed channel says nothing against the channel itself: our
/// credentials were refused (401/403, the token endpoint), GoTo could not be reached, or it is
/// overloaded or failing (429, 5xx). A new channel would meet the same answer, and deleting the
/// listed one would cut a socket that may still be delivering (an owner in doubt keeps its own)
/// and spend the rate budget GoTo is already refusing.
fn not_about_the_channel(e: &ChannelError) -> bool {
    fn network(e: &GotoError) -> bool {
        match e {
            GotoError::Transport { .. } => true,
            GotoError::RetriesExhausted { last, .. } => network(last),
            _ => false,
        }
    }
    match e {
        ChannelError::Goto { source, .. } => {
            matches!(source.status(), Some(401 | 403 | 429 | 500..=599))
                || matches!(source, GotoError::Auth { .. } | GotoError::Config { .. })
                || network(source)
        }
        _ => false,
    }
}

/// Replaces `channel_id` by its tag in everything GoTo said (GoTo's 404 message names the
/// channel: "Notification channel does not exist …"; a 400 has its real cause in its
/// constraints, which may quote the channel too), also inside a retried error.
fn hide_channel_id(error: &mut GotoError, channel_id: &str) {
    error.replace_in_goto_text(channel_id, &Channel::tag_of(channel_id));
}

/// `result` with `channel_id` replaced by its tag in its error: whatever GoTo answers about one
/// of our channels (a 404's or a 410's message names it) may end up in a log or in `/readyz`.
fn quiet<T>(result: Result<T, GotoError>, channel_id: &str) -> Result<T, GotoError> {
    result.map_err(|mut e| {
        hide_channel_id(&mut e, channel_id);
        e
    })
}

/// [`ChannelError::SubscriptionRefused`] for `account_key`'s item on channel `channel_id`: GoTo's
/// texts kept as every GoTo text in an error is (URL paths cut, length bounded), the channel id
/// shown by its tag.
fn subscription_refused(
    channel_id: &str,
    account_key: String,
    status: u16,
    error_code: Option<&str>,
    message: Option<&str>,
    fix: &'static str,
) -> ChannelError {
    let kept = |text: Option<&str>| {
        text.map(|t| GotoError::goto_text(t, channel_id, &Channel::tag_of(channel_id)))
            .unwrap_or_default()
    };
    ChannelError::SubscriptionRefused {
        account_key,
        status,
        error_code: kept(error_code),
        message: kept(message),
        fix,
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
    move |mut source| {
        hide_channel_id(&mut source, &channel_id);
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
    /// Ids of channels of ours that should be gone but whose deletion failed: tried again at
    /// the next round, since a round that replaces a channel never lists channels (and a
    /// webhook channel would otherwise stay for its 68-year lifetime).
    orphans: Arc<Mutex<Vec<String>>>,
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
            orphans: Arc::default(),
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
    /// our nickname (left by an earlier crash, or an old webhook URL) are deleted, best effort.
    pub async fn ensure_channel(&self) -> Result<Channel, ChannelError> {
        self.delete_orphans().await;
        let channels = self
            .client
            .list_channels()
            .await
            .map_err(goto("listing notification channels"))?;
        let mut ours: Option<Channel> = None;
        for c in channels.into_iter().filter(|c| c.nickname == self.nickname) {
            // A channel this process already decided must go (its delete failed) is never
            // taken back: it is the one being replaced, or one that could not be subscribed.
            if ours.is_none() && self.is_ours(&c) && !self.is_orphan(&c.channel_id) {
                ours = Some(c);
            } else {
                tracing::info!(channel = %c.tag(), "deleting a stale channel with our nickname");
                self.delete_or_remember(&c.channel_id, "a stale channel with our nickname")
                    .await;
            }
        }
        // A WebSocket channel found by listing may be close to expiry; refresh it to know its URL
        // and lifetime afresh. A listed channel that cannot be refreshed (expired but still
        // listed, or an answer this client cannot read) is replaced, or the bridge would wait
        // for GoTo to stop listing it; only a refusal of our credentials or a network failure,
        // which a new channel would meet too, is returned as it is. The replacement is made even
        // when deleting the listed one fails (GoTo may answer 410, or refuse, for a channel it
        // no longer serves): otherwise every round would stop at that delete, with no channel.
        let mut replacing = None;
        if let Some(c) = ours {
            if !matches!(self.desired, DesiredChannel::WebSocket) {
                tracing::info!(channel = %c.tag(), "reusing the existing channel");
                return Ok(c);
            }
            match self.refresh(&c).await {
                Ok(refreshed) => return Ok(refreshed),
                Err(e) if not_about_the_channel(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!(channel = %c.tag(), error = %e, "the listed channel could not be refreshed; replacing it");
                    self.delete_or_remember(
                        &c.channel_id,
                        "the listed channel that could not be refreshed",
                    )
                    .await;
                    replacing = Some(c.channel_id);
                }
            }
        }
        self.create(replacing.as_deref()).await
    }

    /// Creates a channel (trying the other WebSocket `channelType` spelling after a 400).
    /// `replacing` is a channel of ours being replaced that may still be listed: never taken
    /// for the new one.
    async fn create(&self, replacing: Option<&str>) -> Result<Channel, ChannelError> {
        match self.create_once(replacing).await {
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
                match self.create_once(replacing).await {
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

    /// One create, and after a failure that may have created it anyway, a look at the list
    /// (where the channel being replaced, if its deletion failed, is not the one created).
    async fn create_once(&self, replacing: Option<&str>) -> Result<Channel, ChannelError> {
        match self
            .client
            .create_channel(&self.nickname, &self.request())
            .await
        {
            Ok(c) => {
                tracing::info!(channel = %c.tag(), lifetime_secs = ?c.lifetime_secs, "notification channel created");
                Ok(c)
            }
            Err(e) if e.is_retryable() => {
                // GoTo may have created it before the failure: look before trying again.
                let channels = self
                    .client
                    .list_channels()
                    .await
                    .map_err(goto("listing channels after a failed create"))?;
                match channels.into_iter().find(|c| {
                    self.is_ours(c)
                        && Some(c.channel_id.as_str()) != replacing
                        && !self.is_orphan(&c.channel_id)
                }) {
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
        // Nor does the lifetime a refresh restarts: without a new `channelLifetime`, the one GoTo
        // gave last still holds (a default would be a guess, and a long one lets the channel
        // expire before the next refresh).
        if refreshed.lifetime_secs.is_none() {
            refreshed.lifetime_secs = channel.lifetime_secs;
        }
        Ok(refreshed)
    }

    /// Deletes `old` (if still there), creates a new channel and subscribes it.
    ///
    /// A new channel that could not be subscribed is deleted again before the error is
    /// returned: nothing can use it (the caller still holds `old`, and its next round creates
    /// a fresh one), and every failed round would otherwise leave one more channel at GoTo.
    /// Deleting costs two notification-channel requests per failed round, paced by the
    /// caller's backoff; keeping it for the next round instead would need every caller to hold
    /// a half-made channel, and GoTo may have subscribed part of its accounts.
    pub async fn recreate(&self, old: Option<&Channel>) -> Result<Channel, ChannelError> {
        self.delete_orphans().await;
        if let Some(old) = old {
            self.delete_or_remember(&old.channel_id, "the channel being replaced")
                .await;
        }
        let c = self.create(old.map(|o| o.channel_id.as_str())).await?;
        if let Err(e) = self.ensure_subscriptions(&c).await {
            tracing::warn!(channel = %c.tag(), error = %e, "the new notification channel could not be subscribed; deleting it, the next round creates a fresh one");
            self.delete_or_remember(
                &c.channel_id,
                "the new channel that could not be subscribed",
            )
            .await;
            return Err(e);
        }
        Ok(c)
    }

    /// Deletes a channel of ours that must go, best effort: a failure is logged (by the
    /// channel's tag) and the channel remembered, to be deleted at the next round, rather than
    /// failing this one, since the channel the bridge needs matters more than one it does not.
    /// A 404 or 410 means it is gone already. Says whether it is gone.
    async fn delete_or_remember(&self, channel_id: &str, what: &str) -> bool {
        let gone = match self.client.delete_channel(&self.nickname, channel_id).await {
            Ok(_) => true,
            Err(e) if e.status() == Some(410) => true,
            Err(mut e) => {
                hide_channel_id(&mut e, channel_id);
                tracing::warn!(channel = %Channel::tag_of(channel_id), error = %e, "could not delete {what}; trying again at the next round");
                false
            }
        };
        let mut orphans = self.orphans.lock().unwrap_or_else(|p| p.into_inner());
        if gone {
            orphans.retain(|o| o != channel_id);
        } else if !orphans.iter().any(|o| o == channel_id) {
            if orphans.len() >= MAX_ORPHANS {
                let forgotten = orphans.remove(0);
                tracing::warn!(channel = %Channel::tag_of(&forgotten), "too many channels left to delete; forgetting the oldest (the next start-up's listing finds it by nickname)");
            }
            orphans.push(channel_id.to_owned());
        }
        gone
    }

    /// Whether `channel_id` is one this process decided must go and could not delete yet.
    fn is_orphan(&self, channel_id: &str) -> bool {
        self.orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|o| o == channel_id)
    }

    /// Tries again to delete the channels whose deletion failed earlier. Each stays listed
    /// until its delete succeeds, so a round cut short (a stop) forgets none.
    async fn delete_orphans(&self) {
        let orphans = self
            .orphans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for channel_id in orphans {
            self.delete_or_remember(&channel_id, "a channel left by an earlier round")
                .await;
        }
    }

    /// Makes the channel's call-events subscriptions exactly the configured account keys: first
    /// removes those of accounts no longer configured (a reused channel keeps them otherwise,
    /// and their calls would keep being published), then subscribes every configured key and
    /// checks every item of the 207 answer.
    ///
    /// An item GoTo leaves unconfirmed (an empty 2xx body, a missing item) or answers 409
    /// (already subscribed) is checked against `GET /call-events/v1/subscriptions`: listed is
    /// subscribed. Transient item failures are retried a few times; a permanent one is an
    /// error that says what to fix. Two item statuses GoTo may mean otherwise are checked
    /// first: a 404 or 410 on a channel GoTo no longer lists is [`ChannelError::ChannelGone`]
    /// (a new channel repairs it), and a 401 is retried with a new access token and ends the
    /// round as transient ([`ChannelError::SubscriptionUnauthorized`]).
    pub async fn ensure_subscriptions(&self, channel: &Channel) -> Result<(), ChannelError> {
        match quiet(
            self.client
                .call_event_subscriptions(&channel.channel_id)
                .await,
            &channel.channel_id,
        ) {
            Ok(listed) => {
                self.unsubscribe_unconfigured(&channel.channel_id, &listed)
                    .await;
            }
            Err(e) if e.status() == Some(404) => {
                return Err(on_channel(
                    "reading call-events subscriptions",
                    &channel.channel_id,
                )(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the channel's subscriptions to remove accounts no longer configured; the repair check tries again");
            }
        }
        self.subscribe_configured(channel).await
    }

    /// Whether GoTo's channel listing still shows `channel_id`.
    async fn still_listed(&self, channel_id: &str) -> Result<bool, ChannelError> {
        // The listing's texts (a decode error quotes the answer) may name the channel.
        let listed = quiet(self.client.list_channels().await, channel_id)
            .map_err(goto("listing notification channels"))?;
        Ok(listed.iter().any(|c| c.channel_id == channel_id))
    }

    /// Reads `channel` back from GoTo; `None` when GoTo answered 404 or refused the route, on
    /// which GoTo's listing decides ([`ChannelKeeper::still_listed`]).
    async fn read_channel(&self, channel: &Channel) -> Result<Option<Channel>, ChannelError> {
        match quiet(
            self.client
                .get_channel(&self.nickname, &channel.channel_id)
                .await,
            &channel.channel_id,
        ) {
            Ok(found) => Ok(found),
            // Reading one channel is documented by claim only: a route that refuses the read
            // (405, 400, 403…) says nothing about the channel, and stopping here would leave a
            // deleted channel, or lost subscriptions, unrepaired for good. The listing (observed)
            // decides instead.
            Err(e) if refuses_claimed_read(&e) => {
                tracing::warn!(channel = %channel.tag(), error = %e, "GoTo refused reading the notification channel; checking the channel listing instead");
                Ok(None)
            }
            Err(e) => Err(goto("reading the notification channel")(e)),
        }
    }

    /// Whether `channel` still exists, decided as a repair pass decides it: a channel GoTo
    /// returns when read is there; after a 404 (or a refusal) from that claimed-only route, the
    /// observed listing decides, since a route that does not behave as claimed must not pass
    /// for a channel gone.
    async fn channel_exists(&self, channel: &Channel) -> Result<bool, ChannelError> {
        match self.read_channel(channel).await? {
            Some(_) => Ok(true),
            None => self.still_listed(&channel.channel_id).await,
        }
    }

    /// One repair pass: the channel must exist, every account key must be subscribed, and no
    /// other account.
    pub async fn repair(&self, channel: &mut Channel) -> Result<Repair, ChannelError> {
        let found = self.read_channel(channel).await?;
        match found {
            // A 404 (or a refusal) from a route that does not behave as claimed must not make
            // every pass create another channel while the old one keeps delivering: the
            // listing decides.
            None if self.still_listed(&channel.channel_id).await? => {
                tracing::debug!(channel = %channel.tag(), "GoTo's listing still shows the notification channel; keeping it");
            }
            None => {
                tracing::warn!(channel = %channel.tag(), "notification channel is gone; recreating it");
                *channel = self.recreate(None).await?;
                return Ok(Repair::ChannelRecreated);
            }
            Some(c) => {
                if let Some(since) = &c.unreachable_since {
                    tracing::warn!(channel = %c.tag(), %since, "GoTo marked the webhook unreachable");
                }
            }
        }
        let subscribed = quiet(
            self.client
                .call_event_subscriptions(&channel.channel_id)
                .await,
            &channel.channel_id,
        )
        .map_err(goto("reading call-events subscriptions"))?;
        self.unsubscribe_unconfigured(&channel.channel_id, &subscribed)
            .await;
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
        match self.subscribe_configured(channel).await {
            Ok(()) => Ok(Repair::Resubscribed(missing)),
            // Deleted between the two reads: recreate now rather than one repair interval later,
            // since nothing is delivered meanwhile.
            Err(ChannelError::ChannelGone { .. }) => {
                tracing::warn!(channel = %channel.tag(), "notification channel vanished while resubscribing; recreating it");
                *channel = self.recreate(None).await?;
                Ok(Repair::ChannelRecreated)
            }
            Err(e) => Err(e),
        }
    }

    // --- Subscriptions: subscribing the configured accounts, removing the others ------------

    /// Subscribes every configured account key, checking every item of the 207 answer.
    async fn subscribe_configured(&self, channel: &Channel) -> Result<(), ChannelError> {
        // GoTo's texts about our channel may quote its id: logs and `/readyz` show its tag, and
        // the texts are kept as every GoTo text in an error is (URL paths cut, length bounded).
        let tag = channel.tag();
        let tagged = |text: &str| GotoError::goto_text(text, &channel.channel_id, &tag);
        let code = |error_code: &Option<String>| {
            error_code
                .as_deref()
                .map_or_else(|| "without errorCode".to_owned(), tagged)
        };
        let mut pending: Vec<String> = self.account_keys.clone();
        // Each pending account's last verdict, for the error when the round gives up.
        let mut verdicts: Vec<String> = Vec::new();
        // The accounts whose items answered 401 at the last attempt.
        let mut unauthorized: Vec<String> = Vec::new();
        let mut token_renewed = false;
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=SUBSCRIBE_ATTEMPTS {
            let request: Vec<AccountSubscription> = pending
                .iter()
                .map(|k| AccountSubscription {
                    account_key: k.clone(),
                    events: Some(self.events.clone()),
                })
                .collect();
            // The token this request goes with (the one cached now; the transport takes a newer
            // one if another request renews it meanwhile, which is then a new token anyway): an
            // item's 401 renews that one only, never a newer one.
            let token_used = self.client.transport().auth().cached_generation();
            let outcomes = self
                .client
                .subscribe_call_events(&channel.channel_id, &request)
                .await
                .map_err(on_channel(
                    "subscribing to call events",
                    &channel.channel_id,
                ))?;
            let mut retry = Vec::new();
            // Accounts GoTo's answer leaves in doubt, with why: the listing settles them.
            let mut unsure: Vec<(String, String)> = Vec::new();
            verdicts.clear();
            unauthorized.clear();
            for outcome in outcomes {
                match outcome {
                    SubscriptionOutcome::Subscribed { .. } => {}
                    // "Already exists" (what GoTo answers a duplicate elsewhere): the bridge
                    // re-subscribes at every start, so this must not stop start-up.
                    SubscriptionOutcome::Failed {
                        account_key,
                        status: 409,
                        error_code,
                        ..
                    } => {
                        let why = format!("409 {}", code(&error_code));
                        unsure.push((account_key, why));
                    }
                    // Undocumented inside a 207: retried with a new token (see
                    // `ChannelError::SubscriptionUnauthorized`), never a refusal that stops
                    // start-up.
                    SubscriptionOutcome::Failed {
                        account_key,
                        status: 401,
                        error_code,
                        ..
                    } => {
                        verdicts.push(format!("{account_key} (401 {})", code(&error_code)));
                        unauthorized.push(account_key.clone());
                        retry.push(account_key);
                    }
                    SubscriptionOutcome::Failed {
                        account_key,
                        status,
                        error_code,
                        message,
                        permanent: true,
                    } => {
                        // GoTo may answer an item 404 (or 410) because the channel vanished
                        // between its creation and this subscribe, which only a new channel
                        // repairs: a refusal would stop start-up over it.
                        if matches!(status, 404 | 410) {
                            self.check_channel_after_item(
                                channel,
                                &account_key,
                                status,
                                error_code.as_deref(),
                                message.as_deref(),
                            )
                            .await?;
                        }
                        let fix = match status {
                            403 => "grant the OAuth client the scope call-events.v1.notifications.manage and use a token of a super admin of that account",
                            404 => "check goto.account_keys: GoTo does not know this account key",
                            _ => "check goto.account_keys and goto.events against GoTo's message",
                        };
                        return Err(subscription_refused(
                            &channel.channel_id,
                            account_key,
                            status,
                            error_code.as_deref(),
                            message.as_deref(),
                            fix,
                        ));
                    }
                    SubscriptionOutcome::Failed {
                        account_key,
                        status,
                        error_code,
                        ..
                    } => {
                        verdicts.push(format!("{account_key} ({status} {})", code(&error_code)));
                        retry.push(account_key);
                    }
                    SubscriptionOutcome::Unconfirmed { account_key } => {
                        unsure.push((account_key, "not in the answer".to_owned()));
                    }
                }
            }
            if !unsure.is_empty() {
                let listed = self.listed_subscriptions(channel).await?;
                for (account_key, why) in unsure {
                    if !listed.as_ref().is_some_and(|l| l.contains(&account_key)) {
                        // Not listed (yet: the listing can lag a subscribe by a second or two,
                        // which the retries below cover) or the listing could not be read.
                        let listing = if listed.is_some() {
                            "not listed"
                        } else {
                            "listing unreadable"
                        };
                        verdicts.push(format!("{account_key} ({why}, {listing})"));
                        retry.push(account_key);
                    }
                }
            }
            if retry.is_empty() {
                tracing::info!(channel = %channel.tag(), accounts = self.account_keys.len(), "call events subscribed");
                return Ok(());
            }
            pending = retry;
            if attempt < SUBSCRIBE_ATTEMPTS {
                // The client renews its token on a request's 401, not on an item's: a token
                // expired or revoked while the request ran is renewed here, once a round (a
                // second new token would fare no better than the first).
                if !unauthorized.is_empty() && !token_renewed {
                    if let Some(generation) = token_used {
                        tracing::warn!(accounts = %unauthorized.join(", "), "subscription items answered 401; renewing the access token");
                        self.client.transport().auth().invalidate(generation).await;
                        token_renewed = true;
                    }
                }
                tracing::warn!(attempt, accounts = %verdicts.join(", "), "subscription items failed transiently or are not confirmed yet; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        if !unauthorized.is_empty() {
            return Err(ChannelError::SubscriptionUnauthorized {
                accounts: unauthorized.join(", "),
                pending: verdicts.join(", "),
                attempts: SUBSCRIBE_ATTEMPTS,
                renewed: if token_renewed {
                    ", after a new access token"
                } else {
                    ""
                },
            });
        }
        Err(ChannelError::SubscriptionsPending {
            accounts: verdicts.join(", "),
            attempts: SUBSCRIBE_ATTEMPTS,
        })
    }

    /// After a subscribe item answered `status` (404 or 410) for `account_key`: `Ok` when the
    /// channel still exists, so the refusal is about the account; [`ChannelError::ChannelGone`]
    /// when GoTo no longer has it, which callers answer with a new channel; and, when that
    /// could not be checked, [`ChannelError::ChannelUnverified`], transient, rather than a
    /// refusal that stops start-up.
    async fn check_channel_after_item(
        &self,
        channel: &Channel,
        account_key: &str,
        status: u16,
        error_code: Option<&str>,
        message: Option<&str>,
    ) -> Result<(), ChannelError> {
        match self.channel_exists(channel).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                let mut source = GotoError::item(
                    SUBSCRIBE_CALL_EVENTS,
                    account_key,
                    status,
                    error_code,
                    message,
                );
                hide_channel_id(&mut source, &channel.channel_id);
                Err(ChannelError::ChannelGone {
                    context: "subscribing to call events (GoTo's channel listing no longer shows the channel)",
                    channel_id: channel.channel_id.clone(),
                    source,
                })
            }
            Err(e) => Err(ChannelError::ChannelUnverified {
                account_key: account_key.to_owned(),
                status,
                channel_id: channel.channel_id.clone(),
                source: Box::new(e),
            }),
        }
    }

    /// The account keys GoTo lists as subscribed on `channel`, to confirm what a subscribe
    /// answer left in doubt; `None` when the listing could not be read (the subscribe is then
    /// simply retried). A 404 means the channel is gone.
    async fn listed_subscriptions(
        &self,
        channel: &Channel,
    ) -> Result<Option<Vec<String>>, ChannelError> {
        match quiet(
            self.client
                .call_event_subscriptions(&channel.channel_id)
                .await,
            &channel.channel_id,
        ) {
            Ok(listed) => Ok(Some(listed)),
            Err(e) if e.status() == Some(404) => Err(on_channel(
                "reading call-events subscriptions back",
                &channel.channel_id,
            )(e)),
            Err(e) => {
                tracing::warn!(error = %e, "could not read call-events subscriptions back to confirm a subscribe");
                Ok(None)
            }
        }
    }

    /// Removes the subscriptions in `listed` whose account key is no longer configured, so
    /// their calls stop reaching the channel. Failures are logged and counted
    /// (`callbridge_channel_unsubscribe_failures_total`), not returned: the configured accounts
    /// must keep flowing, and every repair pass tries again. Returns how many were removed.
    async fn unsubscribe_unconfigured(&self, channel_id: &str, listed: &[String]) -> usize {
        let mut removed = 0;
        for account_key in listed.iter().filter(|k| !self.account_keys.contains(k)) {
            match quiet(
                self.client
                    .unsubscribe_call_events(channel_id, account_key)
                    .await,
                channel_id,
            ) {
                Ok(_) => {
                    removed += 1;
                    tracing::warn!(channel = %crate::goto::Channel::tag_of(channel_id), %account_key, "unsubscribed an account no longer in goto.account_keys");
                }
                Err(e) => {
                    metrics::counter!("callbridge_channel_unsubscribe_failures_total").increment(1);
                    tracing::error!(channel = %crate::goto::Channel::tag_of(channel_id), %account_key, error = %e, "could not unsubscribe an account no longer in goto.account_keys: its calls still reach the channel; retrying at the next repair check");
                }
            }
        }
        removed
    }
}

/// Whether a failed `GET …/channels/{nickname}/{channelId}` is a refusal of the route itself
/// (any 4xx but 401, 404 and 429): that route is documented by claim only (goto-api.md §2.4).
fn refuses_claimed_read(e: &GotoError) -> bool {
    matches!(e.status(), Some(s) if (400..500).contains(&s) && !matches!(s, 401 | 404 | 429))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused item's texts are GoTo's like any other: a URL it quotes keeps its scheme and
    /// host only (the webhook URL's path is its shared secret), a long text is bounded as in
    /// every GoTo error, and the channel id is shown by its tag, also where the bound falls.
    #[test]
    fn a_refusal_keeps_gotos_texts_as_every_goto_error_does() {
        const CHANNEL: &str = "0vTpo-UTMtHMl3lE4xYz";
        const SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c";
        let tag = Channel::tag_of(CHANNEL);
        let message = format!(
            "Channel {CHANNEL} (https://bridge.example.com/goto/webhook/{SECRET}?token={SECRET}) \
             refused: {}",
            "x".repeat(2000)
        );
        let err = subscription_refused(
            CHANNEL,
            "4000000000000000999".to_owned(),
            403,
            Some(&format!("FORBIDDEN_{CHANNEL}")),
            Some(&message),
            "fix it",
        );
        let shown = format!("{err} / {err:?}");
        assert!(!shown.contains(SECRET), "secret leaked: {shown}");
        assert!(!shown.contains("token="), "query string leaked: {shown}");
        assert!(!shown.contains(CHANNEL), "channel id leaked: {shown}");
        assert!(
            shown.contains(&format!(
                "Channel {tag} (https://bridge.example.com/…) refused"
            )),
            "{shown}"
        );
        assert!(shown.contains(&format!("FORBIDDEN_{tag}")), "{shown}");
        match &err {
            ChannelError::SubscriptionRefused { message, .. } => {
                // Bounded as GoTo's texts in a `GotoError` are (500 characters and a marker,
                // here less the id's replacement by its shorter tag).
                assert!(message.chars().count() <= 501, "{message}");
                assert!(message.ends_with('…'), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }

        // The bound falling inside the channel id: what the cut left of it is replaced too.
        let straddling = format!("{} {CHANNEL} is not ours", "a".repeat(489));
        let err = subscription_refused(CHANNEL, "1".to_owned(), 400, None, Some(&straddling), "f");
        let shown = err.to_string();
        assert!(!shown.contains(&CHANNEL[..6]), "{shown}");
        assert!(shown.contains(&tag), "{shown}");

        // No text: empty, as before.
        let bare = subscription_refused(CHANNEL, "1".to_owned(), 400, None, None, "f");
        assert!(
            matches!(&bare, ChannelError::SubscriptionRefused { error_code, message, .. } if error_code.is_empty() && message.is_empty()),
            "{bare:?}"
        );
    }
}
