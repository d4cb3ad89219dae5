//! callbridge turns GoTo Connect call events into a gap-free, ordered, exactly-once stream of
//! call states in Kafka: one ordered stream per conversation, keyed by `conversationSpaceId`.
//!
//! # Layout
//!
//! Data flows one way: ingest → raw topic → sequencer → ordered topic.
//!
//! - [`app`]: `callbridge run`, wiring every part together and shutting down in order.
//! - [`bench`](mod@bench): `callbridge bench`: the end-to-end benchmark beside its HTTP and Kafka ceilings.
//! - [`channel`]: the GoTo notification channel and subscriptions, kept alive (WebSocket session,
//!   repair loop).
//! - [`config`]: configuration errors that name the key, the value and the fix.
//! - [`demo`]: `callbridge demo`: simulator + in-process Kafka + the real pipeline, verified.
//! - [`kafka`]: Kafka settings, topic checks and producers; the only module that knows librdkafka.
//! - [`secret`]: credentials that print as `***`.
//! - [`goto`]: the GoTo Connect API client (OAuth token manager, notification channels, call
//!   events subscriptions and back-fill, call events report), with retries and rate limits.
//! - [`ingest`]: webhook / WebSocket bodies → raw topic, acknowledged before GoTo gets its 2xx.
//! - [`notification`]: pure parsing of notification bodies (webhook POST or WebSocket frame);
//!   reads only what routing needs and leaves the JSON untouched.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz` on the admin port.
//! - [`publish`]: the ordered topic's records (state, gap, completion) with CloudEvents headers.
//! - [`sequencer`]: the pure per-conversation state machine that drops duplicates, reorders,
//!   asks for back-fill and declares gaps. No I/O.
//! - [`simulator`]: a GoTo Connect you can run locally (`callbridge simulate`): real HTTP and
//!   WebSocket, traffic, faults and ground truth. It never uses the client's types, so the
//!   contract tests catch a mismatch on either side.
//! - [`telemetry`]: logging set-up and the shutdown signal.
//! - [`verify`]: the oracle comparing the ordered topic with the simulator's ground truth.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
// Errors here carry everything GoTo or Kafka said about a failure (endpoint, status, errorCode,
// constraint list) and travel only on cold paths, so their size is not worth boxing away.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod bench;
pub mod channel;
pub mod config;
pub mod demo;
pub mod failpoint;
pub mod goto;
pub mod ingest;
pub mod kafka;
pub mod notification;
pub mod ops;
pub mod publish;
pub mod secret;
pub mod sequencer;
pub mod simulator;
pub mod telemetry;
pub mod verify;
