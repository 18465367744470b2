//! A minimal challenge stand-in for the proxy benchmark (`benches/proxy.sh`):
//! answers every request with a short fixed body, as a fast challenge
//! route would, so the benchmark measures the proxy rather than the upstream.
//!
//! ```text
//! cargo run --release --example echo_upstream -- 127.0.0.1:18990
//! ```

use anyhow::Context;
use axum::Router;
use axum::serve::ListenerExt as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18990".to_string());
    let app = Router::new().fallback(|| async { "hello from the challenge\n" });
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?
        // As a real server would (and nginx does): no Nagle delay.
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    axum::serve(listener, app).await?;
    Ok(())
}
