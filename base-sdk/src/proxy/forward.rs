//! Streaming a request to a challenge and its answer back, through one
//! pooled HTTP client.
//!
//! Neither body is buffered: the request body is counted as it streams
//! (over the limit, the upstream request is aborted and the miner gets
//! 413 — the challenge never sees the body complete), and the response
//! body is relayed frame by frame, so Server-Sent Events reach the miner
//! as the challenge produces them. The challenge's concurrency permit is
//! held until the response body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, header};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::directory::Entry;
use super::{Proxy, ProxyError, headers};

/// The one upstream client: keep-alive pool, no redirects followed (a
/// challenge's redirect is the miner's to follow), no system proxy (the
/// challenge network is internal), no decompression (bodies are relayed
/// byte for byte, so `content-length`/`content-encoding` stay true).
pub(crate) fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(5))
        .build()
}

/// A request on its way to a challenge.
#[derive(Debug)]
pub struct Outbound {
    /// Method, unchanged.
    pub method: Method,
    /// Path on the challenge, already checked and normalized.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers to send (already filtered).
    pub headers: HeaderMap,
    /// The miner's body, streamed.
    pub body: Body,
    /// Whether the inbound request declared a body (`content-length` or
    /// `transfer-encoding`); without one, none is sent.
    pub has_body: bool,
}

/// A response body that holds the challenge's concurrency permit until it
/// is finished or dropped.
struct Guarded<B> {
    inner: B,
    _permit: OwnedSemaphorePermit,
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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

/// Streams `body` into a reqwest body that fails (and raises `over`) past
/// `limit` bytes.
fn limited(body: Body, limit: u64, over: Arc<AtomicBool>) -> reqwest::Body {
    let mut seen: u64 = 0;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            over.store(true, Ordering::Release);
            return Err(std::io::Error::other("request body over the limit"));
        }
        Ok::<Bytes, std::io::Error>(chunk)
    });
    reqwest::Body::wrap_stream(stream)
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
        if declared_length(&out.headers).is_some_and(|n| n > limit) {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let permit = self.permit(entry)?;
        let mut url = String::with_capacity(
            entry.base_url.len() + out.path.len() + out.query.as_ref().map_or(0, |q| q.len() + 1),
        );
        url.push_str(&entry.base_url);
        url.push_str(&out.path);
        if let Some(q) = &out.query {
            url.push('?');
            url.push_str(q);
        }
        let over = Arc::new(AtomicBool::new(false));
        let body = if out.has_body {
            limited(out.body, limit, over.clone())
        } else {
            reqwest::Body::from(Bytes::new())
        };
        let request = self
            .client
            .request(out.method, url)
            .headers(out.headers)
            .body(body);
        self.relay(entry, permit, request, &over).await
    }

    /// Sends `request` and relays the answer, holding `permit` until the
    /// response body ends. `over` tells a body-limit abort from a
    /// transport failure.
    pub(crate) async fn relay(
        &self,
        entry: &Arc<Entry>,
        permit: OwnedSemaphorePermit,
        request: reqwest::RequestBuilder,
        over: &AtomicBool,
    ) -> Result<Response<Body>, ProxyError> {
        let limit = self.config.max_body_bytes;
        let resp = match tokio::time::timeout(self.config.upstream_timeout, request.send()).await {
            Err(_) => return Err(ProxyError::Timeout),
            Ok(Err(_)) if over.load(Ordering::Acquire) => {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            Ok(Err(e)) => {
                tracing::warn!(slug = %entry.slug.as_str(), error = %e, "challenge unreachable");
                return Err(if e.is_timeout() {
                    ProxyError::Timeout
                } else {
                    ProxyError::Unavailable
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let resp: Response<reqwest::Body> = resp.into();
        let (mut parts, body) = resp.into_parts();
        headers::strip_response_headers(&mut parts.headers);
        parts.extensions = Default::default();
        let body = Body::new(Guarded {
            inner: body,
            _permit: permit,
        });
        Ok(Response::from_parts(parts, body))
    }
}
