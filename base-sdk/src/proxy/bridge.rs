//! The signed upload bridge and the status bridge (CONTRACTS.md §3.3).
//!
//! A miner's signed `POST /v1/challenges/{slug}/submissions` is checked
//! from its head first — headers present and well formed, timestamp
//! fresh, declared length within the limit, hotkey in the metagraph, uid
//! not blocked, an upload slot free (globally and for the hotkey) — so a
//! stranger or a flood costs no body bytes; then the body is read under a
//! deadline and hashed as it streams, the signature over that hash is
//! verified and the nonce spent. Only then is the upload forwarded to the
//! challenge's `POST /internal/v1/bridge/submissions` with fresh headers
//! that state what BASE verified. Nothing the miner sent besides the body,
//! its `Content-Type` and `X-Submission-Filename` reaches the challenge.
//! See docs/decisions.md ("The bridge decides from the head first").
//!
//! A nonce is consumed once everything else has passed, before the
//! challenge is called, and stays consumed whatever the challenge does:
//! see docs/decisions.md ("Bridge nonces are spent before forwarding").

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, header};
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use http_body_util::BodyExt as _;
use secrecy::ExposeSecret as _;

use super::directory::Entry;
use super::forward::{Outbound, declared_length};
use super::headers::{X_BASE_CHALLENGE_SLUG, request_headers};
use super::pool::Upload;
use super::signature::{BodyDigest, SignedHeaders, SignedTarget};
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
    ///
    /// Everything the head alone decides is checked before one body byte
    /// is read: the headers' form, the timestamp window, the declared
    /// length, that the hotkey is registered and not blocked, and the
    /// upload caps. Only the signature (it covers the body's hash) and the
    /// nonce (spent only for a verified request) wait for the body, which
    /// is read under a deadline and hashed as it streams.
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
        let declared = declared_length(h);
        if declared.is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let uid = self.registered_uid(&signed.hotkey).await?;
        // Held until the challenge's answer headers are relayed.
        let _slot = self.uploads.admit(&signed.hotkey)?;

        let deadline = self.config.upload_body_timeout;
        let (body, hash) = tokio::time::timeout(
            deadline,
            read_hashed(upload.body, limit, declared.unwrap_or(0)),
        )
        .await
        .map_err(|_| ProxyError::UploadTimeout {
            seconds: deadline.as_secs(),
        })??;
        let target = SignedTarget {
            netuid: self.config.netuid,
            slug: entry.slug.as_str(),
            method: upload.method.as_str(),
            path: &upload.path,
        };
        signed.verify(&target, &hash)?;

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

    /// The uid of a registered, not blocked `hotkey` (401 unknown, 403
    /// blocked, 503 without a readable metagraph).
    async fn registered_uid(&self, hotkey: &str) -> Result<u16, ProxyError> {
        let metagraph = self
            .metagraph
            .as_ref()
            .ok_or_else(|| ProxyError::MetagraphUnavailable("no metagraph configured".into()))?;
        let snapshot = metagraph.snapshot().await.map_err(|e| {
            tracing::error!(error = %e, "bridge cannot read the metagraph");
            ProxyError::MetagraphUnavailable(e.to_string())
        })?;
        let uid = *snapshot.uids.get(hotkey).ok_or(ProxyError::UnknownHotkey)?;
        if self.config.blocked_uids.contains(&uid) {
            return Err(ProxyError::BlockedUid(uid));
        }
        Ok(uid)
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

/// Largest buffer reserved up front from a declared length: a client
/// may declare the limit and send nothing, so memory follows the bytes
/// that actually arrive beyond this.
const PREALLOCATE_MAX: u64 = 1 << 20;

/// Reads a body and its SHA-256 in one pass, refusing it with 413 as soon
/// as it passes `limit` bytes (whatever its framing declared).
async fn read_hashed(
    mut body: Body,
    limit: u64,
    declared: u64,
) -> Result<(Bytes, String), ProxyError> {
    let reserve = usize::try_from(declared.min(limit).min(PREALLOCATE_MAX)).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(reserve);
    let mut digest = BodyDigest::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|_| ProxyError::BadRequest("the request body could not be read".into()))?;
        let Ok(data) = frame.into_data() else {
            // Trailers carry no body bytes.
            continue;
        };
        let total = u64::try_from(buf.len() + data.len()).unwrap_or(u64::MAX);
        if total > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        digest.update(&data);
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), digest.finish_hex()))
}

/// The bridge's concurrency caps: uploads in progress in all and per
/// hotkey. A slot is taken once the head passed its checks and given back
/// when the [`UploadSlot`] drops, whatever happened in between.
#[derive(Debug)]
pub struct UploadGate {
    total_cap: usize,
    per_hotkey_cap: usize,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_hotkey: HashMap<String, usize>,
}

impl UploadGate {
    /// A gate admitting `total` uploads at once, `per_hotkey` of them
    /// from one hotkey (0 for either refuses every upload).
    pub fn new(total: usize, per_hotkey: usize) -> Self {
        Self {
            total_cap: total,
            per_hotkey_cap: per_hotkey,
            state: Mutex::default(),
        }
    }

    /// A slot for an upload by `hotkey`, or why not: 429 when that hotkey
    /// is at its cap (checked first: one busy miner learns it is the one),
    /// 503 when the bridge is.
    pub fn admit(&self, hotkey: &str) -> Result<UploadSlot<'_>, ProxyError> {
        let mut state = self.lock();
        let mine = state.per_hotkey.get(hotkey).copied().unwrap_or(0);
        if mine >= self.per_hotkey_cap {
            return Err(ProxyError::HotkeyBusy {
                limit: self.per_hotkey_cap,
            });
        }
        if state.total >= self.total_cap {
            return Err(ProxyError::UploadsBusy {
                limit: self.total_cap,
            });
        }
        state.total += 1;
        *state.per_hotkey.entry(hotkey.to_string()).or_insert(0) += 1;
        Ok(UploadSlot {
            gate: self,
            hotkey: hotkey.to_string(),
        })
    }

    /// Uploads in progress, in all.
    pub fn in_progress(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The counters stay consistent under a panic elsewhere: every
        // change is one step.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// One admitted upload; dropping it frees the slot.
#[derive(Debug)]
pub struct UploadSlot<'a> {
    gate: &'a UploadGate,
    hotkey: String,
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.per_hotkey.get_mut(&self.hotkey) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Forget idle hotkeys so the map holds only live uploads.
                state.per_hotkey.remove(&self.hotkey);
            }
        }
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

    use proptest::prelude::*;

    #[test]
    fn upload_gate_caps_per_hotkey_then_in_all() {
        let gate = UploadGate::new(2, 1);
        let a = gate.admit("a").unwrap();
        assert!(matches!(
            gate.admit("a"),
            Err(ProxyError::HotkeyBusy { limit: 1 })
        ));
        let b = gate.admit("b").unwrap();
        assert!(matches!(
            gate.admit("c"),
            Err(ProxyError::UploadsBusy { limit: 2 })
        ));
        drop(a);
        let a2 = gate.admit("a").unwrap();
        drop((a2, b));
        assert_eq!(gate.in_progress(), 0);
        assert!(gate.lock().per_hotkey.is_empty());
    }

    proptest! {
        /// Whatever the order of admissions and releases, the caps hold
        /// and every slot comes back.
        #[test]
        fn upload_gate_never_exceeds_its_caps(
            total in 0usize..5,
            per in 0usize..3,
            ops in proptest::collection::vec((any::<bool>(), 0u8..4), 0..64),
        ) {
            let gate = UploadGate::new(total, per);
            let mut held: Vec<(u8, UploadSlot<'_>)> = Vec::new();
            for (admit, who) in ops {
                if admit {
                    if let Ok(slot) = gate.admit(&who.to_string()) {
                        held.push((who, slot));
                    }
                } else if let Some(i) = held.iter().position(|(w, _)| *w == who) {
                    held.swap_remove(i);
                }
                prop_assert!(gate.in_progress() <= total);
                prop_assert_eq!(gate.in_progress(), held.len());
                for w in 0u8..4 {
                    prop_assert!(held.iter().filter(|(x, _)| *x == w).count() <= per);
                }
            }
            held.clear();
            prop_assert_eq!(gate.in_progress(), 0);
        }
    }

    #[test]
    fn submission_ids() {
        assert!(check_submission_id("abc-123_X.y~").is_ok());
        for bad in ["", ".", "..", "a/b", "a%2fb", "a b", &"x".repeat(129)] {
            assert!(check_submission_id(bad).is_err(), "{bad:?}");
        }
    }
}
