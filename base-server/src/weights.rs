//! `GET /v1/weights/latest`, served from memory.
//!
//! The snapshot is serialized once per epoch into shared bytes; a request
//! only clones a reference-counted buffer, so the endpoint costs the same
//! whatever the vector's size and never touches the database.

use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base_sdk::model::WeightsSnapshot;

use crate::state::AppState;

/// The latest published snapshot, pre-serialized.
#[derive(Default)]
pub struct WeightsCache {
    body: RwLock<Option<Bytes>>,
}

impl WeightsCache {
    /// Replaces the published snapshot.
    pub fn publish(&self, snapshot: &WeightsSnapshot) {
        match serde_json::to_vec(snapshot) {
            Ok(v) => {
                let mut slot = match self.body.write() {
                    Ok(g) => g,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *slot = Some(Bytes::from(v));
            }
            Err(e) => tracing::error!(error = %e, "could not serialize the weights snapshot"),
        }
    }

    /// The published bytes, if any epoch completed.
    pub fn get(&self) -> Option<Bytes> {
        match self.body.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A publisher for [`base_sdk::weights::EpochRunner::run`].
    pub fn publisher(self: &Arc<Self>) -> Arc<dyn Fn(&WeightsSnapshot) + Send + Sync> {
        let me = self.clone();
        Arc::new(move |s| me.publish(s))
    }
}

/// `GET /v1/weights/latest`.
pub async fn latest(State(state): State<AppState>) -> Response {
    match state.weights().get() {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "detail": "no weights computed yet: the first epoch has not completed"
            })),
        )
            .into_response(),
    }
}
