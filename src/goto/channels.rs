//! Notification Channel API: the delivery pipes (webhook or WebSocket) that subscriptions
//! point at.
//!
//! Creation is the one call that must not be retried blindly: if a create times out, GoTo may
//! have made the channel, and a second POST would make a second one. So a retryable failure of
//! [`GotoClient::create_channel`] is returned to the caller, who lists channels to find out.

use serde_json::{json, Value};

use super::endpoint::{
    CREATE_CHANNEL, DELETE_CHANNEL, EXTEND_CHANNEL_LIFETIME, GET_CHANNEL, LIST_CHANNELS,
    REFRESH_CHANNEL,
};
use super::error::GotoError;
use super::model::{decode_channel_page, decode_lifetime, Channel, ChannelKind};
use super::paging::fetch_all;
use super::transport::ApiRequest;
use super::{GotoClient, WebSocketTypeSpelling};

/// Page size for channel listings (GoTo's default, and reportedly its maximum).
const CHANNEL_PAGE_SIZE: &str = "100";

/// What kind of channel to create or refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelRequest {
    /// GoTo POSTs notifications to `url` (HTTPS, port 443, must answer OPTIONS/GET with 2xx
    /// before the create call).
    Webhook {
        /// The webhook URL.
        url: String,
    },
    /// The bridge connects to the returned `wss://` URL.
    WebSocket {
        /// Requested `channelLifetime` in seconds; GoTo's default when `None`.
        lifetime: Option<u64>,
    },
}

impl ChannelRequest {
    /// The request body, in GoTo's documented shape.
    fn body(&self, spelling: WebSocketTypeSpelling) -> Value {
        match self {
            ChannelRequest::Webhook { url } => json!({
                "channelType": "Webhook",
                "webhookChannelData": { "webhook": { "url": url } },
            }),
            ChannelRequest::WebSocket { lifetime } => {
                let mut body = json!({ "channelType": spelling.as_str() });
                if let (Some(lifetime), Value::Object(map)) = (lifetime, &mut body) {
                    map.insert("channelLifetime".to_owned(), json!(lifetime));
                }
                body
            }
        }
    }
}

impl GotoClient {
    /// `POST /notification-channel/v1/channels/{nickname}` (201).
    ///
    /// Never retried on 429/5xx/transport errors (a 401 is still refreshed and re-sent once,
    /// as GoTo did not act on it): on such an error, list the channels to learn whether the
    /// channel was created before trying again.
    pub async fn create_channel(
        &self,
        nickname: &str,
        request: &ChannelRequest,
    ) -> Result<Channel, GotoError> {
        let url = self.api_url(&["notification-channel", "v1", "channels", nickname])?;
        let req = ApiRequest::new(CREATE_CHANNEL, url)
            .json_body(&request.body(self.websocket_type()))?
            .not_idempotent();
        let response = self.transport().send(&req).await?;
        Channel::from_json(&response.body, Some(nickname))
            .map_err(|e| GotoError::decode(CREATE_CHANNEL, &e))
    }

    /// `PUT /notification-channel/v1/channels/{nickname}/{channelId}` with the create body
    /// (200): what GoTo's demos do on `WEBSOCKET_REFRESH_REQUIRED`.
    ///
    /// GoTo does not document this answer's body. Without a body, the returned channel is
    /// built from the request and its `lifetime_secs` is `None`; a body without `channelId`
    /// (say `{"channelLifetime":1200}`) is about the channel refreshed, whose id fills it.
    pub async fn refresh_channel(
        &self,
        nickname: &str,
        channel_id: &str,
        request: &ChannelRequest,
    ) -> Result<Channel, GotoError> {
        let url = self.api_url(&[
            "notification-channel",
            "v1",
            "channels",
            nickname,
            channel_id,
        ])?;
        let req = ApiRequest::new(REFRESH_CHANNEL, url)
            .json_body(&request.body(self.websocket_type()))?;
        let response = self.transport().send(&req).await?;
        if response.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Channel {
                channel_id: channel_id.to_owned(),
                nickname: nickname.to_owned(),
                kind: match request {
                    ChannelRequest::Webhook { url } => ChannelKind::Webhook {
                        url: Some(url.clone()),
                    },
                    ChannelRequest::WebSocket { .. } => ChannelKind::WebSocket { url: None },
                },
                lifetime_secs: None,
                unreachable_since: None,
            });
        }
        let mut refreshed =
            Channel::from_json_about(&response.body, Some(nickname), Some(channel_id))
                .map_err(|e| GotoError::decode(REFRESH_CHANNEL, &e))?;
        // A body without a channel type reads as a WebSocket channel; what was refreshed is
        // the request's kind.
        if let (ChannelRequest::Webhook { url }, ChannelKind::WebSocket { url: None }) =
            (request, &refreshed.kind)
        {
            refreshed.kind = ChannelKind::Webhook {
                url: Some(url.clone()),
            };
        }
        Ok(refreshed)
    }

    /// `PUT …/{nickname}/{channelId}/channel-lifetime` (no body): extends the channel by
    /// GoTo's default and returns the new `channelLifetime` in seconds.
    pub async fn extend_channel_lifetime(
        &self,
        nickname: &str,
        channel_id: &str,
    ) -> Result<u64, GotoError> {
        let url = self.api_url(&[
            "notification-channel",
            "v1",
            "channels",
            nickname,
            channel_id,
            "channel-lifetime",
        ])?;
        let response = self
            .transport()
            .send(&ApiRequest::new(EXTEND_CHANNEL_LIFETIME, url))
            .await?;
        decode_lifetime(&response.body).ok_or_else(|| GotoError::Decode {
            endpoint: EXTEND_CHANNEL_LIFETIME,
            detail: "no channelLifetime in the response".to_owned(),
        })
    }

    /// `GET /notification-channel/v1/channels/{nickname}/{channelId}`; `None` on 404.
    pub async fn get_channel(
        &self,
        nickname: &str,
        channel_id: &str,
    ) -> Result<Option<Channel>, GotoError> {
        let url = self.api_url(&[
            "notification-channel",
            "v1",
            "channels",
            nickname,
            channel_id,
        ])?;
        let response = self
            .transport()
            .send(&ApiRequest::new(GET_CHANNEL, url).also_accept(&[404]))
            .await?;
        if response.status == 404 {
            return Ok(None);
        }
        Channel::from_json_about(&response.body, Some(nickname), Some(channel_id))
            .map(Some)
            .map_err(|e| GotoError::decode(GET_CHANNEL, &e))
    }

    /// `GET /notification-channel/v1/channels?pageSize=100`, following `pageMarker` to the
    /// last page: every channel of the token's user, of all apps.
    pub async fn list_channels(&self) -> Result<Vec<Channel>, GotoError> {
        let mut url = self.api_url(&["notification-channel", "v1", "channels"])?;
        url.query_pairs_mut()
            .append_pair("pageSize", CHANNEL_PAGE_SIZE);
        let channels = fetch_all(
            self.transport(),
            LIST_CHANNELS,
            url,
            false,
            decode_channel_page,
        )
        .await?;
        Ok(channels.unwrap_or_default())
    }

    /// `DELETE /notification-channel/v1/channels/{nickname}/{channelId}` (204); `false` when
    /// the channel was already gone (404).
    pub async fn delete_channel(
        &self,
        nickname: &str,
        channel_id: &str,
    ) -> Result<bool, GotoError> {
        let url = self.api_url(&[
            "notification-channel",
            "v1",
            "channels",
            nickname,
            channel_id,
        ])?;
        let response = self
            .transport()
            .send(&ApiRequest::new(DELETE_CHANNEL, url).also_accept(&[404]))
            .await?;
        Ok(response.status != 404)
    }
}

// --- Call-events subscriptions of a channel: removing one ---------------------------------------

/// Remove one account's call-events subscription from a channel. Documented by claim only
/// (goto-api.md §3.2), status codes unknown (unknown #8).
pub const UNSUBSCRIBE_CALL_EVENTS: super::endpoint::Endpoint = super::endpoint::Endpoint {
    api: super::endpoint::Api::CallEvents,
    method: "DELETE",
    template: "/call-events/v1/subscriptions",
};

impl GotoClient {
    /// `DELETE /call-events/v1/subscriptions?channelId=…&accountKey=…`: stops `account_key`'s
    /// call states reaching the channel. Any 2xx means done; `false` when GoTo answered 404
    /// (no such subscription, or the channel is gone: nothing is delivered either way).
    pub async fn unsubscribe_call_events(
        &self,
        channel_id: &str,
        account_key: &str,
    ) -> Result<bool, GotoError> {
        let mut url = self.api_url(&["call-events", "v1", "subscriptions"])?;
        url.query_pairs_mut()
            .append_pair("channelId", channel_id)
            .append_pair("accountKey", account_key);
        let response = self
            .transport()
            .send(&ApiRequest::new(UNSUBSCRIBE_CALL_EVENTS, url).also_accept(&[404]))
            .await?;
        Ok(response.status != 404)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_follow_the_documented_shapes() {
        let webhook = ChannelRequest::Webhook {
            url: "https://example.com/goto/hook".into(),
        };
        assert_eq!(
            webhook.body(WebSocketTypeSpelling::WebSockets),
            json!({"channelType":"Webhook","webhookChannelData":{"webhook":{"url":"https://example.com/goto/hook"}}})
        );
        let ws = ChannelRequest::WebSocket { lifetime: None };
        assert_eq!(
            ws.body(WebSocketTypeSpelling::WebSockets),
            json!({"channelType":"WebSockets"})
        );
        assert_eq!(
            ws.body(WebSocketTypeSpelling::WebSocket),
            json!({"channelType":"WebSocket"})
        );
        let ws = ChannelRequest::WebSocket {
            lifetime: Some(1200),
        };
        assert_eq!(
            ws.body(WebSocketTypeSpelling::WebSockets),
            json!({"channelType":"WebSockets","channelLifetime":1200})
        );
    }
}
