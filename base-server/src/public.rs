//! Unauthenticated routes: liveness and the public challenge registry.

use axum::Json;
use axum::extract::State;
use base_sdk::model::PublicChallenge;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /health`: the process is up (it does not touch the database, so
/// an orchestrator never restarts the master because PostgreSQL blinked).
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Body of `GET /v1/registry`.
#[derive(Serialize)]
pub struct RegistryView {
    network: &'static str,
    api_version: &'static str,
    master_uid: u16,
    challenges: Vec<PublicChallenge>,
}

/// `GET /v1/registry`: every non-draft challenge, public fields only.
pub async fn registry(State(state): State<AppState>) -> Result<Json<RegistryView>, ApiError> {
    let challenges = state.registry().public().await?;
    Ok(Json(RegistryView {
        network: "base",
        api_version: "1.0",
        master_uid: 0,
        challenges: challenges.iter().map(|c| c.public_view()).collect(),
    }))
}
