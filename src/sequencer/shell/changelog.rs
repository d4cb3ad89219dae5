//! The changelog topic's records: the sequencer's resume index.
//!
//! Keys: a conversation id → its checkpoint (`null` value = evicted, a compaction tombstone);
//! `__progress/{epoch}` → where the output stood when the index was last written;
//! `__fence/{epoch}` → written by each new owner of the partition at takeover. The epoch is in
//! the key so a late write by a previous owner can never replace the new owner's record under
//! compaction. Every conversation record is a full snapshot of its key, so compaction can drop
//! older values safely.

use serde::{Deserialize, Serialize};

use crate::sequencer::ConversationCheckpoint;

/// Prefix of progress keys.
pub const PROGRESS_PREFIX: &str = "__progress/";
/// Prefix of fence keys.
pub const FENCE_PREFIX: &str = "__fence/";

// The changelog's own keys share the topic with conversation ids, so each must be one no
// conversation can have: `notification::parse` refuses every id starting with
// `RESERVED_ID_PREFIX`. Checked here so the two cannot drift apart.
const _: () = assert!(
    crate::notification::is_reserved_id(PROGRESS_PREFIX)
        && crate::notification::is_reserved_id(FENCE_PREFIX),
    "changelog key prefixes must start with notification::RESERVED_ID_PREFIX"
);

/// One conversation's resume point.
///
/// Read and written by every binary of a rolling upgrade, so fields are only ever added, each
/// optional (`default`) and left out when it has its default value, and unknown fields are
/// ignored (no `deny_unknown_fields`): an older binary reads a newer record as it always did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationEntry {
    /// Next sequence number to publish.
    pub next: u64,
    /// The completion record was published.
    pub ended: bool,
    /// Gap records published so far.
    pub gaps: u32,
    /// The call was abandoned at `next` (quiet for `sequencer.abandon_after`; no completion
    /// record). A new owner restores it abandoned and dead-letters what comes at or above
    /// `next`; a binary older than this field restores it open, as it did before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub abandoned: bool,
}

// The core's checkpoint and its changelog form, field for field, in one place: the snapshot
// writes one, the takeover restores the other, and a field left out on either side would be
// lost at every takeover.
impl From<ConversationCheckpoint> for ConversationEntry {
    fn from(c: ConversationCheckpoint) -> Self {
        ConversationEntry {
            next: c.next_sequence,
            ended: c.ended,
            gaps: c.gap_count,
            abandoned: c.abandoned,
        }
    }
}

impl From<ConversationEntry> for ConversationCheckpoint {
    fn from(e: ConversationEntry) -> Self {
        ConversationCheckpoint {
            next_sequence: e.next,
            ended: e.ended,
            gap_count: e.gaps,
            abandoned: e.abandoned,
        }
    }
}

/// Where the outputs stood when the index was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Writer's epoch.
    pub epoch: u64,
    /// Offset of the last acknowledged ordered-topic record covered by this index (-1: none).
    pub ordered_offset: i64,
    /// Raw offset from which consumption must resume.
    pub raw_low_watermark: i64,
    /// One past the highest raw offset this partition's owners may have read when this was
    /// written (this owner's reading, and what it was told the owners before it had read). The
    /// next takeover announces at least this as the previous owner's raw end, whatever the
    /// broker reports as raw's high watermark. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_read_end: Option<i64>,
    /// Written by a clean hand-over (revoke or shutdown): every output of this epoch was
    /// acknowledged before this record, and the writer wrote nothing after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

/// Fence value: the epoch and who took the partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The new epoch.
    pub epoch: u64,
    /// Host/process that wrote it.
    pub member: String,
    /// Random token: proves the read-back saw THIS write, not an older one.
    pub token: String,
}

/// A decoded changelog record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangelogRecord {
    /// Conversation checkpoint.
    Conversation(String, ConversationEntry),
    /// Conversation evicted.
    Tombstone(String),
    /// Progress of an epoch.
    Progress(Progress),
    /// A fence; `None` value = a tombstone of an old fence/progress key.
    Fence(Fence),
    /// A tombstone of an old `__progress`/`__fence` key.
    Housekeeping,
}

/// Why a changelog record could not be read.
#[derive(Debug, thiserror::Error)]
#[error("changelog record with key {key:?} is unreadable: {detail}")]
pub struct ChangelogError {
    key: String,
    detail: String,
}

/// Key of the progress record of `epoch`.
pub fn progress_key(epoch: u64) -> String {
    format!("{PROGRESS_PREFIX}{epoch}")
}

/// Key of the fence record of `epoch`.
pub fn fence_key(epoch: u64) -> String {
    format!("{FENCE_PREFIX}{epoch}")
}

/// Value bytes for a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Reads one changelog record.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<ChangelogRecord, ChangelogError> {
    let key = String::from_utf8_lossy(key).into_owned();
    let err = |detail: String| ChangelogError {
        key: key.clone(),
        detail,
    };
    let is_meta = key.starts_with(PROGRESS_PREFIX) || key.starts_with(FENCE_PREFIX);
    let Some(value) = value else {
        return Ok(if is_meta {
            ChangelogRecord::Housekeeping
        } else {
            ChangelogRecord::Tombstone(key)
        });
    };
    if key.starts_with(PROGRESS_PREFIX) {
        serde_json::from_slice(value)
            .map(ChangelogRecord::Progress)
            .map_err(|e| err(e.to_string()))
    } else if key.starts_with(FENCE_PREFIX) {
        serde_json::from_slice(value)
            .map(ChangelogRecord::Fence)
            .map_err(|e| err(e.to_string()))
    } else {
        serde_json::from_slice(value)
            .map(|entry| ChangelogRecord::Conversation(key.clone(), entry))
            .map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let e = ConversationEntry {
            next: 7,
            ended: false,
            gaps: 1,
            abandoned: true,
        };
        assert_eq!(
            decode(b"conv-1", Some(&encode(&e))).unwrap(),
            ChangelogRecord::Conversation("conv-1".into(), e)
        );
        let p = Progress {
            epoch: 3,
            ordered_offset: 41,
            raw_low_watermark: 17,
            raw_read_end: Some(23),
            released: true,
        };
        assert_eq!(
            decode(progress_key(3).as_bytes(), Some(&encode(&p))).unwrap(),
            ChangelogRecord::Progress(p)
        );
        assert_eq!(
            decode(b"conv-1", None).unwrap(),
            ChangelogRecord::Tombstone("conv-1".into())
        );
        assert_eq!(
            decode(fence_key(2).as_bytes(), None).unwrap(),
            ChangelogRecord::Housekeeping
        );
    }

    #[test]
    fn progress_records_without_a_raw_read_end_still_read() {
        // Written before the field existed: the takeover falls back to raw's high watermark.
        let old = br#"{"epoch":4,"ordered_offset":9,"raw_low_watermark":5}"#;
        assert_eq!(
            decode(progress_key(4).as_bytes(), Some(old)).unwrap(),
            ChangelogRecord::Progress(Progress {
                epoch: 4,
                ordered_offset: 9,
                raw_low_watermark: 5,
                raw_read_end: None,
                released: false,
            })
        );
        let new = Progress {
            epoch: 4,
            ordered_offset: 9,
            raw_low_watermark: 5,
            raw_read_end: Some(12),
            released: false,
        };
        assert_eq!(
            String::from_utf8(encode(&new)).unwrap(),
            r#"{"epoch":4,"ordered_offset":9,"raw_low_watermark":5,"raw_read_end":12}"#
        );
    }

    /// A rolling upgrade runs binaries with and without the `abandoned` field side by side, each
    /// taking over partitions the other wrote.
    #[test]
    fn conversation_records_with_and_without_the_abandoned_flag_read_both_ways() {
        // Written before the field existed: an open call, restored open as before.
        let old = br#"{"next":4,"ended":false,"gaps":1}"#;
        let entry = ConversationEntry {
            next: 4,
            ended: false,
            gaps: 1,
            abandoned: false,
        };
        assert_eq!(
            decode(b"conv-1", Some(old)).unwrap(),
            ChangelogRecord::Conversation("conv-1".into(), entry)
        );
        // A call not abandoned is written exactly as before the field existed.
        assert_eq!(encode(&entry), old.to_vec());
        // An abandoned call says so.
        let abandoned = ConversationEntry {
            abandoned: true,
            ..entry
        };
        let new = encode(&abandoned);
        assert_eq!(
            String::from_utf8(new.clone()).unwrap(),
            r#"{"next":4,"ended":false,"gaps":1,"abandoned":true}"#
        );
        assert_eq!(
            decode(b"conv-1", Some(&new)).unwrap(),
            ChangelogRecord::Conversation("conv-1".into(), abandoned)
        );
        // The core's checkpoint goes through the record and back whole.
        let cp = ConversationCheckpoint {
            next_sequence: 4,
            ended: false,
            gap_count: 1,
            abandoned: true,
        };
        assert_eq!(ConversationEntry::from(cp), abandoned);
        assert_eq!(ConversationCheckpoint::from(abandoned), cp);
        // A binary older than the field (its entry as it was) reads the new record: the unknown
        // field is ignored, and the call is restored open, as that binary always did.
        #[derive(Debug, PartialEq, Deserialize)]
        struct OlderEntry {
            next: u64,
            ended: bool,
            gaps: u32,
        }
        assert_eq!(
            serde_json::from_slice::<OlderEntry>(&new).unwrap(),
            OlderEntry {
                next: 4,
                ended: false,
                gaps: 1
            }
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_key() {
        let e = decode(b"conv-9", Some(b"{not json")).unwrap_err();
        assert!(e.to_string().contains("conv-9"));
    }
}
