//! Placeholder: being written.
pub mod traffic;
