//! The proxy's fast path: a miner's HTTP/1.1 connection served by reading
//! and writing bytes, with the rules of the general path and none of its
//! per-request objects.
//!
//! The general path (hyper's server, [`super::forward`], hyper's client in
//! [`super::pool`]) turns every proxied request into a header map, a URI,
//! a body channel and back, twice. Here one task per connection reads the
//! miner's request into a buffer, parses it in place ([`super::wire`]),
//! applies the same checks in the same order — rate, path rules, slug,
//! body limit, the challenge's concurrency permit — writes the upstream
//! request on a keep-alive connection of this thread's own pool, and
//! relays the answer as it arrives: the head rewritten by the header
//! rules, the body unchanged (a chunked body chunk by chunk, so
//! Server-Sent Events stream), a body delimited by the challenge closing
//! its connection re-framed as chunks.
//!
//! A request of any other shape (another route, a chunked or large body,
//! `Expect`, HTTP/1.0, an unusual target) ends the fast path on that
//! connection: [`FastPath::serve`] returns it, with the bytes already
//! read, for the general server to continue. Refusals are rendered by the
//! caller's function, so they are the general path's answers byte for
//! byte in their bodies.
//!
//! Timing: a request's head (and short body) must arrive within
//! [`HEAD_TIMEOUT`] of the connection becoming idle, the challenge's
//! response head within the proxy's upstream timeout, each read of the
//! answer's body within the relay idle timeout, and the miner must read
//! the answer at the minimum send rate after its grace period
//! ([`super::limit::RateBudget`], one per connection); one timer per
//! connection is moved for each wait rather than a new one made, and only
//! when a read or write would block. The client's caps
//! ([`super::limit::ClientSlots`]) are taken with the challenge's permit
//! and given back with it.
//!
//! The general server's connection is a [`Rewound`], which holds the
//! miner to the same minimum send rate: hyper writes answers through it.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, header};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Instant, Sleep};

use super::forward::is_event_stream_type;
use super::limit::{MinRate, RateBudget, RequestSlot};
use super::pool::{CONNECT_TIMEOUT, IdlePool, Upstream, overdue};
use super::wire::{self, Framing, Parsed, Request};
use super::{Entry, FORWARDED_FOR, Proxy, ProxyError, REAL_IP, headers, path};
use crate::orchestrator::Orchestrator;
use crate::registry::Registry;

/// How long a request's head (and short body) may take to arrive, counted
/// from the moment the connection is idle: the keep-alive idle time and
/// the slow-client (slowloris) limit in one, as hyper's header timeout.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Renders a refusal as the HTTP answer the general path gives.
pub type Render = Arc<dyn Fn(ProxyError) -> Response<Body> + Send + Sync>;

/// A connection the fast path gives back: the request at the start of
/// `buffered` is not one it takes.
#[derive(Debug)]
pub struct Handover {
    /// The miner's connection.
    pub tcp: TcpStream,
    /// What was read from it and not yet answered.
    pub buffered: Bytes,
}

impl Handover {
    /// The connection as an IO object that first reads `buffered` again,
    /// and fails a write the miner keeps waiting under `send_rate`.
    pub fn into_io(self, send_rate: MinRate) -> Rewound {
        Rewound {
            prefix: self.buffered,
            tcp: self.tcp,
            budget: RateBudget::new(send_rate),
            waiting_since: None,
            timer: None,
        }
    }
}

/// A handed-over connection: reads what the fast path had read, then the
/// socket; writes go to the socket, under the minimum send rate.
pub struct Rewound {
    prefix: Bytes,
    tcp: TcpStream,
    budget: RateBudget,
    /// When a write started waiting on the miner, and its timer.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for Rewound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewound")
            .field("prefix", &self.prefix.len())
            .field("tcp", &self.tcp)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Rewound {
    /// Accounts a write of `len` bytes that ended as `done`: a write that
    /// waits on the miner past its allowance fails (hyper then closes
    /// the connection, and the answer's permit and slot go back).
    fn paced(
        &mut self,
        cx: &mut std::task::Context<'_>,
        len: usize,
        done: std::task::Poll<std::io::Result<usize>>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        match done {
            Poll::Ready(Ok(n)) => {
                let waited = self
                    .waiting_since
                    .take()
                    .map_or(Duration::ZERO, |t| t.elapsed());
                let _ = self.budget.spend(n, waited);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let Some(allowed) = self.budget.allowance(len) else {
                    return Poll::Pending;
                };
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                if overdue(&mut self.timer, since, allowed, cx) {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client reads too slowly",
                    )));
                }
                Poll::Pending
            }
            error => error,
        }
    }
}

impl tokio::io::AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return std::task::Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, out)
    }
}

impl tokio::io::AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let done = Pin::new(&mut self.tcp).poll_write(cx, data);
        self.paced(cx, data.len(), done)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let done = Pin::new(&mut self.tcp).poll_write_vectored(cx, data);
        let len = data.iter().map(|d| d.len()).sum();
        self.paced(cx, len, done)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The fast path of one master: the proxy and what its lookups need.
pub struct FastPath {
    proxy: Arc<Proxy>,
    registry: Registry,
    orchestrator: Option<Arc<dyn Orchestrator>>,
    render: Render,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

/// Room kept free in a read buffer before each read.
const READ_ROOM: usize = 4096;
/// Largest buffer an idle connection keeps (bytes): with thousands of
/// idle keep-alive miners, memory stays near 10 KiB per connection.
const KEPT_BUFFER: usize = 64 * 1024;

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_ROOM * 2);
    }
}

impl FastPath {
    /// The fast path for `proxy`; `render` turns a refusal into the
    /// general path's answer.
    pub fn new(
        proxy: Arc<Proxy>,
        registry: Registry,
        orchestrator: Option<Arc<dyn Orchestrator>>,
        render: Render,
    ) -> Self {
        Self {
            proxy,
            registry,
            orchestrator,
            render,
        }
    }

    /// Serves the connection `tcp` from `peer` until it closes, `stop`
    /// turns true while it is idle, or a request the fast path does not
    /// take arrives — then returns it for the general server.
    pub async fn serve(
        &self,
        mut tcp: TcpStream,
        peer: IpAddr,
        stop: watch::Receiver<bool>,
    ) -> Option<Handover> {
        let mut buf = BytesMut::with_capacity(READ_ROOM * 2);
        let mut io = Buffers {
            request: Vec::new(),
            response: Vec::new(),
            budget: RateBudget::new(self.proxy.config.send_min_rate),
        };
        let mut timer = pin!(tokio::time::sleep(HEAD_TIMEOUT));
        // Made once per connection: it then stays registered with the
        // signal instead of registering and leaving again per request.
        let mut signal = stop.clone();
        let mut stopped = pin!(async move {
            let _ = signal.wait_for(|stop| *stop).await;
        });
        'requests: loop {
            timer.as_mut().reset(Instant::now() + HEAD_TIMEOUT);
            // Bytes needed before parsing again: a request's whole length
            // once its head said how long its body is.
            let mut need = 1;
            loop {
                if buf.len() >= need {
                    let mut fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
                    match wire::parse_request(&buf, &mut fields) {
                        Parsed::General => {
                            return Some(Handover {
                                tcp,
                                buffered: buf.freeze(),
                            });
                        }
                        Parsed::Partial => need = buf.len() + 1,
                        Parsed::Done(req) if buf.len() >= req.len() => {
                            let total = req.len();
                            let keep = self
                                .exchange(
                                    &mut tcp,
                                    &req,
                                    &buf[req.head_len..total],
                                    peer,
                                    &mut io,
                                    timer.as_mut(),
                                )
                                .await;
                            buf.advance(total);
                            if !keep {
                                return None;
                            }
                            // An idle connection keeps small buffers, whatever
                            // its largest request or answer was.
                            if buf.is_empty() && buf.capacity() > KEPT_BUFFER {
                                buf = BytesMut::with_capacity(READ_ROOM * 2);
                            }
                            io.trim();
                            continue 'requests;
                        }
                        Parsed::Done(req) => need = req.len(),
                    }
                }
                // Between requests, a shutdown closes the connection (a
                // version check: no lock).
                if buf.is_empty() && stop.has_changed().unwrap_or(true) {
                    return None;
                }
                reserve(&mut buf);
                let read = tokio::select! {
                    biased;
                    read = tcp.read_buf(&mut buf) => read,
                    () = stopped.as_mut(), if buf.is_empty() => return None,
                    () = timer.as_mut() => return None,
                };
                match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        }
    }

    /// Answers one request; whether the connection may carry another.
    async fn exchange(
        &self,
        tcp: &mut TcpStream,
        req: &Request<'_, '_>,
        body: &[u8],
        peer: IpAddr,
        io: &mut Buffers,
        mut timer: Pin<&mut Sleep>,
    ) -> bool {
        io.request.clear();
        let client = self.client(peer, req.headers);
        let (entry, permit, mut slot) = match self.prepare(req, body, client, &mut io.request).await
        {
            Ok(ready) => ready,
            Err(e) => return self.refuse(tcp, e, req, &mut io.response).await,
        };
        let sent = send(
            &entry,
            &io.request,
            req.is_idempotent(),
            req.is_head(),
            self.proxy.config.upstream_timeout,
            &mut io.response,
            timer.as_mut(),
        )
        .await;
        let (conn, framing, reusable) = match sent {
            Ok(answer) => answer,
            Err(e) => return self.refuse(tcp, e, req, &mut io.response).await,
        };
        // Only a body without a known end can be an open-ended stream.
        if matches!(framing, Framing::Chunked | Framing::UntilClose)
            && head_is_event_stream(&io.response)
            && let Some(slot) = &mut slot
            && let Err(e) = slot.into_stream()
        {
            // `conn` is dropped unread: not reused.
            return self.refuse(tcp, e.into(), req, &mut io.response).await;
        }
        let pace = Pace {
            idle: self.proxy.config.relay_idle_timeout,
            budget: &mut io.budget,
            timer: timer.as_mut(),
        };
        match relay(tcp, conn, framing, reusable, &mut io.response, pace).await {
            Relayed::Done => {}
            Relayed::BadBody => {
                // Nothing was sent yet: the miner gets the general path's 502.
                tracing::warn!(slug = %entry.slug.as_str(), "challenge sent a malformed chunked body");
                return self
                    .refuse(tcp, ProxyError::Unavailable, req, &mut io.response)
                    .await;
            }
            // The head is out; the miner's connection is all that can
            // say the answer broke off.
            Relayed::Broken => return false,
        }
        drop(permit);
        drop(slot);
        !req.close
    }

    /// The client `req` from `peer` is for (see [`Proxy::client_address`]).
    fn client(&self, peer: IpAddr, fields: &[httparse::Header<'_>]) -> IpAddr {
        let trusted = &self.proxy.config.trusted_proxies;
        if trusted.is_empty() {
            return peer;
        }
        let named = |name: &'static str| {
            fields
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        trusted.client(peer, named(FORWARDED_FOR), named(REAL_IP).next())
    }

    /// The checks of the general path, in its order, then the upstream
    /// request written into `out`.
    async fn prepare(
        &self,
        req: &Request<'_, '_>,
        body: &[u8],
        client: IpAddr,
        out: &mut Vec<u8>,
    ) -> Result<(Arc<Entry>, OwnedSemaphorePermit, Option<RequestSlot>), ProxyError> {
        self.proxy.check_rate(Some(client))?;
        let forward = path::check(req.rest).map_err(ProxyError::PathNotAllowed)?;
        let entry = self
            .proxy
            .challenge(req.slug, &self.registry, self.orchestrator.as_ref())
            .await?;
        let limit = self.proxy.config.max_body_bytes;
        if req.body_len > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        let slot = self.proxy.client_slot(Some(client), &entry)?;
        let permit = self.proxy.permit(&entry)?;
        let path = forward.encoded();
        let upstream = &entry.upstream;
        wire::write_upstream_request(
            out,
            req,
            wire::Target {
                prefix: upstream.prefix(),
                path: &path,
                authority: upstream.authority().as_bytes(),
                slug: entry.slug_header.as_bytes(),
            },
            body,
        );
        Ok((entry, permit, slot))
    }

    /// Writes the general path's answer to `e` for `req` (its body left
    /// out for HEAD); whether the connection may carry another request.
    async fn refuse(
        &self,
        tcp: &mut TcpStream,
        e: ProxyError,
        req: &Request<'_, '_>,
        out: &mut Vec<u8>,
    ) -> bool {
        let close = req.close;
        let (parts, body) = (self.render)(e).into_parts();
        let body = match http_body_util::BodyExt::collect(body).await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => Bytes::new(),
        };
        out.clear();
        let status = parts.status;
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        for (name, value) in &parts.headers {
            if name == header::CONTENT_LENGTH || headers::is_hop_by_hop_name(name.as_str()) {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if !parts.headers.contains_key(header::DATE) {
            let _ = write!(out, "date: {}\r\n", http_date());
        }
        let _ = write!(out, "content-length: {}\r\n", body.len());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !req.is_head() {
            out.extend_from_slice(&body);
        }
        tcp.write_all(out).await.is_ok() && !close
    }
}

/// A connection's reusable buffers: the request going upstream (kept
/// until answered, for a retry) and what goes back to the miner; and the
/// miner's budget of waiting under the minimum send rate.
struct Buffers {
    request: Vec<u8>,
    response: Vec<u8>,
    budget: RateBudget,
}

impl Buffers {
    fn trim(&mut self) {
        for b in [&mut self.request, &mut self.response] {
            if b.capacity() > KEPT_BUFFER {
                *b = Vec::new();
            }
        }
    }
}

/// Sends `request` to `entry` on a pooled connection (again on a new one
/// if the pooled one turns out closed before answering and the request may
/// be repeated) and reads the final response head, written for the miner
/// into `head`.
async fn send(
    entry: &Entry,
    request: &[u8],
    idempotent: bool,
    head_request: bool,
    timeout: Duration,
    head: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
) -> Result<(Box<RawConn>, Framing, bool), ProxyError> {
    let upstream = &entry.upstream;
    // One deadline for connecting, sending and the answer's head, retry
    // included, as the general path's.
    timer.as_mut().reset(Instant::now() + timeout);
    let mut pooled = checkout(upstream);
    loop {
        let reused = pooled.is_some();
        let mut conn = match pooled.take() {
            Some(conn) => conn,
            None => {
                let connected = tokio::select! {
                    biased;
                    connected = connect(upstream) => connected,
                    () = timer.as_mut() => return Err(ProxyError::Timeout),
                };
                connected.map_err(|e| {
                    tracing::warn!(slug = %entry.slug.as_str(), error = %e, "challenge unreachable");
                    ProxyError::Unavailable
                })?
            }
        };
        let written = tokio::select! {
            biased;
            written = conn.tcp.write_all(request) => written,
            () = timer.as_mut() => return Err(ProxyError::Timeout),
        };
        if written.is_err() {
            if reused {
                continue;
            }
            return Err(ProxyError::Unavailable);
        }
        loop {
            if !conn.buf.is_empty() {
                head.clear();
                match wire::parse_response(&conn.buf, head_request, http_date, head) {
                    Ok(None) => {}
                    Ok(Some(wire::Response::Interim(n))) => {
                        conn.buf.advance(n);
                        continue;
                    }
                    Ok(Some(wire::Response::Final {
                        head_len,
                        framing,
                        reusable,
                        ..
                    })) => {
                        conn.buf.advance(head_len);
                        return Ok((conn, framing, reusable));
                    }
                    Err(e) => {
                        tracing::warn!(slug = %entry.slug.as_str(), error = %e, "challenge sent an unusable answer");
                        return Err(ProxyError::Unavailable);
                    }
                }
            }
            reserve(&mut conn.buf);
            let read = tokio::select! {
                biased;
                read = conn.tcp.read_buf(&mut conn.buf) => read,
                () = timer.as_mut() => return Err(ProxyError::Timeout),
            };
            match read {
                Ok(0) | Err(_) => {
                    // A kept-alive connection the challenge closed as the
                    // request went out: nothing was answered, so a request
                    // that may be repeated goes again on a new connection.
                    if reused && conn.buf.is_empty() && idempotent {
                        break;
                    }
                    tracing::warn!(slug = %entry.slug.as_str(), "challenge closed the connection without answering");
                    return Err(ProxyError::Unavailable);
                }
                Ok(_) => {}
            }
        }
    }
}

/// How relaying a body ended.
enum Relayed {
    /// Completely; the connection went back to the pool if reusable.
    Done,
    /// The chunked framing was malformed before anything was sent.
    BadBody,
    /// Broken off after the head was sent (either side failed).
    Broken,
}

/// The timing of one relayed answer: how long the challenge may pause,
/// the miner's send budget, and the connection's timer.
struct Pace<'a> {
    idle: Duration,
    budget: &'a mut RateBudget,
    timer: Pin<&'a mut Sleep>,
}

impl Pace<'_> {
    /// Writes `data` to the miner, failing when the miner keeps the write
    /// waiting longer than its budget allows. A write the socket takes at
    /// once (the common case) touches no timer.
    async fn write(&mut self, tcp: &TcpStream, data: &[u8]) -> bool {
        let mut rest = data;
        let mut since = None;
        while !rest.is_empty() {
            match tcp.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let limited = match since {
                        Some(_) => self.budget.allowance(data.len()).is_some(),
                        None => {
                            let now = Instant::now();
                            since = Some(now);
                            match self.budget.allowance(data.len()) {
                                Some(allowed) => {
                                    self.timer.as_mut().reset(now + allowed);
                                    true
                                }
                                None => false,
                            }
                        }
                    };
                    tokio::select! {
                        biased;
                        ready = tcp.writable() => if ready.is_err() { return false },
                        () = self.timer.as_mut(), if limited => return false,
                    }
                }
                Err(_) => return false,
            }
        }
        let waited = since.map_or(Duration::ZERO, |t: Instant| t.elapsed());
        self.budget.spend(data.len(), waited)
    }

    /// Reads more of the answer from the challenge into `conn`'s buffer;
    /// a pause longer than the idle timeout is an error.
    async fn read(&mut self, conn: &mut RawConn) -> std::io::Result<usize> {
        reserve(&mut conn.buf);
        match conn.tcp.try_read_buf(&mut conn.buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        self.timer.as_mut().reset(Instant::now() + self.idle);
        loop {
            tokio::select! {
                biased;
                ready = conn.tcp.readable() => ready?,
                () = self.timer.as_mut() => return Err(std::io::ErrorKind::TimedOut.into()),
            }
            match conn.tcp.try_read_buf(&mut conn.buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                done => return done,
            }
        }
    }
}

/// Relays the answer whose head is in `out` and whose body starts in
/// `conn`'s buffer to the miner, then pools `conn` if it is reusable.
async fn relay(
    tcp: &mut TcpStream,
    mut conn: Box<RawConn>,
    framing: Framing,
    reusable: bool,
    out: &mut Vec<u8>,
    mut pace: Pace<'_>,
) -> Relayed {
    let ended = match framing {
        Framing::Empty => pace.write(tcp, out).await,
        Framing::Length(n) => {
            let mut left = n;
            let take = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(conn.buf.len());
            out.extend_from_slice(&conn.buf[..take]);
            conn.buf.advance(take);
            left -= take as u64;
            if !pace.write(tcp, out).await {
                return Relayed::Broken;
            }
            while left > 0 {
                match pace.read(&mut conn).await {
                    Ok(0) | Err(_) => return Relayed::Broken,
                    Ok(_) => {}
                }
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(conn.buf.len());
                if !pace.write(tcp, &conn.buf[..take]).await {
                    return Relayed::Broken;
                }
                conn.buf.advance(take);
                left -= take as u64;
            }
            true
        }
        Framing::Chunked => {
            let mut scanner = wire::ChunkedScanner::new();
            let end = match scanner.feed(&conn.buf) {
                Ok(end) => end,
                Err(_) => return Relayed::BadBody,
            };
            let take = end.unwrap_or(conn.buf.len());
            out.extend_from_slice(&conn.buf[..take]);
            conn.buf.advance(take);
            if !pace.write(tcp, out).await {
                return Relayed::Broken;
            }
            while !scanner.is_done() {
                match pace.read(&mut conn).await {
                    Ok(0) | Err(_) => return Relayed::Broken,
                    Ok(_) => {}
                }
                let take = match scanner.feed(&conn.buf) {
                    Ok(end) => end.unwrap_or(conn.buf.len()),
                    Err(_) => return Relayed::Broken,
                };
                // Each read goes out at once: a Server-Sent Event reaches
                // the miner when the challenge sends it.
                if !pace.write(tcp, &conn.buf[..take]).await {
                    return Relayed::Broken;
                }
                conn.buf.advance(take);
            }
            true
        }
        Framing::UntilClose => {
            if !conn.buf.is_empty() {
                wire::write_chunk(out, &conn.buf);
                conn.buf.clear();
            }
            if !pace.write(tcp, out).await {
                return Relayed::Broken;
            }
            loop {
                match pace.read(&mut conn).await {
                    Ok(0) => break,
                    Err(_) => return Relayed::Broken,
                    Ok(_) => {}
                }
                out.clear();
                wire::write_chunk(out, &conn.buf);
                conn.buf.clear();
                if !pace.write(tcp, out).await {
                    return Relayed::Broken;
                }
            }
            pace.write(tcp, wire::LAST_CHUNK).await
        }
    };
    if !ended {
        return Relayed::Broken;
    }
    // Bytes after the answer are not an answer to anything: such a
    // connection is not reused.
    if reusable && conn.buf.is_empty() {
        conn.release();
    }
    Relayed::Done
}

/// Whether the (rewritten) response head `head` has an event-stream
/// `Content-Type`.
fn head_is_event_stream(head: &[u8]) -> bool {
    const NAME: &[u8] = b"content-type:";
    head.split(|b| *b == b'\n').any(|line| {
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && is_event_stream_type(line[NAME.len()..].trim_ascii_end())
    })
}

/// A connection to a challenge with the bytes read from it and not yet
/// relayed.
struct RawConn {
    tcp: TcpStream,
    buf: BytesMut,
    upstream: u64,
}

impl RawConn {
    /// Back into this thread's pool.
    fn release(self: Box<Self>) {
        let upstream = self.upstream;
        let _ = IDLE.try_with(|pool| pool.borrow_mut().push(upstream, self));
    }
}

thread_local! {
    /// This thread's idle fast-path connections. Per thread because a
    /// connection belongs to the IO driver of the runtime that opened it
    /// (the listener threads each run their own).
    static IDLE: RefCell<IdlePool<Box<RawConn>>> = const { RefCell::new(IdlePool::new()) };
}

/// The most recently used idle connection to `upstream` that is still
/// open.
fn checkout(upstream: &Upstream) -> Option<Box<RawConn>> {
    loop {
        let conn = IDLE
            .try_with(|pool| pool.borrow_mut().pop(upstream.id()))
            .ok()
            .flatten()?;
        // A connection the challenge closed (or wrote to) while idle is
        // dropped; with no event since it was pooled this is no syscall.
        let mut probe = [0u8; 1];
        match conn.tcp.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(conn),
            _ => continue,
        }
    }
}

/// Now, as an HTTP date.
fn http_date() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// A new connection to `upstream`.
async fn connect(upstream: &Upstream) -> Result<Box<RawConn>, std::io::Error> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((upstream.host(), upstream.port())),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    // Response heads and SSE frames go out as soon as written.
    tcp.set_nodelay(true)?;
    Ok(Box::new(RawConn {
        tcp,
        buf: BytesMut::with_capacity(READ_ROOM * 2),
        upstream: upstream.id(),
    }))
}
