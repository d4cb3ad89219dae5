//! Call Events Report API: the per-call report GoTo publishes once a call has ended.
//!
//! The report carries every state of the call in `callStates[]`, which makes it the
//! long-term source for filling gaps after the back-fill endpoint's (undocumented) retention,
//! and report summaries let a restarted bridge find the calls it missed. Reports are passed
//! through raw; the bridge decides what to read from them.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::value::RawValue;

use super::endpoint::{REPORT, REPORT_SUMMARIES, SUBSCRIBE_REPORTS};
use super::error::GotoError;
use super::model::{decode_raw_page, decode_report_states, BackfilledState};
use super::paging::fetch_all;
use super::transport::ApiRequest;
use super::GotoClient;

/// Page size for report summaries (1000 has been used against the live API).
const SUMMARIES_PAGE_SIZE: &str = "1000";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeReportsBody<'a> {
    channel_id: &'a str,
    account_keys: &'a [String],
    event_types: [&'static str; 1],
}

impl GotoClient {
    /// `GET /call-events-report/v1/reports/{conversationSpaceId}`: the report exactly as GoTo
    /// sent it; `None` on 404 (the call has not ended or the report is not ready yet).
    pub async fn report(
        &self,
        conversation_space_id: &str,
    ) -> Result<Option<Box<RawValue>>, GotoError> {
        let url = self.api_url(&["call-events-report", "v1", "reports", conversation_space_id])?;
        let response = self
            .transport()
            .send(&ApiRequest::new(REPORT, url).also_accept(&[404]))
            .await?;
        if response.status == 404 {
            return Ok(None);
        }
        serde_json::from_slice::<Box<RawValue>>(&response.body)
            .map(Some)
            .map_err(|e| GotoError::decode(REPORT, &e))
    }

    /// The states of an ended call from its report's `callStates[]` (the long-term store,
    /// kept after back-fill's retention); `None` while there is no report (404: the call has
    /// not ended, or its report is not ready).
    pub async fn report_states(
        &self,
        conversation_space_id: &str,
    ) -> Result<Option<Vec<BackfilledState>>, GotoError> {
        let Some(report) = self.report(conversation_space_id).await? else {
            return Ok(None);
        };
        decode_report_states(report.get().as_bytes())
            .map(Some)
            .map_err(|e| GotoError::decode(REPORT, &e))
    }

    /// `GET /call-events-report/v1/report-summaries?accountKey&startTime&endTime`, every page:
    /// the summaries (raw) of calls of `account_key` in `[start, end]`. GoTo is said to cap the
    /// window at 31 days.
    pub async fn report_summaries(
        &self,
        account_key: &str,
        start: SystemTime,
        end: SystemTime,
    ) -> Result<Vec<Box<RawValue>>, GotoError> {
        let mut url = self.api_url(&["call-events-report", "v1", "report-summaries"])?;
        url.query_pairs_mut()
            .append_pair("accountKey", account_key)
            .append_pair("startTime", &iso8601(start))
            .append_pair("endTime", &iso8601(end))
            .append_pair("pageSize", SUMMARIES_PAGE_SIZE);
        let items = fetch_all(
            self.transport(),
            REPORT_SUMMARIES,
            url,
            false,
            decode_raw_page,
        )
        .await?;
        Ok(items.unwrap_or_default())
    }

    /// `POST /call-events-report/v1/subscriptions` (201) for `REPORT_SUMMARY` notifications.
    /// A 409 ("already exists") counts as success: the subscription is there either way.
    pub async fn subscribe_reports(
        &self,
        channel_id: &str,
        account_keys: &[String],
    ) -> Result<(), GotoError> {
        if account_keys.is_empty() {
            return Ok(());
        }
        let url = self.api_url(&["call-events-report", "v1", "subscriptions"])?;
        let req = ApiRequest::new(SUBSCRIBE_REPORTS, url)
            .json_body(&SubscribeReportsBody {
                channel_id,
                account_keys,
                event_types: ["REPORT_SUMMARY"],
            })?
            .also_accept(&[409]);
        self.transport().send(&req).await?;
        Ok(())
    }
}

/// `2026-01-31T12:00:00.000Z`: UTC with milliseconds, as GoTo's own timestamps are written.
fn iso8601(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_utc_iso8601() {
        let at = UNIX_EPOCH + Duration::from_millis(1_709_164_800_123);
        assert_eq!(iso8601(at), "2024-02-29T00:00:00.123Z");
    }

    #[test]
    fn subscribe_body_uses_plain_string_keys() {
        let keys = vec!["1".to_owned(), "2".to_owned()];
        let body = serde_json::to_value(SubscribeReportsBody {
            channel_id: "c",
            account_keys: &keys,
            event_types: ["REPORT_SUMMARY"],
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"channelId":"c","accountKeys":["1","2"],"eventTypes":["REPORT_SUMMARY"]})
        );
    }
}
