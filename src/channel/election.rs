//! Which replica owns the GoTo channel: the member of a Kafka consumer group that holds
//! partition 0 of a one-partition topic.
//!
//! Every replica ingests (webhook POSTs reach whichever pod the Service picks) and runs the
//! sequencer for its share of the raw topic, but only one may create the channel, keep its
//! subscriptions and, in WebSocket mode, hold the socket: two owners would race to create
//! channels and double GoTo's deliveries. Kafka's group protocol already is a lease with a
//! heartbeat, so the election needs nothing beyond the broker callbridge needs anyway:
//! the group `{kafka.consumer_group}.channel-owner` subscribes to `kafka.topics.channel_owner`,
//! and whoever is assigned its partition 0 is the owner. The assignor is `cooperative-sticky`, so
//! a replica joining or leaving does not move ownership away from a healthy owner (with `range`
//! every restart would reshuffle it and cost a handover).
//!
//! Handover time: a replica that stops cleanly leaves the group and the next owner is assigned
//! within a rebalance (about a second); one that dies is evicted after
//! `channel.owner_session_timeout`. Overlap is possible but harmless for the output: an owner
//! that lost the group without noticing (paused process) writes notifications to the raw topic
//! like any ingest, and the sequencer drops what is doubled. It stops as soon as librdkafka
//! reports the revocation; a lost assignment makes it [`Role::OwnerInDoubt`] instead, which in
//! WebSocket mode keeps the socket it holds until the group answers (see `duty`).

use crate::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// This replica's part in the channel election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The group has not answered yet.
    Joining,
    /// This replica owns the channel.
    Owner,
    /// Another replica owns the channel; this one ingests and sequences only.
    Standby,
    /// This replica owned the channel and lost its group session without handing it over
    /// (Kafka unreachable for `owner_session_timeout`, or the process was paused): another
    /// replica may own the channel by now, or nobody. It keeps the WebSocket it holds and starts
    /// nothing new until the group answers again (then it is `Owner` or `Standby`).
    OwnerInDoubt,
}

/// The partition whose holder owns the channel.
const OWNER_PARTITION: i32 = 0;

struct ElectionContext {
    topic: String,
    role: watch::Sender<Role>,
    owned: AtomicBool,
}

impl ElectionContext {
    fn holds_owner_partition(&self, tpl: &rdkafka::TopicPartitionList) -> bool {
        tpl.elements()
            .iter()
            .any(|e| e.topic() == self.topic && e.partition() == OWNER_PARTITION)
    }

    fn set(&self, role: Role) {
        set_role(&self.role, role);
    }
}

/// Publishes `role` (with its log line and metrics) if it is a change.
fn set_role(tx: &watch::Sender<Role>, role: Role) {
    let before = *tx.borrow();
    if before != role {
        tracing::info!(from = ?before, to = ?role, "channel ownership changed");
        metrics::gauge!("callbridge_channel_owner").set(if role == Role::Owner {
            1.0
        } else {
            0.0
        });
        if role == Role::Owner || before == Role::Owner {
            metrics::counter!("callbridge_channel_owner_changes_total").increment(1);
        }
        let _ = tx.send(role);
    }
}

impl ClientContext for ElectionContext {}

impl ConsumerContext for ElectionContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            // Give the channel up before the partition goes to someone else; a partition lost
            // with the session may have gone nowhere yet (see `Role::OwnerInDoubt`).
            Rebalance::Revoke(tpl) if self.holds_owner_partition(tpl) => {
                self.owned.store(false, Ordering::SeqCst);
                self.set(if consumer.assignment_lost() {
                    Role::OwnerInDoubt
                } else {
                    Role::Standby
                });
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "channel election rebalance error");
            }
            _ => {}
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Cooperative assignment: `tpl` lists only what was added.
            if self.holds_owner_partition(tpl) {
                self.owned.store(true, Ordering::SeqCst);
            }
            self.set(if self.owned.load(Ordering::SeqCst) {
                Role::Owner
            } else {
                Role::Standby
            });
        }
    }
}

/// A running election: a consumer polled on its own thread so its heartbeats never wait on
/// anything else.
pub struct ChannelElection {
    role: watch::Receiver<Role>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ChannelElection {
    /// Joins the election group.
    pub fn start(
        kafka: &KafkaConfig,
        member: &str,
        session_timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let topic = kafka.topics.channel_owner.clone();
        let (tx, rx) = watch::channel(Role::Joining);
        // The consumer's context holds `tx` and goes with the consumer: this one says
        // `Standby` once the consumer has left.
        let role_after_close = tx.clone();
        let mut config = kafka
            .client_config()
            .map_err(|e| KafkaError::ClientCreation(format!("kafka.sasl.password_file: {e}")))?;
        let session_ms = session_timeout.as_millis().max(1000);
        config
            .set(
                "group.id",
                format!("{}.channel-owner", kafka.consumer_group),
            )
            .set("client.id", format!("callbridge-election/{member}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 3).to_string());
        let consumer: BaseConsumer<ElectionContext> =
            config.create_with_context(ElectionContext {
                topic: topic.clone(),
                role: tx,
                owned: AtomicBool::new(false),
            })?;
        consumer.subscribe(&[&topic])?;
        metrics::gauge!("callbridge_channel_owner").set(0.0);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let thread = std::thread::Builder::new()
            .name("channel-election".into())
            .spawn(move || {
                while !stop_thread.load(Ordering::SeqCst) {
                    // The topic holds no records; polling serves heartbeats and rebalances.
                    if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
                        tracing::warn!(error = %e, "channel election consumer error");
                    }
                }
                // Leave the group now, so the next owner is chosen without waiting for the
                // session to expire. Dropping the consumer closes it: librdkafka revokes the
                // assignment through `pre_rebalance` (the channel is given up first), sends
                // LeaveGroup and waits for the answer. Not `unsubscribe()` first: with the
                // cooperative assignor that starts an incremental unassign, and a close that
                // overtakes it ends the group without the LeaveGroup
                // (`rd_kafka_cgrp_incr_unassign_done` when terminating). The broker then kept
                // this member until its session expired, and the next replica stayed off the
                // channel that long (`tests/e2e_election.rs`, about one hand-over in 25).
                let leaving = std::time::Instant::now();
                drop(consumer);
                tracing::debug!(
                    took = ?leaving.elapsed(),
                    "left the channel election group"
                );
                // A close revokes an assignment it still holds, but not one already lost.
                set_role(&role_after_close, Role::Standby);
            })
            .map_err(|e| KafkaError::ClientCreation(format!("election thread: {e}")))?;
        Ok(Self {
            role: rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The current role, updated on every rebalance.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Leaves the group: blocks until the consumer is closed, which is after the broker answered
    /// its LeaveGroup (librdkafka's close waits for that answer; an unreachable coordinator ends
    /// the wait, bounded by librdkafka's timeouts, about `owner_session_timeout`).
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ChannelElection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
