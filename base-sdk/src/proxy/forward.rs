//! Streaming a request to a challenge and its answer back, over the
//! proxy's own keep-alive connections ([`super::pool`]).
//!
//! Neither body is buffered: the request body is counted as it streams
//! (over the limit, the upstream request is aborted and the miner gets
//! 413 — the challenge never sees the body complete), and the response
//! body is relayed frame by frame, so Server-Sent Events reach the miner
//! as the challenge produces them. The challenge's concurrency permit is
//! held until the response body ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, header};
use tokio::sync::OwnedSemaphorePermit;

use super::directory::Entry;
use super::limit::RequestSlot;
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

/// Whether an answer is an event stream (`text/event-stream`, any case,
/// parameters allowed): such an answer counts as a stream, not a request.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream_type(v.as_bytes()))
}

/// Whether a `Content-Type` value names `text/event-stream`.
pub fn is_event_stream_type(value: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    let value = value.trim_ascii_start();
    value.len() >= SSE.len()
        && value[..SSE.len()].eq_ignore_ascii_case(SSE)
        && value[SSE.len()..]
            .first()
            .is_none_or(|b| matches!(b, b';' | b' ' | b'\t'))
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
        self.forward_for(None, entry, out).await
    }

    /// [`Proxy::forward`] for `client`, counted against its caps (429
    /// when over) until the answer's body ends; an event-stream answer
    /// counts as a stream from its head on.
    pub async fn forward_for(
        &self,
        client: Option<IpAddr>,
        entry: &Arc<Entry>,
        out: Outbound,
    ) -> Result<Response<Body>, ProxyError> {
        let limit = self.config.max_body_bytes;
        // The miner's `content-length` is not among the headers sent (the
        // client frames the body itself); the body's size hint carries it.
        if http_body::Body::size_hint(&out.body).lower() > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let slot = self.client_slot(client, entry)?;
        let permit = self.permit(entry)?;
        let uri = entry.uri(&out.path, out.query.as_deref())?;
        // The flag is only needed (and only allocated) when there is a
        // body that could go over the limit.
        let (body, over, slow) = if out.has_body {
            let over = Arc::new(AtomicBool::new(false));
            let slow = Arc::new(AtomicBool::new(false));
            let body = Upload::limited(out.body, limit, over.clone())
                .min_rate(self.config.body_min_rate, slow.clone());
            (body, Some(over), Some(slow))
        } else {
            (Upload::empty(), None, None)
        };
        let mut request = axum::http::Request::new(body);
        *request.method_mut() = out.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = out.headers;
        self.relay_held(
            entry,
            (permit, slot),
            request,
            over.as_deref(),
            slow.as_deref(),
        )
        .await
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
        self.relay_held(entry, (permit, None), request, over, None)
            .await
    }

    /// [`Proxy::relay`], also holding the client's slot; `slow` tells a
    /// request body that fell under the minimum rate (408).
    async fn relay_held(
        &self,
        entry: &Arc<Entry>,
        (permit, mut slot): (OwnedSemaphorePermit, Option<RequestSlot>),
        request: axum::http::Request<Upload>,
        over: Option<&AtomicBool>,
        slow: Option<&AtomicBool>,
    ) -> Result<Response<Body>, ProxyError> {
        let limit = self.config.max_body_bytes;
        let send = entry.upstream.send(request);
        let sent = tokio::time::timeout(self.config.upstream_timeout, send).await;
        // Whatever the challenge made of a body that broke off, the miner
        // hears why it broke off.
        if slow.is_some_and(|s| s.load(Ordering::Acquire)) {
            return Err(ProxyError::BodyTooSlow {
                bytes_per_second: self.config.body_min_rate.bytes_per_second,
            });
        }
        let (resp, conn) = match sent {
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
        if let Some(slot) = &mut slot
            && is_event_stream(&parts.headers)
        {
            slot.into_stream()?;
        }
        headers::strip_response_headers(&mut parts.headers);
        parts.extensions = Default::default();
        Ok(Response::from_parts(
            parts,
            Body::new(
                Relay::new(body, conn, permit)
                    .holding(slot)
                    .idle_timeout(self.config.relay_idle_timeout),
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_told_by_their_content_type() {
        for yes in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            " text/event-stream",
        ] {
            assert!(is_event_stream_type(yes.as_bytes()), "{yes}");
        }
        for no in ["text/event-streams", "application/json", "text/", ""] {
            assert!(!is_event_stream_type(no.as_bytes()), "{no}");
        }
    }
}
