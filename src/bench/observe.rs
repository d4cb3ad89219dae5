//! Reads the ordered topic while the benchmark runs: counts what each phase published, measures
//! end-to-end latency from the `benchSentAtUs` every state carries, and checks on the fly that
//! no conversation got a duplicate or a state out of order (a fast bridge that breaks its
//! promises must not post a good figure).

use super::load::{now_us, phase_of};
use crate::publish::record::headers;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one phase published.
#[derive(Debug, Default)]
pub struct PhaseSeen {
    /// State records.
    pub states: u64,
    /// Of which back-filled.
    pub backfilled: u64,
    /// Gap records.
    pub gaps: u64,
    /// Completion records.
    pub completions: u64,
    /// States at or below one already seen for the conversation.
    pub duplicates: u64,
    /// States that skipped a sequence without a gap record.
    pub order_violations: u64,
    /// End-to-end latency of live states, microseconds.
    pub live_latency_us: Vec<u32>,
    /// Of the end-to-end latency of live states, the part up to the ordered record's timestamp
    /// (the sequencer's producer stamps it when it hands the record over): the webhook, the raw
    /// hop and the sequencer, microseconds at millisecond resolution. The rest is the ordered hop.
    pub live_to_output_us: Vec<u32>,
    /// End-to-end latency of back-filled states (the time a gap took to heal), microseconds.
    pub healed_latency_us: Vec<u32>,
    /// When the last state record was read.
    pub last_state_at: Option<Instant>,
    last_seq: HashMap<String, u64>,
}

/// A background reader of the ordered topic.
pub struct Observer {
    seen: Arc<Mutex<HashMap<u32, PhaseSeen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn header<'a, M: Message>(m: &'a M, name: &str) -> Option<&'a str> {
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn sent_at(value: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"benchSentAtUs\":";
    let at = value.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = value[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some(digits)
}

impl Observer {
    /// Starts reading `topic` from the beginning, with `fetch_wait_ms` as its
    /// `fetch.wait.max.ms`.
    pub fn start(
        kafka: &crate::kafka::KafkaConfig,
        topic: &str,
        fetch_wait_ms: u32,
    ) -> Result<Observer, String> {
        let mut c = kafka.client_config().map_err(|e| e.to_string())?;
        c.set(
            "group.id",
            format!("callbridge-bench-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Measured latency must be the bridge's, not this reader's long poll.
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string());
        let consumer: BaseConsumer = c.create().map_err(|e| format!("bench reader: {e}"))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| format!("bench reader: {e}"))?;
        let seen: Arc<Mutex<HashMap<u32, PhaseSeen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                let Some(phase) = phase_of(key) else { continue };
                let kind = header(&m, headers::KIND).unwrap_or("");
                let seq: u64 = header(&m, headers::SEQUENCE)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mut all = seen2.lock().unwrap_or_else(|p| p.into_inner());
                let p = all.entry(phase).or_default();
                match kind {
                    "state" => {
                        p.states += 1;
                        p.last_state_at = Some(Instant::now());
                        let last = p.last_seq.entry(key.to_string()).or_insert(0);
                        if seq <= *last {
                            p.duplicates += 1;
                        } else {
                            if seq != *last + 1 {
                                p.order_violations += 1;
                            }
                            *last = seq;
                        }
                        let backfilled = header(&m, headers::ORIGIN) == Some("backfill");
                        if backfilled {
                            p.backfilled += 1;
                        }
                        let as_us = |us: u64| us.min(u64::from(u32::MAX)) as u32;
                        if let Some(sent) = m.payload().and_then(sent_at) {
                            let latency = as_us(now_us().saturating_sub(sent));
                            if backfilled {
                                p.healed_latency_us.push(latency);
                            } else {
                                p.live_latency_us.push(latency);
                                if let Some(created) = m.timestamp().to_millis() {
                                    let created_us = created.max(0) as u64 * 1000;
                                    p.live_to_output_us
                                        .push(as_us(created_us.saturating_sub(sent)));
                                }
                            }
                        }
                    }
                    "gap" => {
                        p.gaps += 1;
                        let end: u64 = header(&m, headers::SEQUENCE_END)
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(seq);
                        let last = p.last_seq.entry(key.to_string()).or_insert(0);
                        *last = (*last).max(end);
                    }
                    "completion" => p.completions += 1,
                    _ => {}
                }
            }
        });
        Ok(Observer {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` on a phase's figures.
    pub fn with<T>(&self, phase: u32, f: impl FnOnce(&mut PhaseSeen) -> T) -> T {
        let mut all = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(phase).or_default())
    }

    /// Waits until `phase` has published `states` state records (or gaps standing for them), or
    /// `timeout`; returns whether it got there.
    pub async fn wait_for(&self, phase: u32, states: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.with(phase, |p| p.states >= states);
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_send_time_anywhere_in_the_value() {
        assert_eq!(
            sent_at(br#"{"state":{"a":1,"benchSentAtUs":1700000000123456,"b":2}}"#),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(sent_at(br#"{"state":{}}"#), None);
    }
}
