//! Shared test harness: real brokers and helpers, no fakes.
#![allow(dead_code)]
pub mod cluster;
pub mod mock_brokers;
pub mod tansu;
