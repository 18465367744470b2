//! `GET /v1/weights/latest`, served from memory.
//!
//! The snapshot is serialized (and signed, when the master has its weights
//! key) once per epoch into shared bytes; a request only clones a
//! reference-counted buffer, so the endpoint costs the same whatever the
//! vector's size and never touches the database. The signature covers
//! exactly those bytes (`base_sdk::weights::signing`).

use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base_sdk::model::WeightsSnapshot;
use base_sdk::weights::signing::{KEY_HEADER, SIGNATURE_HEADER, WeightsKey};

use crate::state::AppState;

/// One published snapshot: its body and, when signed, the headers.
#[derive(Clone)]
struct Published {
    body: Bytes,
    signature: Option<(HeaderValue, HeaderValue)>,
}

/// The latest published snapshot, pre-serialized and pre-signed.
#[derive(Default)]
pub struct WeightsCache {
    body: RwLock<Option<Published>>,
    key: RwLock<Option<Arc<WeightsKey>>>,
}

impl WeightsCache {
    /// Signs every snapshot published from now on with `key`.
    pub fn set_key(&self, key: Arc<WeightsKey>) {
        let mut slot = match self.key.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(key);
    }

    /// Replaces the published snapshot.
    pub fn publish(&self, snapshot: &WeightsSnapshot) {
        let body = match serde_json::to_vec(snapshot) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "could not serialize the weights snapshot");
                return;
            }
        };
        let key = match self.key.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let signature = key.and_then(|k| {
            let sig = HeaderValue::from_str(&k.sign(&body)).ok()?;
            let public = HeaderValue::from_str(&k.public().to_string()).ok()?;
            Some((sig, public))
        });
        let mut slot = match self.body.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Some(Published {
            body: Bytes::from(body),
            signature,
        });
    }

    /// The published bytes, if any epoch completed.
    pub fn get(&self) -> Option<Bytes> {
        self.published().map(|p| p.body)
    }

    fn published(&self) -> Option<Published> {
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
    match state.weights().published() {
        Some(p) => {
            let mut resp = ([(header::CONTENT_TYPE, "application/json")], p.body).into_response();
            if let Some((sig, public)) = p.signature {
                resp.headers_mut().insert(SIGNATURE_HEADER, sig);
                resp.headers_mut().insert(KEY_HEADER, public);
            }
            resp
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "detail": "no weights computed yet: the first epoch has not completed"
            })),
        )
            .into_response(),
    }
}
