//! HTTP behaviour tests against a local axum server.
