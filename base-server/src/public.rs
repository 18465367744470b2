//! Unauthenticated routes: liveness and the public challenge registry.
//!
//! `GET /v1/registry` is answered from memory, as the weights are: the
//! view is serialized once when it changes and each request clones a
//! reference-counted buffer, so a flood of registry requests never
//! reaches the database (docs/decisions.md, "The public registry is
//! served from memory").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base_sdk::model::PublicChallenge;
use base_sdk::registry::Registry;
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

/// How often the view is refreshed when no proxy setting says otherwise.
const DEFAULT_REFRESH: Duration = Duration::from_secs(10);

/// The `GET /v1/registry` answer, pre-serialized.
///
/// Reloaded before answering after an admin write ([`Self::invalidate`]),
/// so a change made through the API shows on the next request; otherwise
/// refreshed in the background once the refresh interval has passed,
/// which catches writes made by another process. A failed reload keeps
/// the previous view: the registry keeps answering while the database
/// blinks. With no view yet and the database down, at most one query per
/// interval is tried; requests in between get 503.
#[derive(Default)]
pub struct RegistryCache {
    body: RwLock<Option<Bytes>>,
    /// Bumped by every admin write.
    requested: AtomicU64,
    /// The `requested` value the last reload attempt started from.
    applied: AtomicU64,
    /// When the last reload was attempted, successful or not.
    attempted_at: Mutex<Option<Instant>>,
    /// One reload at a time.
    reload: tokio::sync::Mutex<()>,
    /// A background refresh is running.
    refreshing: AtomicBool,
}

impl RegistryCache {
    /// Marks the view out of date: the next request reloads it first.
    pub fn invalidate(&self) {
        self.requested.fetch_add(1, Ordering::SeqCst);
    }

    /// The serialized view, if one was ever loaded.
    pub fn current(&self) -> Option<Bytes> {
        match self.body.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn dirty(&self) -> bool {
        self.applied.load(Ordering::SeqCst) < self.requested.load(Ordering::SeqCst)
    }

    fn due(&self, every: Duration) -> bool {
        let at = match self.attempted_at.lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        };
        at.is_none_or(|t| t.elapsed() >= every)
    }

    /// Whether a request must wait for a reload: after an admin write, or
    /// when there is no view and the last attempt is old enough.
    fn must_reload(&self, every: Duration) -> bool {
        self.dirty() || (self.current().is_none() && self.due(every))
    }

    /// The view to answer with, reloading first when [`Self::must_reload`]
    /// and starting a background refresh when one is due.
    pub async fn get(self: &Arc<Self>, registry: &Registry, every: Duration) -> Option<Bytes> {
        if self.must_reload(every) {
            let _one = self.reload.lock().await;
            // Another request may have reloaded while this one waited.
            if self.must_reload(every) {
                self.load(registry).await;
            }
            return self.current();
        }
        if self.due(every) && !self.refreshing.swap(true, Ordering::SeqCst) {
            let me = self.clone();
            let registry = registry.clone();
            tokio::spawn(async move {
                {
                    let _one = me.reload.lock().await;
                    me.load(&registry).await;
                }
                me.refreshing.store(false, Ordering::SeqCst);
            });
        }
        self.current()
    }

    /// One reload attempt; the caller holds `reload`.
    async fn load(&self, registry: &Registry) {
        let wanted = self.requested.load(Ordering::SeqCst);
        match registry.public().await {
            Ok(challenges) => {
                let view = RegistryView {
                    network: "base",
                    api_version: "1.0",
                    master_uid: 0,
                    challenges: challenges.iter().map(|c| c.public_view()).collect(),
                };
                match serde_json::to_vec(&view) {
                    Ok(v) => {
                        let mut slot = match self.body.write() {
                            Ok(g) => g,
                            Err(poisoned) => poisoned.into_inner(),
                        };
                        *slot = Some(Bytes::from(v));
                    }
                    Err(e) => tracing::error!(error = %e, "could not serialize the registry view"),
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the registry view could not be reloaded; serving the previous one"
            ),
        }
        // A failed attempt counts too: the change is picked up by the next
        // periodic refresh rather than retried by every request.
        self.applied.fetch_max(wanted, Ordering::SeqCst);
        let mut at = match self.attempted_at.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *at = Some(Instant::now());
    }
}

/// `GET /v1/registry`: every non-draft challenge, public fields only,
/// from memory.
pub async fn registry(State(state): State<AppState>) -> Result<Response, ApiError> {
    let every = state
        .proxy()
        .map_or(DEFAULT_REFRESH, |p| p.config().directory_refresh);
    match state.registry_view().get(state.registry(), every).await {
        Some(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        None => Err(ApiError::Unavailable("database unavailable".into())),
    }
}
