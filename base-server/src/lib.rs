//! The BASE control-plane server: routes, state and the serve loop.
//!
//! `main.rs` only parses flags and starts things; everything testable is
//! here, so tests bind `127.0.0.1:0` and call [`serve`] or drive [`app`]
//! with `oneshot`.

pub mod admin;
pub mod broker;
pub mod dev;
pub mod error;
pub mod healthcheck;
pub mod json;
pub mod master;
pub mod proxy;
pub mod public;
pub mod serve;
pub mod state;
pub mod submitter;
pub mod weights;

use std::future::Future;

use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};

pub use error::ApiError;
pub use state::AppState;

/// The master API router.
pub fn app(state: AppState) -> Router {
    let admin = Router::new()
        .route("/challenges", post(admin::create).get(admin::list))
        .route(
            "/challenges/{slug}",
            get(admin::get).patch(admin::patch).delete(admin::delete),
        )
        .route("/challenges/{slug}/activate", post(admin::activate))
        .route("/challenges/{slug}/deactivate", post(admin::deactivate))
        .route("/challenges/{slug}/tokens/rotate", post(admin::rotate))
        .route("/challenges/{slug}/status", get(admin::status))
        .route("/audit", get(admin::audit))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admin::require_admin,
        ));
    Router::new()
        .route("/health", get(public::health))
        .route("/v1/registry", get(public::registry))
        .route("/v1/weights/latest", get(weights::latest))
        // The public proxy (CONTRACTS.md §3.2) and the bridges (§3.3).
        // The admin API's `/challenges/...` routes live under /v1/admin.
        .route("/challenges/{slug}", any(proxy::passthrough))
        .route("/challenges/{slug}/", any(proxy::passthrough))
        .route("/challenges/{slug}/{*path}", any(proxy::passthrough))
        .route("/v1/challenges/{slug}/submissions", post(proxy::upload))
        .route(
            "/v1/challenges/{slug}/submissions/{id}",
            get(proxy::submission_status),
        )
        .nest("/v1/admin", admin)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"detail": "Not Found"})),
    )
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then drains:
/// one listener thread (see [`serve::serve`]). The master binds one
/// socket per core with [`serve::bind`] and calls [`serve_on`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_on(vec![listener.into_std()?], state, shutdown).await
}

/// Serves [`app`] with `axum::serve` on the calling (multi-threaded)
/// runtime — the master's listener before [`serve::serve`], kept for
/// `BASE_LISTEN_THREADS=0` and side-by-side benchmarks.
pub async fn serve_shared(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    // Without TCP_NODELAY a streamed response waits on Nagle and delayed
    // ACKs. Connection info gives the proxy each client's address.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Serves [`app`] on `listeners` (one thread each, see [`serve::serve`])
/// until `shutdown` resolves, then drains.
pub async fn serve_on(
    listeners: Vec<std::net::TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(listeners, state, shutdown).await
}
