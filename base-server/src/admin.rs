//! Token-gated admin routes: the challenge registry's write side.
//!
//! Every route here runs behind [`require_admin`], which fails closed,
//! rate limits and locks out guessing clients, and hands the handler the
//! actor name that goes into the audit log.

use std::net::SocketAddr;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base_sdk::model::{AuditEntry, Challenge, ChallengeStatus, Slug, TokenKind};
use base_sdk::registry::{ChallengePatch, IssuedTokens, NewChallenge};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::json::ApiJson;
use crate::state::AppState;

/// Who is acting, as recorded in the audit log.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// Middleware: `X-Admin-Token` or `Authorization: Bearer`, compared in
/// constant time; 401 for everything else, including no token configured.
///
/// Before the credential is looked at, the client must be within the
/// admin rate and not locked out by earlier failures (429 with
/// `Retry-After`, answered at once: nothing here sleeps). A failure is
/// logged with the client's address and the reason, never the
/// credential.
pub async fn require_admin(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    // Behind a trusted reverse proxy (BASE_TRUSTED_PROXIES) the client is
    // the one it names, as for the passthrough: one resolution rule.
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| match state.proxy() {
            Some(proxy) => proxy.client_address(addr.ip(), req.headers()),
            None => addr.ip(),
        });
    let guard = state.admin_guard();
    guard
        .admit(client)
        .map_err(|refusal| ApiError::TooManyRequests {
            detail: refusal.to_string(),
            retry_after: refusal.retry_after_seconds(),
        })?;
    let headers = req.headers();
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match state
        .admin()
        .check(get("x-admin-token"), get("authorization"))
    {
        Ok(actor) => {
            guard.succeeded(client);
            req.extensions_mut().insert(Actor(actor));
            Ok(next.run(req).await)
        }
        Err(e) => {
            let record = guard.failed(client);
            // The router nests these routes: the full path is the original one.
            let path = req
                .extensions()
                .get::<OriginalUri>()
                .map_or_else(|| req.uri().path(), |OriginalUri(uri)| uri.path());
            tracing::warn!(
                client = %client.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
                method = %req.method(),
                path = %path,
                reason = e.reason(),
                failures = record.failures,
                locked_out_seconds = record.locked_for.map_or(0, |d| d.as_secs()),
                "admin authentication failed"
            );
            Err(ApiError::Unauthorized)
        }
    }
}

/// `POST /v1/admin/challenges` response: the only time tokens are shown.
#[derive(Serialize)]
pub struct Created {
    challenge: Challenge,
    #[serde(flatten)]
    tokens: IssuedTokens,
}

/// `POST /v1/admin/challenges`.
pub async fn create(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    ApiJson(req): ApiJson<NewChallenge>,
) -> Result<impl IntoResponse, ApiError> {
    let (challenge, tokens) = state.registry().create(req, &actor).await?;
    state.registry_changed();
    Ok((StatusCode::CREATED, Json(Created { challenge, tokens })))
}

/// `GET /v1/admin/challenges`.
pub async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let all = state.registry().list().await?;
    Ok(Json(serde_json::json!({ "challenges": all })))
}

/// A token as the admin view shows it: hint only, never the hash.
#[derive(Serialize)]
struct TokenView {
    kind: TokenKind,
    hint: String,
    created_at: DateTime<Utc>,
}

/// The admin view of one challenge.
#[derive(Serialize)]
pub struct ChallengeView {
    #[serde(flatten)]
    challenge: Challenge,
    tokens: Vec<TokenView>,
}

/// `GET /v1/admin/challenges/{slug}`.
pub async fn get(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<ChallengeView>, ApiError> {
    let challenge = state.registry().get(&slug).await?;
    let tokens = state
        .registry()
        .store()
        .tokens(&challenge.slug)
        .await?
        .into_iter()
        .map(|t| TokenView {
            kind: t.kind,
            hint: t.hint,
            created_at: t.created_at,
        })
        .collect();
    Ok(Json(ChallengeView { challenge, tokens }))
}

/// `PATCH /v1/admin/challenges/{slug}`.
pub async fn patch(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(slug): Path<String>,
    ApiJson(patch): ApiJson<ChallengePatch>,
) -> Result<Json<Challenge>, ApiError> {
    let c = state.registry().update(&slug, patch, &actor).await?;
    state.registry_changed();
    Ok(Json(c))
}

async fn set_status(
    state: &AppState,
    actor: &str,
    slug: &str,
    status: ChallengeStatus,
) -> Result<Json<Challenge>, ApiError> {
    let c = state.registry().set_status(slug, status, actor).await?;
    state.registry_changed();
    Ok(Json(c))
}

/// `POST /v1/admin/challenges/{slug}/activate`.
pub async fn activate(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(slug): Path<String>,
) -> Result<Json<Challenge>, ApiError> {
    set_status(&state, &actor, &slug, ChallengeStatus::Active).await
}

/// `POST /v1/admin/challenges/{slug}/deactivate`.
pub async fn deactivate(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(slug): Path<String>,
) -> Result<Json<Challenge>, ApiError> {
    set_status(&state, &actor, &slug, ChallengeStatus::Inactive).await
}

/// Query of `DELETE /v1/admin/challenges/{slug}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Also delete the challenge's data volume (default: keep it).
    #[serde(default)]
    purge_volumes: bool,
}

/// `DELETE /v1/admin/challenges/{slug}[?purge_volumes=true]`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(slug): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let c = state
        .registry()
        .delete(&slug, q.purge_volumes, &actor)
        .await?;
    // The record is gone; stop the service now rather than at the next
    // reconcile, because only here is the purge choice known.
    if let Some(o) = state.orchestrator()
        && let Err(e) = o.remove_challenge(&c.slug, q.purge_volumes).await
    {
        tracing::error!(slug = %c.slug, error = %e, "challenge deleted but its service could not be removed; the reconciler will retry (data kept)");
    }
    state.registry_changed();
    Ok(Json(serde_json::json!({
        "deleted": c.slug,
        "volumes_retained": !q.purge_volumes,
    })))
}

/// Body of the rotation route; empty means both tokens.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// `challenge`, `docker_broker` or `all` (default).
    #[serde(default)]
    kind: Option<String>,
}

/// `POST /v1/admin/challenges/{slug}/tokens/rotate`: new cleartext tokens,
/// shown once; the old ones stop working at once.
pub async fn rotate(
    State(state): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<IssuedTokens>, ApiError> {
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        let is_json = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::Unprocessable(
                "expected a JSON body with Content-Type: application/json".into(),
            ));
        }
        serde_json::from_slice(&body).map_err(|e| ApiError::Unprocessable(e.to_string()))?
    };
    let kinds: Vec<TokenKind> = match req.kind.as_deref() {
        None | Some("all") => TokenKind::ALL.to_vec(),
        Some(k) => vec![k.parse().map_err(ApiError::Unprocessable)?],
    };
    let tokens = state.registry().rotate(&slug, &kinds, &actor).await?;
    state.registry_changed();
    Ok(Json(tokens))
}

/// `GET /v1/admin/challenges/{slug}/status`: what the orchestrator says
/// now (asked live, not remembered), beside the record's desired status.
pub async fn status(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let c = state.registry().get(&slug).await?;
    let Some(o) = state.orchestrator() else {
        return Err(ApiError::Unavailable(
            "no orchestrator configured (BASE_ORCHESTRATOR=none): challenges run elsewhere".into(),
        ));
    };
    let runtime = o
        .challenge_status(&c.slug)
        .await
        .map_err(|e| ApiError::Unavailable(format!("orchestrator: {e}")))?;
    // Running is not ready: probe /health and /version (CONTRACTS §2).
    let readiness = match runtime.state {
        base_sdk::orchestrator::ServiceState::Running => {
            let url = runtime.endpoint.as_deref().unwrap_or(&c.internal_base_url);
            Some(
                base_sdk::orchestrator::readiness::probe_readiness(
                    url,
                    c.slug.as_str(),
                    &c.version,
                    &c.required_capabilities,
                )
                .await,
            )
        }
        _ => None,
    };
    Ok(Json(serde_json::json!({
        "slug": c.slug,
        "desired_status": c.status,
        "orchestrator": o.name(),
        "runtime": runtime,
        "readiness": readiness,
    })))
}

/// Query of `GET /v1/admin/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    slug: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/admin/audit[?slug=…&limit=…]`: newest first.
pub async fn audit(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let slug = q
        .slug
        .map(|s| Slug::parse(&s).map_err(|e| ApiError::BadRequest(e.to_string())))
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries: Vec<AuditEntry> = state.registry().store().audit_log(slug, limit).await?;
    Ok(Json(serde_json::json!({ "entries": entries })))
}
