//! Latency samples and their percentiles.
//!
//! Samples are kept whole (microseconds, `u32`) and sorted once at the end: a benchmark phase
//! records at most a few million of them, a few megabytes, and exact percentiles beat a
//! histogram's buckets when p99.9 is the figure being judged.

use serde::{Deserialize, Serialize};

/// Percentiles of one set of latencies, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// Summarises microsecond samples (sorts them in place).
pub fn summarize(samples: &mut [u32]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        // Nearest-rank: the smallest sample with at least q of the samples at or below it.
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        f64::from(samples[rank - 1]) / 1000.0
    };
    Summary {
        count: samples.len() as u64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: f64::from(samples[samples.len() - 1]) / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u32> = (1..=1000).rev().map(|i| i * 1000).collect();
        let sum = summarize(&mut s);
        assert_eq!(sum.count, 1000);
        assert_eq!(sum.p50_ms, 500.0);
        assert_eq!(sum.p99_ms, 990.0);
        assert_eq!(sum.p999_ms, 999.0);
        assert_eq!(sum.max_ms, 1000.0);
        assert_eq!(summarize(&mut []), Summary::default());
        assert_eq!(summarize(&mut [7000]).p999_ms, 7.0);
    }
}
