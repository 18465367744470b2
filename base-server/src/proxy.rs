//! The public routes to challenges: the `/challenges/{slug}/…` passthrough
//! and the signed upload and status bridges (CONTRACTS.md §3.2, §3.3).
//!
//! Handlers only take the request apart and call `base_sdk::proxy`; the
//! rules and the forwarding live there.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{Extensions, HeaderMap, Response};
use base_sdk::proxy::forward::{Outbound, declares_body};
use base_sdk::proxy::headers::{check_connection, request_headers};
use base_sdk::proxy::{Entry, Proxy, ProxyError, bridge, path};

use crate::error::ApiError;
use crate::state::AppState;

/// The route prefix of the passthrough.
const PREFIX: &str = "/challenges/";

/// The client's address, when the server was started with connection
/// info (`serve` does; `oneshot` tests do not, and are not limited): the
/// TCP peer, or the client a trusted reverse proxy names in `headers`.
fn client_ip(proxy: &Proxy, extensions: &Extensions, headers: &HeaderMap) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| proxy.client_address(addr.ip(), headers))
}

fn proxy(state: &AppState) -> Result<&Arc<Proxy>, ApiError> {
    state
        .proxy()
        .ok_or_else(|| ApiError::Unavailable("proxy unavailable".into()))
}

async fn challenge(
    state: &AppState,
    proxy: &Arc<Proxy>,
    slug: &str,
) -> Result<Arc<Entry>, ApiError> {
    Ok(proxy
        .challenge(slug, state.registry(), state.orchestrator())
        .await?)
}

/// Any method on `/challenges/{slug}` and `/challenges/{slug}/{path}`:
/// path rules first (403 before the slug is looked up), then the slug
/// (404), then the header rules and the streaming forward.
pub async fn passthrough(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    forward(&state, peer, req).await
}

/// Whether the router sends `path` to [`passthrough`]: `/challenges/`
/// followed by a non-empty slug. The listener threads call [`forward`]
/// directly for these (no route matching, no boxed handler future).
pub fn is_passthrough(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
}

/// [`passthrough`] for a request from `peer` (its TCP peer address).
pub async fn forward(
    state: &AppState,
    peer: Option<IpAddr>,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let proxy = proxy(state)?;
    let (parts, body) = req.into_parts();
    let client = peer.map(|peer| proxy.client_address(peer, &parts.headers));
    proxy.check_rate(client)?;
    // As the fast path: a `Connection` that nominates a framing or
    // identity header is refused, not honoured (docs/proxy.md).
    check_connection(&parts.headers).map_err(ProxyError::from)?;
    // The raw (still percent-encoded) path: the router matched on it, and
    // the rules must see the encoding the miner used.
    let raw = parts.uri.path().strip_prefix(PREFIX).unwrap_or_default();
    let (slug, rest) = raw.split_at(raw.find('/').unwrap_or(raw.len()));
    let forward_path = path::check(rest).map_err(ProxyError::PathNotAllowed)?;
    let entry = challenge(state, proxy, slug).await?;
    let out = Outbound {
        has_body: declares_body(&parts.headers),
        headers: request_headers(&parts.headers, &entry.slug_header),
        method: parts.method,
        path: forward_path.encoded(),
        query: parts.uri.query().map(str::to_string),
        body,
    };
    Ok(proxy.forward_for(client, &entry, out).await?)
}

/// `POST /v1/challenges/{slug}/submissions`: the signed upload bridge.
pub async fn upload(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let proxy = proxy(&state)?;
    let (parts, body) = req.into_parts();
    proxy.check_rate(client_ip(proxy, &parts.extensions, &parts.headers))?;
    let entry = challenge(&state, proxy, &slug).await?;
    let upload = bridge::SignedUpload {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    Ok(proxy
        .upload(&entry, state.registry().store().as_ref(), upload)
        .await?)
}

/// `GET /v1/challenges/{slug}/submissions/{id}`: the status bridge.
pub async fn submission_status(
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
    req: Request,
) -> Result<Response<Body>, ApiError> {
    let proxy = proxy(&state)?;
    proxy.check_rate(client_ip(proxy, req.extensions(), req.headers()))?;
    check_connection(req.headers()).map_err(ProxyError::from)?;
    let entry = challenge(&state, proxy, &slug).await?;
    Ok(proxy.submission_status(&entry, &id, req.headers()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_paths_are_those_the_router_sends_there() {
        for p in [
            "/challenges/echo",
            "/challenges/echo/",
            "/challenges/echo/a/b",
        ] {
            assert!(is_passthrough(p), "{p}");
        }
        for p in [
            "/challenges",
            "/challenges/",
            "/challenges//x",
            "/v1/challenges/echo",
        ] {
            assert!(!is_passthrough(p), "{p}");
        }
    }
}
