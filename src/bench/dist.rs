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

/// The summary a Prometheus exporter renders for `name` (a histogram in seconds, exported as
/// a summary) on the series whose labels include `labels`: its `_count` and its 0.5, 0.99,
/// 0.999 and 1 quantiles, in milliseconds. 0 where a line is missing. The exporter's quantiles
/// are estimates over its rolling window, not the exact nearest-rank of [`summarize`].
pub fn from_prometheus(text: &str, name: &str, labels: &[(&str, &str)]) -> Summary {
    let mut summary = Summary::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (series_name, rendered) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or(rest)),
            None => (series, ""),
        };
        let pairs: Vec<(&str, &str)> = rendered
            .split(',')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        if !labels.iter().all(|l| pairs.contains(l)) {
            continue;
        }
        if series_name == format!("{name}_count") {
            summary.count = value as u64;
            continue;
        }
        if series_name != name {
            continue;
        }
        let quantile = pairs
            .iter()
            .find(|(k, _)| *k == "quantile")
            .and_then(|(_, q)| q.parse::<f64>().ok());
        let slot = match quantile {
            Some(0.5) => &mut summary.p50_ms,
            Some(0.99) => &mut summary.p99_ms,
            Some(0.999) => &mut summary.p999_ms,
            Some(1.0) => &mut summary.max_ms,
            _ => continue,
        };
        *slot = value * 1000.0;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_read_from_the_exporters_text() {
        let text = "\
# TYPE x_seconds summary
x_seconds{transport=\"webhook\",quantile=\"0\"} 0.001
x_seconds{transport=\"webhook\",quantile=\"0.5\"} 0.002
x_seconds{transport=\"webhook\",quantile=\"0.99\"} 0.0075
x_seconds{transport=\"webhook\",quantile=\"0.999\"} 0.009
x_seconds{transport=\"webhook\",quantile=\"1\"} 0.012
x_seconds_sum{transport=\"webhook\"} 21.5
x_seconds_count{transport=\"webhook\"} 10000
x_seconds{transport=\"websocket\",quantile=\"0.99\"} 0.5
x_seconds_count{transport=\"websocket\"} 3
x_seconds_total_count 99
";
        let s = from_prometheus(text, "x_seconds", &[("transport", "webhook")]);
        assert_eq!(s.count, 10_000);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.p99_ms, 7.5);
        assert_eq!(s.p999_ms, 9.0);
        assert_eq!(s.max_ms, 12.0);
        let ws = from_prometheus(text, "x_seconds", &[("transport", "websocket")]);
        assert_eq!((ws.count, ws.p99_ms, ws.p50_ms), (3, 500.0, 0.0));
        assert_eq!(from_prometheus(text, "y_seconds", &[]), Summary::default());
    }

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
