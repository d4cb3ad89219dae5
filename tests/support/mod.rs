//! Shared test harness: real brokers and helpers, no fakes.
#![allow(dead_code)]
pub mod cluster;
pub mod mock_brokers;
pub mod tansu;

/// Pre-bound webhook and admin listeners for a bridge started in the test process, and the
/// webhook's address.
pub async fn listeners() -> (callbridge::app::Listeners, std::net::SocketAddr) {
    let webhook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = webhook.local_addr().unwrap();
    (
        callbridge::app::Listeners {
            webhook: Some(webhook),
            admin: Some(admin),
        },
        addr,
    )
}
