//! Streaming a request to a challenge and its answer back, over the
//! proxy's own keep-alive connections ([`super::pool`]).
//!
//! Neither body is buffered: the request body is counted as it streams
//! (over the limit, the upstream request is aborted and the miner gets
//! 413 — the challenge never sees the body complete), and the response
//! body is relayed frame by frame, so Server-Sent Events reach the miner
//! as the challenge produces them. The challenge's concurrency permit is
//! held until the response body ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, header};
use tokio::sync::OwnedSemaphorePermit;

use super::directory::Entry;
use super::pool::{Relay, Upload};
use super::{Proxy, ProxyError, headers};

/// A request on its way to a challenge.
#[derive(Debug)]
pub struct Outbound {
    /// Method, unchanged.
    pub method: Method,
    /// Path on the challenge, already checked and normalized.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers to send (already filtered; no framing headers: the client
    /// writes them from `body`).
    pub headers: HeaderMap,
    /// The miner's body, streamed.
    pub body: Body,
    /// Whether the inbound request declared a body (`content-length` or
    /// `transfer-encoding`); without one, none is sent.
    pub has_body: bool,
}

/// The declared `content-length`, if any and well-formed.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a request declares a body.
pub fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || declared_length(headers).is_some_and(|n| n > 0)
}

impl Proxy {
    /// One of the challenge's concurrency permits, or 503.
    pub(crate) fn permit(&self, entry: &Entry) -> Result<OwnedSemaphorePermit, ProxyError> {
        entry
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::Busy {
                slug: entry.slug.as_str().to_string(),
                limit: self.config.max_concurrent_per_challenge,
            })
    }

    /// Forwards `out` to `entry` and relays the answer. A challenge's own
    /// non-2xx answer is relayed unchanged; only transport failures
    /// become 502 (or 504 on timeout).
    pub async fn forward(
        &self,
        entry: &Arc<Entry>,
        out: Outbound,
    ) -> Result<Response<Body>, ProxyError> {
        let limit = self.config.max_body_bytes;
        // The miner's `content-length` is not among the headers sent (the
        // client frames the body itself); the body's size hint carries it.
        if http_body::Body::size_hint(&out.body).lower() > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let permit = self.permit(entry)?;
        let uri = entry.uri(&out.path, out.query.as_deref())?;
        // The flag is only needed (and only allocated) when there is a
        // body that could go over the limit.
        let (body, over) = if out.has_body {
            let over = Arc::new(AtomicBool::new(false));
            (Upload::limited(out.body, limit, over.clone()), Some(over))
        } else {
            (Upload::empty(), None)
        };
        let mut request = axum::http::Request::new(body);
        *request.method_mut() = out.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = out.headers;
        self.relay(entry, permit, request, over.as_deref()).await
    }

    /// Sends `request` and relays the answer, holding `permit` until the
    /// response body ends. `over` tells a body-limit abort from a
    /// transport failure.
    pub(crate) async fn relay(
        &self,
        entry: &Arc<Entry>,
        permit: OwnedSemaphorePermit,
        request: axum::http::Request<Upload>,
        over: Option<&AtomicBool>,
    ) -> Result<Response<Body>, ProxyError> {
        let limit = self.config.max_body_bytes;
        let send = entry.upstream.send(request);
        let (resp, conn) = match tokio::time::timeout(self.config.upstream_timeout, send).await {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(Err(_)) if over.is_some_and(|o| o.load(Ordering::Acquire)) => {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            Ok(Err(e)) => {
                tracing::warn!(slug = %entry.slug.as_str(), error = %e, "challenge unreachable");
                return Err(ProxyError::Unavailable);
            }
            Ok(Ok(answer)) => answer,
        };
        let (mut parts, body) = resp.into_parts();
        headers::strip_response_headers(&mut parts.headers);
        parts.extensions = Default::default();
        Ok(Response::from_parts(
            parts,
            Body::new(Relay::new(body, conn, permit)),
        ))
    }
}
