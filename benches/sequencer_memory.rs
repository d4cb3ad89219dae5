//! Memory of the sequencer core per open conversation, without Kafka, HTTP or the shell: the
//! part of `callbridge bench`'s memory figure that the core's data structures decide, measured
//! in seconds instead of minutes, so a layout change can be judged on its own.
//!
//! Feeds STARTING (sequence 1, published at once, nothing held) of `N` fresh conversations with
//! GoTo-shaped ids (lowercase UUIDs) to four `PartitionSequencer`s (the bench's 4 partitions),
//! draining actions and the dirty set the way the shell does, and prints the live heap (counted
//! by a wrapping global allocator) and the RSS growth per conversation.
//!
//! Run: `cargo bench --bench sequencer_memory` (optionally `-- 250000` for another count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use callbridge::sequencer::{
    Action, IncomingState, Origin, PartitionSequencer, SequencerConfig, Timestamp,
};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PARTITIONS: usize = 4;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A lowercase hyphenated UUID, distinct per `i`, like GoTo's `conversationSpaceId`.
fn uuid(i: u64) -> String {
    let x = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ 0x4000_8000;
    let h = format!("{x:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let ids: Vec<String> = (0..n).map(uuid).collect();
    let mut cores: Vec<PartitionSequencer<()>> = (0..PARTITIONS)
        .map(|_| PartitionSequencer::new(SequencerConfig::default()))
        .collect();
    let mut out = Vec::new();
    let (heap_before, rss_before) = (LIVE.load(Ordering::Relaxed), rss_bytes());
    let mut published = 0u64;
    for (i, id) in ids.iter().enumerate() {
        let core = &mut cores[i % PARTITIONS];
        let state = IncomingState {
            sequence_number: 1,
            fingerprint: i as u64,
            is_ending: false,
            origin: Origin::Webhook,
            raw_offset: Some(i as i64),
            payload: (),
        };
        core.on_state(id, state, Timestamp(1_000 + i as u64 / 1_000), &mut out);
        published += out
            .drain(..)
            .filter(|a| matches!(a, Action::Publish { .. }))
            .count() as u64;
        if i % 1_024 == 0 {
            drop(core.take_dirty());
        }
    }
    for core in &mut cores {
        drop(core.take_dirty());
    }
    let heap = LIVE.load(Ordering::Relaxed) - heap_before;
    let rss = rss_bytes().saturating_sub(rss_before);
    let held: usize = cores.iter().map(PartitionSequencer::len).sum();
    assert_eq!(held as u64, n, "every conversation is remembered");
    assert_eq!(published, n, "every STARTING was published at once");
    println!(
        "{n} open conversations over {PARTITIONS} partitions: heap {:.0} B, RSS {:.0} B per conversation",
        heap as f64 / n as f64,
        rss as f64 / n as f64
    );
    drop(ids);
}
