//! Keep-alive connections to challenges, driven by the request that uses
//! them: no connection task, no channel between tasks, no wake-up across
//! threads.
//!
//! A pooled client (hyper-util's, reqwest's) runs each upstream connection
//! as its own task and hands requests and responses to it over channels:
//! every proxied request then crosses tasks — and, on a work-stealing
//! runtime, threads — several times. Here the request's own task polls
//! the hyper connection: while waiting for the response head
//! ([`Conn::exchange`]) and then from the response body ([`Relay`]), which
//! puts the connection back into the pool when the body ends cleanly.
//! A connection whose exchange did not finish (the miner went away, an
//! error, `Connection: close`, a request body still streaming) is closed.
//!
//! The pool is per thread (a `thread_local`): the master's listener
//! threads each run a single-threaded runtime (base-server's `serve`), so
//! a connection is only ever used by the runtime whose IO driver it is
//! registered with. On a multi-threaded runtime each worker thread keeps
//! its own idle connections, which is just as correct. Idle connections
//! are kept for [`IDLE_TIMEOUT`], at most [`MAX_IDLE`] per challenge and
//! thread; before reuse, a connection is polled once, so one the challenge
//! has closed meanwhile is noticed and dropped, and a request that could
//! not be sent on a pooled connection is sent again on a new one.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, Uri, header};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use super::limit::{MinRate, RateBudget, RequestSlot};

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per challenge and thread.
pub const MAX_IDLE: usize = 512;
/// How long opening a connection may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a challenge could not be reached (the proxy answers 502).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The base URL cannot be proxied to (not `http://host[:port]`).
    #[error("unusable challenge URL {0}: only http://host[:port][/prefix] is proxied")]
    Url(String),
    /// Connecting failed or timed out.
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (reset, malformed answer, body error).
    #[error("HTTP exchange: {0}")]
    Http(#[from] hyper::Error),
}

/// Where a challenge is reached, parsed once per directory load and kept
/// across reloads while the URL stays the same (so its pooled
/// connections stay in use).
#[derive(Debug)]
pub struct Upstream {
    /// Identifies this upstream's connections in the per-thread pools.
    id: u64,
    /// Host name or address to connect to.
    host: String,
    /// TCP port.
    port: u16,
    /// The `Host` header: the URL's authority.
    authority: HeaderValue,
    /// The base URL's path without a trailing `/` (usually empty).
    prefix: String,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Upstream {
    /// Parses an `http://host[:port][/prefix]` base URL.
    pub fn new(base: &reqwest::Url) -> Result<Self, UpstreamError> {
        let unusable = || UpstreamError::Url(base.as_str().to_string());
        if base.scheme() != "http" || base.query().is_some() {
            return Err(unusable());
        }
        let host_str = base.host_str().ok_or_else(unusable)?;
        // `Url` keeps the brackets of an IPv6 literal; connecting needs
        // the bare address, the `Host` header the brackets.
        let host = host_str
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = base.port_or_known_default().ok_or_else(unusable)?;
        let authority = match base.port() {
            Some(port) => format!("{host_str}:{port}"),
            None => host_str.to_string(),
        };
        Ok(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            host,
            port,
            authority: HeaderValue::from_str(&authority).map_err(|_| unusable())?,
            prefix: base.path().trim_end_matches('/').to_string(),
        })
    }

    /// Identifies this upstream's connections in the per-thread pools.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Host name or address to connect to.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// TCP port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header: the URL's authority.
    pub(crate) fn authority(&self) -> &HeaderValue {
        &self.authority
    }

    /// The base URL's path without a trailing `/`.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The origin-form request target for `path` (encoded, starting with
    /// `/`) and the raw `query`, under the base URL's own path.
    pub fn target(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let mut target = String::with_capacity(
            self.prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        target.push_str(&self.prefix);
        target.push_str(path);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Uri::from_maybe_shared(Bytes::from(target)).ok()
    }

    /// Sends `request` (its target from [`Upstream::target`]) on a pooled
    /// connection or a new one, and returns the response head with the
    /// connection that must be driven for its body.
    pub(crate) async fn send(
        &self,
        mut request: Request<Upload>,
    ) -> Result<(Response<Incoming>, Option<Box<Conn>>), UpstreamError> {
        request
            .headers_mut()
            .insert(header::HOST, self.authority.clone());
        if let Some(conn) = poll_fn(|cx| Poll::Ready(self.checkout(cx))).await {
            match conn.exchange(request).await {
                Ok(answer) => return Ok(answer),
                // The challenge closed the idle connection as it was
                // reused; the request never left, so it may go again.
                Err((Some(unsent), _)) => request = unsent,
                Err((None, e)) => return Err(e.into()),
            }
        }
        let conn = self.connect().await?;
        conn.exchange(request).await.map_err(|(_, e)| e.into())
    }

    /// A new connection.
    async fn connect(&self) -> Result<Box<Conn>, UpstreamError> {
        let connect_error = |source| UpstreamError::Connect {
            authority: format!("{}:{}", self.host, self.port),
            source,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
        .map_err(connect_error)?;
        // Response heads and SSE frames go out as soon as written.
        tcp.set_nodelay(true).map_err(connect_error)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // Boxed once here: the connection then moves (into the request's
        // future, the response body, the pool) as a pointer, not as the
        // several hundred bytes of hyper's connection state.
        Ok(Box::new(Conn {
            sender,
            conn,
            upstream: self.id,
        }))
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<Box<Conn>> {
        loop {
            let mut conn = IDLE
                .try_with(|pool| pool.borrow_mut().pop(self.id))
                .ok()
                .flatten()?;
            // Reads an EOF or error the challenge sent while the
            // connection was idle, and registers this task for its events.
            if Pin::new(&mut conn.conn).poll(cx).is_ready() || !conn.sender.is_ready() {
                continue;
            }
            return Some(conn);
        }
    }
}

/// One thread's idle connections, by upstream: the most recently used
/// is reused first, each is kept for at most [`IDLE_TIMEOUT`], and at
/// most [`MAX_IDLE`] per upstream. Shared by the general path's hyper
/// connections and the fast path's raw ones ([`super::http1`]); each keeps
/// its own per-thread instance, since a connection belongs to the IO
/// driver of the runtime that opened it.
pub(crate) struct IdlePool<T> {
    /// A handful of challenges: a list beats a map.
    slots: Vec<Slot<T>>,
}

/// A challenge's idle connections, oldest first.
struct Slot<T> {
    upstream: u64,
    conns: VecDeque<(T, Instant)>,
}

impl<T> IdlePool<T> {
    /// An empty pool (usable in a `thread_local!` const initializer).
    pub(crate) const fn new() -> Self {
        Self { slots: Vec::new() }
    }

    /// The most recently pooled connection to `upstream`, unless it has
    /// been idle too long (then every older one has too, and all go).
    pub(crate) fn pop(&mut self, upstream: u64) -> Option<T> {
        let slot = self.slots.iter_mut().find(|s| s.upstream == upstream)?;
        let (conn, since) = slot.conns.pop_back()?;
        if since.elapsed() >= IDLE_TIMEOUT {
            slot.conns.clear();
            return None;
        }
        Some(conn)
    }

    /// Pools `conn` for `upstream`, first dropping connections idle too
    /// long (whichever upstream) and, at [`MAX_IDLE`], the oldest.
    pub(crate) fn push(&mut self, upstream: u64, conn: T) {
        let now = Instant::now();
        for slot in &mut self.slots {
            while slot
                .conns
                .front()
                .is_some_and(|(_, since)| now.duration_since(*since) >= IDLE_TIMEOUT)
            {
                slot.conns.pop_front();
            }
        }
        self.slots
            .retain(|s| !s.conns.is_empty() || s.upstream == upstream);
        let index = match self.slots.iter().position(|s| s.upstream == upstream) {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    upstream,
                    conns: VecDeque::new(),
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        if slot.conns.len() >= MAX_IDLE {
            slot.conns.pop_front();
        }
        slot.conns.push_back((conn, now));
    }
}

thread_local! {
    /// This thread's idle connections of the general path.
    static IDLE: RefCell<IdlePool<Box<Conn>>> = const { RefCell::new(IdlePool::new()) };
}

/// An open HTTP/1 connection to a challenge: the request half and the
/// connection future that does its IO.
pub(crate) struct Conn {
    sender: SendRequest<Upload>,
    conn: Connection<TokioIo<TcpStream>, Upload>,
    upstream: u64,
}

impl Conn {
    /// Sends `request` and drives the connection until the response head
    /// arrives. On failure, the request comes back when it was not sent.
    #[allow(clippy::type_complexity)]
    async fn exchange(
        mut self: Box<Self>,
        request: Request<Upload>,
    ) -> Result<(Response<Incoming>, Option<Box<Conn>>), (Option<Request<Upload>>, hyper::Error)>
    {
        let mut open = true;
        let answer = {
            let mut sent = pin!(self.sender.try_send_request(request));
            let conn = &mut self.conn;
            poll_fn(|cx| {
                if open && Pin::new(&mut *conn).poll(cx).is_ready() {
                    // Closed or failed: the response future now resolves
                    // (with the answer read before, or the error).
                    open = false;
                }
                sent.as_mut().poll(cx)
            })
            .await
        };
        match answer {
            Ok(response) => Ok((response, open.then_some(self))),
            Err(mut e) => Err((e.take_message(), e.into_error())),
        }
    }

    /// Back into this thread's pool if the connection is idle and usable.
    fn release(mut self: Box<Self>) {
        // One more poll lets the connection finish the exchange and ask
        // for the next request; nothing waits on it, hence the no-op waker.
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.conn).poll(&mut cx).is_ready() || !self.sender.is_ready() {
            return;
        }
        let upstream = self.upstream;
        let _ = IDLE.try_with(|pool| pool.borrow_mut().push(upstream, self));
    }
}

/// The request body as sent upstream: the miner's, counted as it streams;
/// past `limit` it fails and raises `over`, which aborts the upstream
/// request (the challenge never sees the body complete) and makes the
/// answer 413.
pub struct Upload {
    inner: Body,
    seen: u64,
    limit: u64,
    over: Option<Arc<AtomicBool>>,
    /// The minimum rate the miner must send at ([`Upload::min_rate`]).
    pace: Option<Pace>,
}

/// A request body's minimum rate: the budget, when the body started
/// keeping the upstream request waiting, the timer for that wait, and the
/// flag raised when the miner fell behind (the answer is then 408).
struct Pace {
    budget: RateBudget,
    waiting_since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    slow: Arc<AtomicBool>,
}

/// Waits on `since` + `allowed` with `timer` (made on first use, then
/// moved): ready when that moment has passed.
pub(crate) fn overdue(
    timer: &mut Option<Pin<Box<Sleep>>>,
    since: tokio::time::Instant,
    allowed: Duration,
    cx: &mut Context<'_>,
) -> bool {
    let deadline = since + allowed;
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

impl Upload {
    /// `body`, failing past `limit` bytes and then setting `over`.
    pub fn limited(body: Body, limit: u64, over: Arc<AtomicBool>) -> Self {
        Self {
            inner: body,
            seen: 0,
            limit,
            over: Some(over),
            pace: None,
        }
    }

    /// Also fails once the miner sends more slowly than `rate` after its
    /// grace period (only time the upstream request waits on the miner
    /// counts), then setting `slow`.
    pub fn min_rate(mut self, rate: MinRate, slow: Arc<AtomicBool>) -> Self {
        if !rate.is_off() {
            self.pace = Some(Pace {
                budget: RateBudget::new(rate),
                waiting_since: None,
                timer: None,
                slow,
            });
        }
        self
    }

    /// `body` as it is (already checked, e.g. the bridge's).
    pub fn plain(body: Body) -> Self {
        Self {
            inner: body,
            seen: 0,
            limit: u64::MAX,
            over: None,
            pace: None,
        }
    }

    /// No body.
    pub fn empty() -> Self {
        Self::plain(Body::empty())
    }
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(pace) = &mut this.pace {
                    let since = *pace
                        .waiting_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    let allowed = pace.budget.allowance(0).unwrap_or(Duration::MAX);
                    if overdue(&mut pace.timer, since, allowed, cx) {
                        pace.slow.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(axum::Error::new(
                            "request body arrived too slowly",
                        ))));
                    }
                }
                return Poll::Pending;
            }
        };
        if let Some(pace) = &mut this.pace {
            let waited = pace
                .waiting_since
                .take()
                .map_or(Duration::ZERO, |t| t.elapsed());
            let n = match &frame {
                Some(Ok(frame)) => frame.data_ref().map_or(0, Bytes::len),
                _ => 0,
            };
            if !pace.budget.spend(n, waited) {
                pace.slow.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(axum::Error::new(
                    "request body arrived too slowly",
                ))));
            }
        }
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.seen = self.seen.saturating_add(data.len() as u64);
            if self.seen > self.limit {
                if let Some(over) = &self.over {
                    over.store(true, Ordering::Release);
                }
                return Poll::Ready(Some(Err(axum::Error::new("request body over the limit"))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The challenge's response body on its way to the miner. It drives the
/// upstream connection (the body's bytes arrive through it), holds the
/// challenge's concurrency permit until it is finished or dropped, and
/// returns the connection to the pool when the body ended cleanly.
pub(crate) struct Relay {
    body: Incoming,
    conn: Option<Box<Conn>>,
    ended: bool,
    _permit: OwnedSemaphorePermit,
    /// The client's count of requests (or streams), given back with the permit.
    _slot: Option<RequestSlot>,
    /// How long the challenge may go without sending a byte of the body.
    idle: Option<Duration>,
    /// When the body started waiting on the challenge, and its timer.
    waiting_since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Relay {
    /// `body`, driving `conn` (if still open), holding `permit`.
    pub(crate) fn new(
        body: Incoming,
        conn: Option<Box<Conn>>,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            body,
            conn,
            ended: false,
            _permit: permit,
            _slot: None,
            idle: None,
            waiting_since: None,
            timer: None,
        }
    }

    /// Also holds the client's `slot` until the body ends.
    pub(crate) fn holding(mut self, slot: Option<RequestSlot>) -> Self {
        self._slot = slot;
        self
    }

    /// Fails the body when the challenge sends nothing for `idle`.
    pub(crate) fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }
}

/// Why a relayed body broke off.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The challenge's connection failed.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The challenge sent nothing for the relay idle timeout.
    #[error("the challenge sent nothing for {0:?}")]
    Idle(Duration),
}

impl http_body::Body for Relay {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn
            && Pin::new(&mut conn.conn).poll(cx).is_ready()
        {
            // Closed (`Connection: close`, an error): what was read is
            // still delivered below, but the connection is not reused.
            this.conn = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(_)) => this.waiting_since = None,
            Poll::Pending => {
                if let Some(idle) = this.idle {
                    // The server polls the body only when it can take
                    // more: a wait here is a wait on the challenge.
                    let since = *this
                        .waiting_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    if overdue(&mut this.timer, since, idle, cx) {
                        this.conn = None;
                        return Poll::Ready(Some(Err(RelayError::Idle(idle))));
                    }
                }
            }
        }
        frame.map(|f| f.map(|r| r.map_err(RelayError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The server stops polling a body once it reports its end, so
        // "ended" is also a body that says it is complete.
        if (self.ended || http_body::Body::is_end_stream(&self.body))
            && let Some(conn) = self.conn.take()
        {
            conn.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Result<Upstream, UpstreamError> {
        Upstream::new(&reqwest::Url::parse(url).unwrap())
    }

    #[test]
    fn upstreams_keep_prefix_authority_and_raw_query() {
        let u = upstream("http://challenge-echo:8000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("challenge-echo", 8000));
        assert_eq!(u.authority, "challenge-echo:8000");
        assert_eq!(
            u.target("/a%20b/c", Some("x=1&y=%2F")).unwrap(),
            "/a%20b/c?x=1&y=%2F"
        );
        let u = upstream("http://10.0.0.5/prefix/").unwrap();
        assert_eq!((u.port, u.authority.to_str().unwrap()), (80, "10.0.0.5"));
        assert_eq!(u.target("/tasks/", None).unwrap(), "/prefix/tasks/");
        let u = upstream("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        assert_eq!(u.authority, "[::1]:9000");
        assert!(upstream("http://a:1").unwrap().id != upstream("http://a:1").unwrap().id);
    }

    #[test]
    fn idle_pools_reuse_the_newest_per_upstream_and_keep_at_most_max_idle() {
        let mut pool = IdlePool::new();
        for n in 0..MAX_IDLE + 2 {
            pool.push(1, n);
        }
        pool.push(2, 1000);
        assert_eq!(pool.pop(2), Some(1000));
        assert_eq!(pool.pop(2), None);
        let mut got = Vec::new();
        while let Some(n) = pool.pop(1) {
            got.push(n);
        }
        // Newest first; the two oldest went when the cap was reached.
        assert_eq!(got, (2..MAX_IDLE + 2).rev().collect::<Vec<_>>());
        assert_eq!(pool.pop(3), None);
    }

    #[test]
    fn only_plain_http_is_proxied() {
        assert!(matches!(
            upstream("https://x:443"),
            Err(UpstreamError::Url(_))
        ));
        assert!(matches!(
            upstream("http://x/?q=1"),
            Err(UpstreamError::Url(_))
        ));
    }
}
