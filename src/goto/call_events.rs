//! Call Events API: subscribing a channel to account keys, and fetching call states back
//! (back-fill) when a `sequenceNumber` gap shows that the channel lost some.
//!
//! A subscribe answers 207 Multi-Status: the HTTP status says nothing, each account key has
//! its own status, so the result is an outcome per key. Back-filled states are returned as
//! the raw JSON GoTo sent, in whichever of the three known page shapes it used.

use serde::Serialize;
use serde_json::value::RawValue;

use super::endpoint::{
    ACTIVE_CONVERSATIONS, CONVERSATION_EVENTS, LIST_CALL_EVENT_SUBSCRIPTIONS, SUBSCRIBE_CALL_EVENTS,
};
use super::error::GotoError;
use super::model::{
    decode_events_page, decode_raw_page, decode_subscribed_account_keys,
    decode_subscription_outcomes, ConversationEvents, SubscriptionOutcome,
};
use super::paging::fetch_all;
use super::transport::ApiRequest;
use super::GotoClient;

/// Page size asked of the Call Events API (its maximum is undocumented; 100 is GoTo's usual).
const EVENTS_PAGE_SIZE: &str = "100";

/// One account to subscribe, and to which state types.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountSubscription {
    /// The ~19-digit account key, kept as a string.
    #[serde(rename = "id")]
    pub account_key: String,
    /// `STARTING`, `ACTIVE`, `ENDING`; `None` subscribes to all (the field is omitted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

impl AccountSubscription {
    /// Subscribes `account_key` to every state type.
    pub fn all_events(account_key: impl Into<String>) -> Self {
        AccountSubscription {
            account_key: account_key.into(),
            events: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeBody<'a> {
    channel_id: &'a str,
    account_keys: &'a [AccountSubscription],
}

impl GotoClient {
    /// `POST /call-events/v1/subscriptions` (207): one outcome per requested account key, in
    /// request order. Retried like any idempotent call: GoTo treats a repeated subscribe as
    /// harmless (it does not change an existing subscription's event list, though).
    pub async fn subscribe_call_events(
        &self,
        channel_id: &str,
        accounts: &[AccountSubscription],
    ) -> Result<Vec<SubscriptionOutcome>, GotoError> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let url = self.api_url(&["call-events", "v1", "subscriptions"])?;
        let req = ApiRequest::new(SUBSCRIBE_CALL_EVENTS, url).json_body(&SubscribeBody {
            channel_id,
            account_keys: accounts,
        })?;
        let response = self.transport().send(&req).await?;
        let keys: Vec<&str> = accounts.iter().map(|a| a.account_key.as_str()).collect();
        decode_subscription_outcomes(&response.body, &keys)
            .map_err(|e| GotoError::decode(SUBSCRIBE_CALL_EVENTS, &e))
    }

    /// `GET /call-events/v1/subscriptions?channelId=…`: the account keys subscribed on the
    /// channel. May lag a fresh subscribe by a second or two.
    pub async fn call_event_subscriptions(
        &self,
        channel_id: &str,
    ) -> Result<Vec<String>, GotoError> {
        let mut url = self.api_url(&["call-events", "v1", "subscriptions"])?;
        url.query_pairs_mut().append_pair("channelId", channel_id);
        let response = self
            .transport()
            .send(&ApiRequest::new(LIST_CALL_EVENT_SUBSCRIPTIONS, url))
            .await?;
        decode_subscribed_account_keys(&response.body)
            .map_err(|e| GotoError::decode(LIST_CALL_EVENT_SUBSCRIPTIONS, &e))
    }

    /// `GET /call-events/v1/conversation-spaces/{id}/events?sequenceFrom&sequenceTo`, every
    /// page. Bounds are passed as given (GoTo's guide uses `from = to = n` for one state, so
    /// they are inclusive); `None` leaves a bound open.
    pub async fn conversation_events(
        &self,
        conversation_space_id: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<ConversationEvents, GotoError> {
        let mut url = self.api_url(&[
            "call-events",
            "v1",
            "conversation-spaces",
            conversation_space_id,
            "events",
        ])?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(from) = from {
                query.append_pair("sequenceFrom", &from.to_string());
            }
            if let Some(to) = to {
                query.append_pair("sequenceTo", &to.to_string());
            }
            query.append_pair("pageSize", EVENTS_PAGE_SIZE);
        }
        let states = fetch_all(
            self.transport(),
            CONVERSATION_EVENTS,
            url,
            true,
            decode_events_page,
        )
        .await?;
        Ok(match states {
            Some(states) => ConversationEvents::Found(states),
            None => ConversationEvents::NotFound,
        })
    }

    /// `GET /call-events/v1/conversation-spaces?accountKey=a&accountKey=b`, every page: the
    /// last state of each active call of those accounts, raw.
    pub async fn active_conversations(
        &self,
        account_keys: &[String],
    ) -> Result<Vec<Box<RawValue>>, GotoError> {
        let mut url = self.api_url(&["call-events", "v1", "conversation-spaces"])?;
        {
            let mut query = url.query_pairs_mut();
            for key in account_keys {
                query.append_pair("accountKey", key);
            }
            query.append_pair("pageSize", EVENTS_PAGE_SIZE);
        }
        let items = fetch_all(
            self.transport(),
            ACTIVE_CONVERSATIONS,
            url,
            false,
            decode_raw_page,
        )
        .await?;
        Ok(items.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_body_matches_the_guide() {
        let accounts = [
            AccountSubscription {
                account_key: "1234567890123456789".into(),
                events: Some(vec!["STARTING".into(), "ENDING".into()]),
            },
            AccountSubscription::all_events("42"),
        ];
        let body = serde_json::to_value(SubscribeBody {
            channel_id: "Webhook.x",
            account_keys: &accounts,
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"channelId":"Webhook.x","accountKeys":[
                {"id":"1234567890123456789","events":["STARTING","ENDING"]},
                {"id":"42"}]})
        );
    }
}
