//! The sequencer's I/O shell around the pure core: Kafka in, Kafka out, back-fill off-thread.
//!
//! - [`changelog`]: the resume index's record format.
//! - [`takeover`]: rebuilding a partition's state from Kafka alone.
//! - [`backfill`]: the back-fill worker and its source trait.
//! - [`runner`]: the consumer-group member that ties them together.

pub mod backfill;
pub mod changelog;
pub mod goto_source;
pub mod runner;
pub mod takeover;

pub use backfill::{BackfillSource, Fetched, FetchedState};
pub use runner::{spawn, SequencerHandle, ShellConfig, ShellStats};
