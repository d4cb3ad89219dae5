//! GoTo's back-fill endpoint as the sequencer's [`BackfillSource`].

use super::backfill::{BackfillSource, Fetched, FetchedState};
use crate::goto::{ConversationEvents, GotoClient, GotoError};
use std::future::Future;
use std::pin::Pin;

impl BackfillSource for GotoClient {
    fn fetch<'a>(
        &'a self,
        conversation: &'a str,
        from: u64,
        to: Option<u64>,
    ) -> Pin<Box<dyn Future<Output = Fetched> + Send + 'a>> {
        Box::pin(async move {
            match self.conversation_events(conversation, Some(from), to).await {
                Ok(ConversationEvents::Found(states)) => Fetched::States(
                    states
                        .into_iter()
                        .map(|s| FetchedState {
                            sequence_number: s.sequence_number,
                            metadata: s.metadata,
                            state: s.state,
                        })
                        .collect(),
                ),
                Ok(ConversationEvents::NotFound) => Fetched::NotFound,
                Err(e) => Fetched::Failed {
                    retryable: retryable(&e),
                    error: e.to_string(),
                },
            }
        })
    }
}

/// 400 and 403 will not heal by waiting; everything else (429, 5xx, network, 401 after its
/// refresh) may.
fn retryable(e: &GotoError) -> bool {
    !matches!(e.status(), Some(400 | 403))
}
