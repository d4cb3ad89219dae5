//! GoTo's back-fill endpoint as the sequencer's [`BackfillSource`], with the call's report as the
//! fallback once back-fill no longer has a state (its retention is undocumented; a report keeps
//! every state of an ended call).

use super::backfill::{BackfillSource, Fetched, FetchedState};
use crate::goto::{BackfilledState, ConversationEvents, GotoClient, GotoError};
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
            let found = match self.conversation_events(conversation, Some(from), to).await {
                Ok(ConversationEvents::Found(states)) => Some(states),
                Ok(ConversationEvents::NotFound) => None,
                Err(e) => return failed(&e),
            };
            // A gap (a bounded request, not an idle probe) whose first state back-fill no
            // longer has, or a call back-fill no longer knows: an ended call's report keeps
            // every state after back-fill's retention (GoTo unknown #7). Only then is a state
            // declared a gap: when neither has it.
            let first_missing = found
                .as_ref()
                .is_none_or(|states| !states.iter().any(|s| s.sequence_number == from));
            if first_missing && (to.is_some() || found.is_none()) {
                match self.report_states(conversation).await {
                    Ok(Some(report)) => {
                        let wanted = |seq: u64| seq >= from && to.is_none_or(|to| seq <= to);
                        let mut states = found.unwrap_or_default();
                        let have: std::collections::HashSet<u64> =
                            states.iter().map(|s| s.sequence_number).collect();
                        states.extend(report.into_iter().filter(|s| {
                            wanted(s.sequence_number) && !have.contains(&s.sequence_number)
                        }));
                        return fetched(states);
                    }
                    Ok(None) => {}
                    // The report is a second chance: its failure leaves the first answer.
                    Err(e) => {
                        tracing::debug!(conversation, error = %e, "report fallback of a back-fill failed")
                    }
                }
            }
            match found {
                Some(states) => fetched(states),
                None => Fetched::NotFound,
            }
        })
    }
}

fn fetched(states: Vec<BackfilledState>) -> Fetched {
    Fetched::States(
        states
            .into_iter()
            .map(|s| FetchedState {
                sequence_number: s.sequence_number,
                metadata: s.metadata,
                state: s.state,
            })
            .collect(),
    )
}

fn failed(e: &GotoError) -> Fetched {
    Fetched::Failed {
        retryable: retryable(e),
        error: e.to_string(),
    }
}

/// 400 and 403 will not heal by waiting; everything else (429, 5xx, network, 401 after its
/// refresh) may.
fn retryable(e: &GotoError) -> bool {
    !matches!(e.status(), Some(400 | 403))
}
