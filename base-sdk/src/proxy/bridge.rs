//! The signed upload bridge and the status bridge (CONTRACTS.md §3.3).
//!
//! A miner's signed `POST /v1/challenges/{slug}/submissions` is checked in
//! the contract's order — headers present, timestamp fresh, body within
//! the limit, signature valid, hotkey in the metagraph, uid not blocked,
//! nonce unused — and only then forwarded to the challenge's
//! `POST /internal/v1/bridge/submissions` with fresh headers that state
//! what BASE verified. Nothing the miner sent besides the body, its
//! `Content-Type` and `X-Submission-Filename` reaches the challenge.
//!
//! A nonce is consumed once everything else has passed, before the
//! challenge is called, and stays consumed whatever the challenge does:
//! see docs/decisions.md ("Bridge nonces are spent before forwarding").

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, header};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::BodyExt as _;
use secrecy::ExposeSecret as _;

use super::directory::Entry;
use super::forward::{Outbound, declared_length};
use super::headers::{X_BASE_CHALLENGE_SLUG, request_headers};
use super::pool::Upload;
use super::signature::{SignedHeaders, SignedTarget, body_sha256_hex};
use super::{Proxy, ProxyError};
use crate::model::NonceKey;
use crate::store::Store;

/// Where a challenge receives bridged submissions.
pub const BRIDGE_PATH: &str = "/internal/v1/bridge/submissions";

/// `X-Base-Verified-Hotkey`.
pub const X_BASE_VERIFIED_HOTKEY: HeaderName = HeaderName::from_static("x-base-verified-hotkey");
/// `X-Base-Verified-Uid`.
pub const X_BASE_VERIFIED_UID: HeaderName = HeaderName::from_static("x-base-verified-uid");
/// `X-Base-Verified-Nonce`.
pub const X_BASE_VERIFIED_NONCE: HeaderName = HeaderName::from_static("x-base-verified-nonce");
/// `X-Base-Request-Hash`: SHA-256 hex of the body.
pub const X_BASE_REQUEST_HASH: HeaderName = HeaderName::from_static("x-base-request-hash");
/// `X-Submission-Filename`, relayed when the miner sends it.
pub const X_SUBMISSION_FILENAME: HeaderName = HeaderName::from_static("x-submission-filename");

/// A signed upload as received.
#[derive(Debug)]
pub struct SignedUpload {
    /// The request method (part of the signed message).
    pub method: Method,
    /// The request path as sent (part of the signed message).
    pub path: String,
    /// The miner's headers.
    pub headers: HeaderMap,
    /// The body, read here under the limit.
    pub body: Body,
}

/// Who BASE verified a submission came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMiner {
    /// ss58 hotkey.
    pub hotkey: String,
    /// Its uid.
    pub uid: u16,
    /// The nonce it used.
    pub nonce: String,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A submission id from a status URL: 1–128 of `[A-Za-z0-9._~-]`, not a
/// dot segment, so it cannot leave `/v1/submissions/`.
pub fn check_submission_id(id: &str) -> Result<&str, ProxyError> {
    let ok = (1..=128).contains(&id.len())
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    if ok {
        Ok(id)
    } else {
        Err(ProxyError::BadRequest(
            "invalid submission id: 1-128 of A-Z a-z 0-9 . _ ~ -".into(),
        ))
    }
}

impl Proxy {
    /// Checks a signed upload for `entry` and forwards it to the
    /// challenge's bridge endpoint; the challenge's answer is relayed.
    pub async fn upload(
        &self,
        entry: &Arc<Entry>,
        store: &dyn Store,
        upload: SignedUpload,
    ) -> Result<Response<Body>, ProxyError> {
        let h = &upload.headers;
        let signed = SignedHeaders::parse(
            header_str(h, "x-hotkey"),
            header_str(h, "x-signature"),
            header_str(h, "x-nonce"),
            header_str(h, "x-timestamp"),
        )?;
        let now = Utc::now();
        signed.check_fresh(now.timestamp(), self.config.signature_window_seconds)?;

        let limit = self.config.max_body_bytes;
        if declared_length(h).is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let body = read_limited(upload.body, limit).await?;
        let hash = body_sha256_hex(&body);
        let target = SignedTarget {
            netuid: self.config.netuid,
            slug: entry.slug.as_str(),
            method: upload.method.as_str(),
            path: &upload.path,
        };
        signed.verify(&target, &hash)?;

        let metagraph = self
            .metagraph
            .as_ref()
            .ok_or_else(|| ProxyError::MetagraphUnavailable("no metagraph configured".into()))?;
        let snapshot = metagraph.snapshot().await.map_err(|e| {
            tracing::error!(error = %e, "bridge cannot read the metagraph");
            ProxyError::MetagraphUnavailable(e.to_string())
        })?;
        let uid = *snapshot
            .uids
            .get(&signed.hotkey)
            .ok_or(ProxyError::UnknownHotkey)?;
        if self.config.blocked_uids.contains(&uid) {
            return Err(ProxyError::BlockedUid(uid));
        }

        let key = NonceKey {
            netuid: self.config.netuid,
            slug: entry.slug.clone(),
            hotkey: signed.hotkey.clone(),
            nonce: signed.nonce.clone(),
        };
        let retention = chrono::Duration::from_std(self.config.nonce_retention)
            .unwrap_or_else(|_| chrono::Duration::hours(24));
        let fresh = store
            .reserve_nonce(&key, now, now + retention)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "bridge cannot reserve a nonce");
                ProxyError::Store(e)
            })?;
        if !fresh {
            return Err(ProxyError::NonceUsed);
        }

        let miner = VerifiedMiner {
            hotkey: signed.hotkey,
            uid,
            nonce: signed.nonce,
        };
        let Some(token) = &entry.token else {
            tracing::error!(slug = %entry.slug, "bridge: the challenge token cannot be revealed (BASE_SECRET_KEY?)");
            return Err(ProxyError::Unavailable);
        };
        let headers = bridge_headers(h, entry, &miner, &hash, token.expose_secret())?;
        let permit = self.permit(entry)?;
        let mut request = axum::http::Request::new(Upload::plain(Body::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = entry.uri(BRIDGE_PATH, None)?;
        *request.headers_mut() = headers;
        tracing::info!(slug = %entry.slug, hotkey = %miner.hotkey, uid = miner.uid, "bridged submission");
        self.relay(entry, permit, request, None).await
    }

    /// `GET /v1/challenges/{slug}/submissions/{id}` → the challenge's
    /// `GET /v1/submissions/{id}`, with the passthrough header rules.
    pub async fn submission_status(
        &self,
        entry: &Arc<Entry>,
        id: &str,
        inbound: &HeaderMap,
    ) -> Result<Response<Body>, ProxyError> {
        let id = check_submission_id(id)?;
        self.forward(
            entry,
            Outbound {
                method: Method::GET,
                path: format!("/v1/submissions/{id}"),
                query: None,
                headers: request_headers(inbound, &entry.slug_header),
                body: Body::empty(),
                has_body: false,
            },
        )
        .await
    }
}

/// The headers of a bridged request: only what BASE states, plus the two
/// descriptive headers of the miner's upload.
fn bridge_headers(
    inbound: &HeaderMap,
    entry: &Entry,
    miner: &VerifiedMiner,
    hash: &str,
    token: &str,
) -> Result<HeaderMap, ProxyError> {
    let value = |s: &str| {
        HeaderValue::from_str(s).map_err(|_| ProxyError::BadRequest("header value".into()))
    };
    let mut out = HeaderMap::with_capacity(8);
    let mut auth = value(&format!("Bearer {token}"))?;
    auth.set_sensitive(true);
    out.insert(header::AUTHORIZATION, auth);
    out.insert(X_BASE_CHALLENGE_SLUG, entry.slug_header.clone());
    out.insert(X_BASE_VERIFIED_HOTKEY, value(&miner.hotkey)?);
    out.insert(X_BASE_VERIFIED_UID, HeaderValue::from(miner.uid));
    out.insert(X_BASE_VERIFIED_NONCE, value(&miner.nonce)?);
    out.insert(X_BASE_REQUEST_HASH, value(hash)?);
    for name in [header::CONTENT_TYPE, X_SUBMISSION_FILENAME] {
        if let Some(v) = inbound.get(&name) {
            out.insert(name, v.clone());
        }
    }
    Ok(out)
}

/// Reads a body, refusing it with 413 as soon as it passes `limit` bytes.
async fn read_limited(body: Body, limit: u64) -> Result<Bytes, ProxyError> {
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, cap).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(_) => Err(ProxyError::BadRequest(
            "the request body could not be read".into(),
        )),
    }
}

/// Deletes expired nonces every `every` until `shutdown`, off the request
/// path (the master runs this beside the API).
pub async fn purge_nonces_every(
    store: Arc<dyn Store>,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => match store.purge_nonces(Utc::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "expired miner nonces purged"),
                Err(e) => tracing::warn!(error = %e, "purging expired miner nonces failed"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submission_ids() {
        assert!(check_submission_id("abc-123_X.y~").is_ok());
        for bad in ["", ".", "..", "a/b", "a%2fb", "a b", &"x".repeat(129)] {
            assert!(check_submission_id(bad).is_err(), "{bad:?}");
        }
    }
}
