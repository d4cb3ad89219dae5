//! `callbridge bench-sink`: a bare HTTP server that answers every POST at once, the HTTP ceiling
//! the bridge's webhook figures are divided by. Same stack as the bridge (axum on tokio), no
//! work per request, so the ratio shows what ingest costs beyond HTTP itself.

use axum::routing::post;
use std::process::ExitCode;

/// Serves on a free loopback port until killed; prints `{"listen":"127.0.0.1:PORT"}` first.
pub async fn run() -> ExitCode {
    let app = axum::Router::new().route(
        "/{*path}",
        post(|_body: axum::body::Bytes| async { "{\"ok\":true}" }),
    );
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-sink: cannot bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(addr) = listener.local_addr() else {
        return ExitCode::FAILURE;
    };
    println!("{}", serde_json::json!({ "listen": addr.to_string() }));
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-sink: {e}");
            ExitCode::FAILURE
        }
    }
}
