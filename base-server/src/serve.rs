//! The master's public listener: one single-threaded tokio runtime per
//! core, each accepting on its own `SO_REUSEPORT` socket, so that a proxied
//! request — the miner's connection, the handler and the upstream
//! connection — stays on one thread from accept to the last byte.
//!
//! `axum::serve` runs every connection as a task of the shared
//! work-stealing runtime: a request and its upstream connection hop
//! between worker threads, and each hop is a cross-thread wake-up. On the
//! 2-core manager that cost a measurable share of the proxy's throughput
//! (docs/benchmarks.md). Here the kernel spreads connections over the
//! listeners (`SO_REUSEPORT` hashes the 4-tuple), and each runtime serves
//! its own with hyper's HTTP/1 server and the same axum [`Router`].
//!
//! A connection starts on the proxy's byte-level fast path
//! (`base_sdk::proxy::http1`), which answers plain passthrough requests
//! itself; the first request it does not take hands the connection, with
//! what was read, to hyper's server for good. There the passthrough
//! (`/challenges/{slug}…`) is also called directly, without the router's
//! matching, its boxed handler future and the request extensions it
//! fills. Every other route (registry, weights, admin, the bridges) is handed to the
//! runtime `serve` was called from, where the database pool, the
//! orchestrator client and their background tasks live: those are
//! registered with that runtime's IO driver and must not end up owned by
//! a listener thread that stops at shutdown.
//!
//! Connections are counted as they are accepted (`ClientSlots`): one over
//! the per-client or the total cap gets a 429 / 503 written without
//! waiting and is closed, before any task or buffer is made for it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse as _;
use base_sdk::proxy::http1::FastPath;
use base_sdk::proxy::{LimitError, MinRate, ProxyError};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::state::AppState;

/// The number of listener threads when the operator sets none: one per
/// core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `n` (at least one) listening sockets on `addr`, all with
/// `SO_REUSEPORT`, so the kernel balances new connections between them.
/// With port 0 the first socket picks the port and the others join it.
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = addr;
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Serves the API of `state` on `listeners`, one thread with a current-thread
/// runtime per listener, until `shutdown` resolves; then stops accepting,
/// lets the open connections finish their requests, and returns.
///
/// Must be called from within a tokio runtime: non-passthrough requests
/// run there. Each request carries `ConnectInfo<SocketAddr>` (the rate
/// limiter reads the client's address from it), as with
/// `into_make_service_with_connect_info`.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let main = tokio::runtime::Handle::current();
    let router = crate::app(state.clone());
    let fast = fast_path(&state);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut done = Vec::with_capacity(listeners.len());
    for (i, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (state, router, main, stop, fast) = (
            state.clone(),
            router.clone(),
            main.clone(),
            stop_rx.clone(),
            fast.clone(),
        );
        std::thread::Builder::new()
            .name(format!("base-listen-{i}"))
            .spawn(move || {
                let result =
                    runtime.block_on(accept_loop(listener, state, router, main, fast, stop));
                // Connections the graceful drain gave up on end here.
                drop(runtime);
                let _ = tx.send(result);
            })?;
        done.push(rx);
    }
    // The shutdown future may not be `Sync` or cheap to share; one task
    // turns it into a signal every listener thread watches.
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut result = Ok(());
    for rx in done {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err(std::io::Error::other("a listener thread panicked")),
        }
    }
    signal.abort();
    result
}

/// The proxy's fast path, unless the master has no proxy or the operator
/// turned it off; refusals are rendered as the API renders them.
fn fast_path(state: &AppState) -> Option<Arc<FastPath>> {
    let proxy = state.proxy()?;
    if !proxy.config().fast_path {
        return None;
    }
    Some(Arc::new(FastPath::new(
        proxy.clone(),
        state.registry().clone(),
        state.orchestrator().cloned(),
        Arc::new(|e| crate::error::ApiError::from(e).into_response()),
    )))
}

/// One listener thread: accepts until `stop`, serving each connection as a
/// task of this thread's runtime.
async fn accept_loop(
    listener: std::net::TcpListener,
    state: AppState,
    router: Router,
    main: tokio::runtime::Handle,
    fast: Option<Arc<FastPath>>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let proxy = state.proxy().cloned();
    let send_rate = proxy
        .as_ref()
        .map_or(MinRate::OFF, |p| p.config().send_min_rate);
    let graceful = GracefulShutdown::new();
    // Every connection task holds a clone; when all are gone after the
    // drain, `open.recv()` ends (fast-path connections are not hyper's, so
    // the graceful watcher does not see them).
    let (alive, mut open) = tokio::sync::mpsc::channel::<()>(1);
    let mut http = hyper::server::conn::http1::Builder::new();
    // The timer arms hyper's 30 s limit on reading request headers
    // (slowloris) — this port is the subnet's attack surface.
    http.timer(TokioTimer::new());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // rather than spin, as axum::serve does.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let counted = match &proxy {
            Some(proxy) => {
                let trusted = proxy.config().trusted_proxies.contains(peer.ip());
                match proxy.slots().connect(peer.ip(), trusted) {
                    Ok(slot) => Some(slot),
                    Err(e) => {
                        refuse_connection(&tcp, e);
                        continue;
                    }
                }
            }
            None => None,
        };
        // Without TCP_NODELAY a streamed response (headers, then body
        // frames as the challenge sends them) waits on Nagle and delayed
        // ACKs: the proxy measured 3x slower.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = {
            let (state, router, main) = (state.clone(), router.clone(), main.clone());
            hyper::service::service_fn(move |req: Request<Incoming>| {
                handle(state.clone(), router.clone(), main.clone(), peer, req)
            })
        };
        let (watcher, http, fast, stop, alive) = (
            graceful.watcher(),
            http.clone(),
            fast.clone(),
            stop.clone(),
            alive.clone(),
        );
        tokio::spawn(async move {
            let _alive = alive;
            let _counted = counted;
            let io = match fast {
                Some(fast) => match fast.serve(tcp, peer.ip(), stop).await {
                    Some(handover) => handover.into_io(send_rate),
                    None => return,
                },
                None => base_sdk::proxy::http1::Handover {
                    tcp,
                    buffered: Default::default(),
                }
                .into_io(send_rate),
            };
            let conn = watcher.watch(http.serve_connection(TokioIo::new(io), service));
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(alive);
    graceful.shutdown().await;
    // Fast-path connections close once idle (they watch `stop`); a
    // request in progress is answered first.
    let _ = open.recv().await;
    Ok(())
}

/// Answers a connection over a connection cap with its 429 or 503, as
/// far as the socket takes it at once, and closes it: no task, no
/// buffer, no wait.
fn refuse_connection(tcp: &tokio::net::TcpStream, e: LimitError) {
    let e = ProxyError::from(e);
    let status = e.status();
    let body = serde_json::json!({ "detail": e.to_string() }).to_string();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        e.retry_after().unwrap_or(1),
    );
    let _ = tcp.try_write(answer.as_bytes());
    tracing::debug!(error = %e, "connection refused");
}

/// Routes one request: the passthrough here, everything else on `main`.
async fn handle(
    state: AppState,
    router: Router,
    main: tokio::runtime::Handle,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let mut req = req.map(Body::new);
    if crate::proxy::is_passthrough(req.uri().path()) {
        return Ok(crate::proxy::forward(&state, Some(peer.ip()), req)
            .await
            .into_response());
    }
    req.extensions_mut().insert(ConnectInfo(peer));
    match main.spawn(router.oneshot(req)).await {
        Ok(response) => response,
        // The main runtime is shutting down (or the handler panicked).
        Err(_) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(response)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_sockets_share_one_port() {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
    }
}
