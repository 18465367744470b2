//! Denial-of-service tests of the public proxy through the real listener
//! (`base_server::serve`, fast path and general path): one client — slow
//! heads, slow bodies, slow readers, many connections, many requests,
//! streams — cannot keep another client from its answers, every timeout
//! gives the challenge's permit back, and `X-Forwarded-For` names the
//! client only when a trusted proxy sends it.
//!
//! Clients bind distinct loopback addresses (all of 127/8 is loopback on
//! Linux) to be distinct clients; the masters here hold loopback to the
//! per-client caps (`include_loopback`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base_sdk::auth::AdminAuth;
use base_sdk::config::Environment;
use base_sdk::model::ChallengeStatus;
use base_sdk::proxy::{ClientCaps, MinRate, Proxy, ProxyConfig, RateLimit};
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::testing::TempSqlite;
use base_server::AppState;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Size of `/big`: far more than socket buffers hold.
const BIG: usize = 16 * 1024 * 1024;

async fn big() -> impl IntoResponse {
    static CHUNK: [u8; 64 * 1024] = [b'z'; 64 * 1024];
    let chunks = futures::stream::iter(
        (0..BIG / CHUNK.len()).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))),
    );
    (
        [("content-length", BIG.to_string())],
        Body::from_stream(chunks),
    )
}

/// Sends the head and a first chunk, then nothing.
async fn stall() -> impl IntoResponse {
    let first = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("first")) });
    Body::from_stream(first.chain(futures::stream::pending()))
}

/// An event stream that sends one event, then nothing.
async fn sse() -> impl IntoResponse {
    let first =
        futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("data: one\n\n")) });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(first.chain(futures::stream::pending())),
    )
}

/// Answers after 3 s (holds its request in flight meanwhile).
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3)).await;
    "late"
}

async fn sink(body: Body) -> StatusCode {
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        if chunk.is_err() {
            return StatusCode::BAD_REQUEST;
        }
    }
    StatusCode::OK
}

async fn start_upstream() -> SocketAddr {
    let app = Router::new()
        .route("/x", get(|| async { "ok" }))
        .route("/big", get(big))
        .route("/stall", get(stall))
        .route("/sse", get(sse))
        .route("/slow", get(slow))
        .route("/sink", post(sink));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Master {
    addr: SocketAddr,
    _db: TempSqlite,
}

/// A master on 127.0.0.1 with the challenges `dos` and `dos2` (both on
/// one upstream) and `config`.
async fn master(config: ProxyConfig) -> Master {
    let upstream = start_upstream().await;
    let db = base_sdk::testing::sqlite().await.unwrap();
    let registry = Registry::new(db.store.clone(), Environment::Development);
    for slug in ["dos", "dos2"] {
        registry
            .create(
                NewChallenge {
                    slug: slug.into(),
                    name: slug.into(),
                    image: "base.local/echo:1".into(),
                    version: "1".into(),
                    status: Some(ChallengeStatus::Active),
                    internal_base_url: Some(format!("http://{upstream}")),
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap();
    }
    let state = AppState::new(registry, AdminAuth::new(None), 100)
        .with_proxy(Arc::new(Proxy::new(config, None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    Master { addr, _db: db }
}

/// The defaults, with loopback clients held to the per-client caps and
/// rate limiting off (it is not what these tests are about).
fn config(fast_path: bool) -> ProxyConfig {
    ProxyConfig {
        fast_path,
        rate_limit: RateLimit {
            per_minute: 0,
            burst: 0,
            include_loopback: true,
        },
        client_caps: ClientCaps {
            include_loopback: true,
            ..ClientCaps::default()
        },
        ..ProxyConfig::default()
    }
}

/// A connection from the loopback address `from` (127.0.0.x).
async fn connect_from(
    from: &str,
    to: SocketAddr,
    small_window: bool,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if small_window {
        // A reader that does not read: keep the kernel from buffering
        // megabytes on its behalf.
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(to).await
}

fn get_request(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n")
}

/// The status and text of the answer on `s` (read to its end, or to its
/// `Content-Length`), or `None` when the connection ended without one.
async fn answer(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if complete(&buf) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    Some((code, text))
}

/// Whether `buf` holds a whole answer with a `Content-Length`.
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| buf.len() >= end + 4 + n)
}

/// One request from `from` on its own connection, answered within 5 s.
async fn request_from(from: &str, to: SocketAddr, request: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = connect_from(from, to, false).await.ok()?;
        s.write_all(request.as_bytes()).await.ok()?;
        answer(&mut s).await
    })
    .await
    .unwrap_or_else(|_| panic!("no answer within 5 s to {request:?} from {from}"))
}

/// What a new connection hears before it sends anything: the refusal a
/// connection over a cap gets at accept. `None` when it was accepted
/// (nothing within 1 s).
async fn heard_at_accept(s: &mut TcpStream) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(1), answer(s))
        .await
        .ok()
        .flatten()
}

/// Reads from `s` until `needle` has arrived (within 5 s).
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&buf).contains(needle) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{needle:?} did not arrive: {}",
            String::from_utf8_lossy(&buf)
        )
    });
    String::from_utf8_lossy(&buf).to_string()
}

/// Whether the master closes `s` (EOF or reset) within `within`, reading
/// and dropping whatever arrives meanwhile.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = vec![0u8; 64 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// Asks for `/challenges/dos/x` from `from` until it is answered 200,
/// for at most `within`; the statuses seen on the way.
async fn ok_within(from: &str, to: SocketAddr, within: Duration) -> Result<Vec<u16>, Vec<u16>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < deadline {
        let got = request_from(from, to, &get_request("/challenges/dos/x", "")).await;
        let code = got.map_or(0, |(c, _)| c);
        seen.push(code);
        if code == 200 {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_slow_connections_from_one_address_do_not_starve_another() {
    let m = master(config(true)).await;
    let to = m.addr;
    let mut attack = Vec::new();
    for i in 0..300 {
        attack.push(tokio::spawn(async move {
            let Ok(mut s) = connect_from("127.0.0.2", to, i % 15 >= 8).await else {
                return;
            };
            match i % 15 {
                // Slowloris: a head that never ends.
                0 => {
                    let _ = s.write_all(b"GET /challenges/dos/x HTTP/1.1\r\nHost: t\r\n").await;
                    for _ in 0..60 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if s.write_all(b"X-a: b\r\n").await.is_err() {
                            return;
                        }
                    }
                }
                // A large body, sent a byte a second.
                1..=7 => {
                    let head = "POST /challenges/dos/sink HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n";
                    let _ = s.write_all(head.as_bytes()).await;
                    for _ in 0..60 {
                        if s.write_all(b"a").await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // A large answer, never read.
                _ => {
                    let _ = s.write_all(get_request("/challenges/dos/big", "").as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
            drop(s);
        }));
    }
    // Let the attack take whatever it can.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..20 {
        let (code, text) = request_from("127.0.0.3", to, &get_request("/challenges/dos/x", ""))
            .await
            .unwrap_or_else(|| panic!("request {n} of the other client got no answer"));
        assert_eq!(code, 200, "request {n} of the other client: {text}");
    }
    // A body and a large answer go through as well.
    let body = "b".repeat(100_000);
    let post = format!(
        "POST /challenges/dos/sink HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (code, text) = request_from("127.0.0.3", to, &post).await.unwrap();
    assert_eq!(code, 200, "{text}");
    // The attacker itself is told why it is refused: at accept (over its
    // connections) or for its request (over its requests).
    let mut s = connect_from("127.0.0.2", to, false).await.unwrap();
    let (code, text) = match heard_at_accept(&mut s).await {
        Some(refused) => refused,
        None => {
            s.write_all(get_request("/challenges/dos/x", "").as_bytes())
                .await
                .unwrap();
            answer(&mut s)
                .await
                .expect("the attacker got no answer at all")
        }
    };
    assert_eq!(code, 429, "{text}");
    assert!(
        text.contains("\"detail\"") && text.contains("retry-after"),
        "{text}"
    );
    for a in attack {
        a.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_gets_408_and_gives_its_permit_back() {
    for fast_path in [true, false] {
        let m = master(ProxyConfig {
            max_concurrent_per_challenge: 1,
            body_min_rate: MinRate {
                bytes_per_second: 1000,
                grace: Duration::from_secs(1),
            },
            ..config(fast_path)
        })
        .await;
        let mut s = connect_from("127.0.0.2", m.addr, false).await.unwrap();
        // Over 64 KiB: the general path streams it.
        s.write_all(
            b"POST /challenges/dos/sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(10), answer(&mut s))
            .await
            .unwrap_or_else(|_| panic!("fast_path={fast_path}: a stalled body was not cut off"));
        let (code, text) = got.expect("no answer");
        assert_eq!(code, 408, "fast_path={fast_path}: {text}");
        assert!(text.contains("too slowly"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(8));
        ok_within("127.0.0.3", m.addr, Duration::from_secs(5))
            .await
            .expect("the permit was not given back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_and_gives_its_permit_back() {
    for fast_path in [true, false] {
        let m = master(ProxyConfig {
            max_concurrent_per_challenge: 1,
            send_min_rate: MinRate {
                bytes_per_second: 100_000,
                grace: Duration::from_secs(1),
            },
            ..config(fast_path)
        })
        .await;
        let mut s = connect_from("127.0.0.2", m.addr, true).await.unwrap();
        s.write_all(get_request("/challenges/dos/big", "").as_bytes())
            .await
            .unwrap();
        // It holds the challenge's one permit while it does not read...
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, _) = request_from("127.0.0.3", m.addr, &get_request("/challenges/dos/x", ""))
            .await
            .unwrap();
        assert_eq!(
            code, 503,
            "fast_path={fast_path}: the slow reader holds no permit?"
        );
        // ...until the minimum rate runs out.
        let seen = ok_within("127.0.0.3", m.addr, Duration::from_secs(10))
            .await
            .unwrap_or_else(|seen| panic!("fast_path={fast_path}: still busy: {seen:?}"));
        assert!(seen.len() > 1 || seen == [200], "{seen:?}");
        assert!(
            closed_within(&mut s, Duration::from_secs(10)).await,
            "fast_path={fast_path}: the slow reader's connection stayed open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_challenge_stops_sending_is_cut_off_after_the_idle_timeout() {
    for fast_path in [true, false] {
        let m = master(ProxyConfig {
            max_concurrent_per_challenge: 1,
            relay_idle_timeout: Duration::from_secs(1),
            ..config(fast_path)
        })
        .await;
        let mut s = connect_from("127.0.0.2", m.addr, false).await.unwrap();
        s.write_all(get_request("/challenges/dos/stall", "").as_bytes())
            .await
            .unwrap();
        read_until(&mut s, "first").await;
        assert!(
            closed_within(&mut s, Duration::from_secs(8)).await,
            "fast_path={fast_path}: a silent challenge kept the miner's connection"
        );
        ok_within("127.0.0.3", m.addr, Duration::from_secs(5))
            .await
            .expect("the permit was not given back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_capped_per_client_and_per_challenge() {
    for fast_path in [true, false] {
        let m = master(ProxyConfig {
            client_caps: ClientCaps {
                requests: 3,
                requests_per_challenge: 2,
                include_loopback: true,
                ..ClientCaps::default()
            },
            ..config(fast_path)
        })
        .await;
        let mut held = Vec::new();
        let m_addr = m.addr;
        let hold = move |slug: &'static str| async move {
            let mut s = connect_from("127.0.0.2", m_addr, false).await.unwrap();
            s.write_all(get_request(&format!("/challenges/{slug}/slow"), "").as_bytes())
                .await
                .unwrap();
            s
        };
        for slug in ["dos", "dos"] {
            held.push(hold(slug).await);
        }
        // Until the upstream holds both.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (code, text) = request_from("127.0.0.2", m.addr, &get_request("/challenges/dos/x", ""))
            .await
            .unwrap();
        assert_eq!(code, 429, "fast_path={fast_path}: {text}");
        assert!(
            text.contains("to this challenge") && text.contains("retry-after: 1"),
            "{text}"
        );
        held.push(hold("dos2").await);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (code, text) =
            request_from("127.0.0.2", m.addr, &get_request("/challenges/dos2/x", ""))
                .await
                .unwrap();
        assert_eq!(code, 429, "fast_path={fast_path}: {text}");
        assert!(text.contains("from your address (at most 3)"), "{text}");
        // Another client is not affected...
        let (code, _) = request_from("127.0.0.3", m.addr, &get_request("/challenges/dos/x", ""))
            .await
            .unwrap();
        assert_eq!(code, 200);
        // ...and the slots come back when the requests end (a request
        // whose miner left still counts until the challenge answers it:
        // leaving does not buy a client new slots).
        drop(held);
        ok_within("127.0.0.2", m.addr, Duration::from_secs(10))
            .await
            .expect("slots not given back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_client_apart_from_requests() {
    for fast_path in [true, false] {
        let m = master(ProxyConfig {
            client_caps: ClientCaps {
                streams: 1,
                requests: 1,
                include_loopback: true,
                ..ClientCaps::default()
            },
            ..config(fast_path)
        })
        .await;
        let mut first = connect_from("127.0.0.2", m.addr, false).await.unwrap();
        first
            .write_all(get_request("/challenges/dos/sse", "").as_bytes())
            .await
            .unwrap();
        read_until(&mut first, "data: one").await;
        // The open stream does not use up the one request slot...
        let (code, _) = request_from("127.0.0.2", m.addr, &get_request("/challenges/dos/x", ""))
            .await
            .unwrap();
        assert_eq!(code, 200, "fast_path={fast_path}");
        // ...but a second stream is over the stream cap.
        let (code, text) =
            request_from("127.0.0.2", m.addr, &get_request("/challenges/dos/sse", ""))
                .await
                .unwrap();
        assert_eq!(code, 429, "fast_path={fast_path}: {text}");
        assert!(text.contains("event streams"), "{text}");
        let mut other = connect_from("127.0.0.3", m.addr, false).await.unwrap();
        other
            .write_all(get_request("/challenges/dos/sse", "").as_bytes())
            .await
            .unwrap();
        read_until(&mut other, "data: one").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_client_and_in_total() {
    for fast_path in [true, false] {
        let m = master(ProxyConfig {
            client_caps: ClientCaps {
                connections: 3,
                connections_total: 6,
                include_loopback: true,
                ..ClientCaps::default()
            },
            ..config(fast_path)
        })
        .await;
        // Kept-alive connections, each proven accepted by an answer.
        let addr = m.addr;
        let keep = move |from: &'static str| async move {
            let mut s = connect_from(from, addr, false).await.unwrap();
            s.write_all(b"GET /challenges/dos/x HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .unwrap();
            read_until(&mut s, "\r\n\r\nok").await;
            s
        };
        let mut two = Vec::new();
        for _ in 0..3 {
            two.push(keep("127.0.0.2").await);
        }
        let mut s = connect_from("127.0.0.2", m.addr, false).await.unwrap();
        let (code, text) = heard_at_accept(&mut s)
            .await
            .expect("a connection over the cap should hear why at once");
        assert_eq!(code, 429, "fast_path={fast_path}: {text}");
        assert!(
            text.contains("open connections from your address"),
            "{text}"
        );
        assert!(text.contains("retry-after: 1"), "{text}");
        let mut three = Vec::new();
        for _ in 0..3 {
            three.push(keep("127.0.0.3").await);
        }
        let mut s = connect_from("127.0.0.4", m.addr, false).await.unwrap();
        let (code, text) = heard_at_accept(&mut s)
            .await
            .expect("a connection over the total should hear why at once");
        assert_eq!(code, 503, "fast_path={fast_path}: {text}");
        assert!(text.contains("connection limit"), "{text}");
        // A closed connection makes room again.
        drop(two.pop());
        ok_within("127.0.0.2", m.addr, Duration::from_secs(5))
            .await
            .expect("the closed connection was not given back");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_names_the_client_only_from_trusted_proxies() {
    for fast_path in [true, false] {
        let m = master(ProxyConfig {
            rate_limit: RateLimit {
                per_minute: 1,
                burst: 1,
                include_loopback: true,
            },
            trusted_proxies: "127.0.0.1".parse().unwrap(),
            ..config(fast_path)
        })
        .await;
        let via_proxy =
            |xff: &str| get_request("/challenges/dos/x", &format!("X-Forwarded-For: {xff}\r\n"));
        let status = |got: Option<(u16, String)>| got.unwrap().0;
        // From the trusted proxy: each forwarded client has its own rate;
        // the right-most untrusted entry is the client, whatever the
        // client wrote left of it.
        assert_eq!(
            status(request_from("127.0.0.1", m.addr, &via_proxy("203.0.113.1")).await),
            200
        );
        assert_eq!(
            status(
                request_from("127.0.0.1", m.addr, &via_proxy("198.51.100.7, 203.0.113.1")).await
            ),
            429,
            "fast_path={fast_path}"
        );
        assert_eq!(
            status(request_from("127.0.0.1", m.addr, &via_proxy("203.0.113.2")).await),
            200
        );
        // IPv6 clients by their /64.
        assert_eq!(
            status(request_from("127.0.0.1", m.addr, &via_proxy("2001:db8::1")).await),
            200
        );
        assert_eq!(
            status(request_from("127.0.0.1", m.addr, &via_proxy("2001:db8::2")).await),
            429
        );
        assert_eq!(
            status(request_from("127.0.0.1", m.addr, &via_proxy("2001:db8:0:1::1")).await),
            200
        );
        // From anyone else the header is the client's own claim: ignored.
        assert_eq!(
            status(request_from("127.0.0.2", m.addr, &via_proxy("203.0.113.3")).await),
            200
        );
        assert_eq!(
            status(request_from("127.0.0.2", m.addr, &via_proxy("203.0.113.4")).await),
            429,
            "fast_path={fast_path}: an untrusted X-Forwarded-For chose the client"
        );
    }
}
