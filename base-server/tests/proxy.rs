//! HTTP-level tests of the public proxy and the bridges (CONTRACTS.md
//! §3.2, §3.3): a real `base-server` API on loopback in front of a small
//! axum upstream that records what reaches it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use base_sdk::auth::AdminAuth;
use base_sdk::config::Environment;
use base_sdk::metagraph::{MetagraphSnapshot, StaticMetagraph};
use base_sdk::model::ChallengeStatus;
use base_sdk::proxy::signature::{MinerKey, SignedTarget, body_sha256_hex};
use base_sdk::proxy::{Proxy, ProxyConfig, RateLimit};
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::testing::TempSqlite;
use base_sdk::vault::Vault;
use base_server::AppState;
use bytes::Bytes;
use futures::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const ADMIN: &str = "admin-token-for-proxy-tests-0123";

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    paths: Mutex<Vec<String>>,
    sink_bytes: AtomicU64,
    sink_complete: AtomicBool,
    sse_second: Notify,
    slow_release: Notify,
    bridged: Mutex<Vec<HeaderMap>>,
}

type Up = Arc<Seen>;

fn header_map_json(h: &HeaderMap) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        m.insert(k.to_string(), json!(v.to_str().unwrap_or("<bin>")));
    }
    Value::Object(m)
}

async fn echo(State(up): State<Up>, req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    up.paths.lock().unwrap().push(parts.uri.path().to_string());
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": header_map_json(&parts.headers),
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn sse(State(up): State<Up>) -> impl IntoResponse {
    let stream = futures::stream::unfold(0u8, move |n| {
        let up = up.clone();
        async move {
            match n {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from("data: one\n\n")), 1)),
                1 => {
                    // The second event is produced only once the test has
                    // received the first through the proxy.
                    up.sse_second.notified().await;
                    Some((Ok(Bytes::from("data: two\n\n")), 2))
                }
                _ => None,
            }
        }
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
}

async fn status(Path(code): Path<u16>) -> impl IntoResponse {
    (
        StatusCode::from_u16(code).unwrap(),
        [("x-challenge-said", "no")],
        axum::Json(json!({"detail": format!("challenge says {code}")})),
    )
}

async fn sink(State(up): State<Up>, body: Body) -> StatusCode {
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        match chunk {
            Ok(c) => {
                up.sink_bytes.fetch_add(c.len() as u64, Ordering::SeqCst);
            }
            Err(_) => return StatusCode::BAD_REQUEST,
        }
    }
    up.sink_complete.store(true, Ordering::SeqCst);
    StatusCode::OK
}

async fn slow(State(up): State<Up>) -> &'static str {
    up.paths.lock().unwrap().push("/slow".into());
    up.slow_release.notified().await;
    "done"
}

async fn bridged(State(up): State<Up>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    up.bridged.lock().unwrap().push(headers.clone());
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "headers": header_map_json(&headers),
            "body_sha256": body_sha256_hex(&body),
            "submission_id": "sub-1",
        })),
    )
}

async fn submission(Path(id): Path<String>, headers: HeaderMap) -> impl IntoResponse {
    axum::Json(json!({"id": id, "headers": header_map_json(&headers)}))
}

async fn start_upstream() -> (SocketAddr, Up) {
    let up: Up = Arc::default();
    let app = Router::new()
        .route("/sse", get(sse))
        .route("/status/{code}", any(status))
        .route("/sink", post(sink))
        .route("/slow", get(slow))
        .route("/internal/v1/bridge/submissions", post(bridged))
        .route("/v1/submissions/{id}", get(submission))
        .fallback(echo)
        .with_state(up.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, up)
}

/// A port nothing listens on.
async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn miner() -> MinerKey {
    MinerKey::from_seed([1u8; 32]).unwrap()
}

fn owner() -> MinerKey {
    MinerKey::from_seed([0u8; 32]).unwrap()
}

struct Harness {
    base: String,
    addr: SocketAddr,
    up: Up,
    client: reqwest::Client,
    _db: TempSqlite,
    registry: Registry,
    /// The upstream's base URL.
    upstream: String,
}

async fn add_challenge(registry: &Registry, slug: &str, url: String, status: ChallengeStatus) {
    registry
        .create(
            NewChallenge {
                slug: slug.into(),
                name: slug.into(),
                image: "base.local/echo:1".into(),
                version: "1".into(),
                status: Some(status),
                internal_base_url: Some(url),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
}

async fn harness(config: ProxyConfig) -> Harness {
    let (up_addr, up) = start_upstream().await;
    let db = base_sdk::testing::sqlite().await.unwrap();
    let vault = Arc::new(Vault::from_text(&Vault::generate_key()).unwrap());
    let registry = Registry::new(db.store.clone(), Environment::Development).with_vault(vault);
    add_challenge(
        &registry,
        "echo",
        format!("http://{up_addr}"),
        ChallengeStatus::Active,
    )
    .await;
    add_challenge(
        &registry,
        "dead",
        format!("http://127.0.0.1:{}", dead_port().await),
        ChallengeStatus::Active,
    )
    .await;
    add_challenge(
        &registry,
        "sleepy",
        format!("http://{up_addr}"),
        ChallengeStatus::Inactive,
    )
    .await;
    let metagraph = StaticMetagraph(MetagraphSnapshot::from_hotkeys(
        &[owner().hotkey(), miner().hotkey()],
        chrono::Utc::now(),
    ));
    let proxy = Proxy::new(config, Some(Arc::new(metagraph)));
    let state = AppState::new(
        registry.clone(),
        AdminAuth::new(Some(SecretString::from(ADMIN.to_string()))),
        100,
    )
    .with_proxy(Arc::new(proxy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    Harness {
        base: format!("http://{addr}"),
        addr,
        up,
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        _db: db,
        registry,
        upstream: format!("http://{up_addr}"),
    }
}

fn no_limits() -> ProxyConfig {
    ProxyConfig {
        rate_limit: RateLimit {
            per_minute: 0,
            burst: 0,
            include_loopback: false,
        },
        ..ProxyConfig::default()
    }
}

/// Sends a request line byte for byte (reqwest would normalize the path)
/// and returns the status code and body.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

#[tokio::test]
async fn attack_paths_are_refused_before_the_slug_is_looked_up() {
    let h = harness(no_limits()).await;
    let attacks = [
        "/health",
        "/health/",
        "/HEALTH",
        "//health",
        "/./health",
        "/x/../health",
        "/../health",
        "/%2e%2e/health",
        "/%2E%2E/%2e%2e/health",
        "/a%2f..%2fhealth",
        "/a%5c..%5chealth",
        "/%252e%252e/health",
        "/%68ealth",
        "/health;x=1",
        "/version",
        "/Version",
        "/internal",
        "/internal/v1/get_weights",
        "/INTERNAL/v1/get_weights",
        "//internal//v1//get_weights",
        "/%69nternal/v1/get_weights",
        "/internal%2fv1%2fbridge%2fsubmissions",
        "/benchmark-executions/1",
        "/benchmarks/run",
        "/benchmark/abc/execute",
        "/BENCHMARKS/x/Launch",
        "/%zz",
        "/%ff%fe",
        "/a%00b",
        &format!("/{}", "a".repeat(3000)),
    ];
    for slug in ["echo", "no-such-challenge"] {
        for attack in attacks {
            let (code, body) = raw_get(h.addr, &format!("/challenges/{slug}{attack}")).await;
            assert_eq!(code, 403, "{slug}{attack}: {body}");
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                json!({"detail": "Proxy path is not allowed"}),
                "{attack}"
            );
        }
    }
    let seen = h.up.paths.lock().unwrap().clone();
    assert!(seen.is_empty(), "upstream saw {seen:?}");

    // Legitimate look-alikes go through, normalized.
    for (path, forwarded) in [
        ("/healthz", "/healthz"),
        ("/api/health", "/api/health"),
        ("/a//b/./c/../d", "/a/b/d"),
        ("/tasks/", "/tasks/"),
        ("", "/"),
    ] {
        let (code, body) = raw_get(h.addr, &format!("/challenges/echo{path}")).await;
        assert_eq!(code, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["path"], forwarded, "{path}");
    }
}

#[tokio::test]
async fn unknown_and_inactive_challenges_are_404() {
    let h = harness(no_limits()).await;
    for slug in ["nope", "sleepy", "ECHO%2f"] {
        let r = h
            .client
            .get(format!("{}/challenges/{slug}/x", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{slug}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"detail": "Challenge not found"})
        );
    }
    // The slug is case-insensitive and the canonical one is sent upstream.
    let r = h
        .client
        .get(format!("{}/challenges/Echo/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["x-base-challenge-slug"], "echo");
}

#[tokio::test]
async fn headers_are_filtered_and_canonical_ones_set() {
    let h = harness(no_limits()).await;
    let r = h
        .client
        .post(format!("{}/challenges/echo/api/run?x=1&y=%2F", h.base))
        .header("X-Base-Verified-Hotkey", "5SpoofedHotkey")
        .header("X-Base-Challenge-Slug", "other")
        .header("X-Base-Proxy", "false")
        .header("Authorization", "Bearer stolen")
        .header("X-Admin-Token", ADMIN)
        .header("Cookie", "session=1")
        .header("X-Forwarded-For", "1.2.3.4")
        .header("X-Real-IP", "1.2.3.4")
        .header("X-Hotkey", "5H")
        .header("X-Signature", "00")
        .header("Connection", "x-hop")
        .header("X-Hop", "1")
        .header("X-Miner-Note", "kept")
        .header("Content-Type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let headers = v["headers"].as_object().unwrap();
    for dropped in [
        "x-base-verified-hotkey",
        "authorization",
        "x-admin-token",
        "cookie",
        "x-forwarded-for",
        "x-real-ip",
        "x-hotkey",
        "x-signature",
        "x-hop",
    ] {
        assert!(
            !headers.contains_key(dropped),
            "{dropped} forwarded: {headers:?}"
        );
    }
    assert_eq!(headers["x-base-proxy"], "true");
    assert_eq!(headers["x-base-challenge-slug"], "echo");
    assert_eq!(headers["x-miner-note"], "kept");
    assert_eq!(headers["content-length"], "7");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/api/run");
    assert_eq!(v["query"], "x=1&y=%2F");
    assert_eq!(v["body"], r#"{"a":1}"#);
}

#[tokio::test]
async fn server_sent_events_arrive_as_produced() {
    let h = harness(no_limits()).await;
    let mut r = h
        .client
        .get(format!("{}/challenges/echo/sse", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    // The upstream has not produced the second event yet: it waits for
    // us. If the proxy buffered the body this would time out.
    let first = tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .expect("first event not delivered while the stream is open")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    h.up.sse_second.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"data: two\n\n");
}

#[tokio::test]
async fn oversized_bodies_are_413_before_being_read() {
    let h = harness(no_limits()).await;
    const TEN_MB: usize = 10 * 1024 * 1024;
    // Declared: refused from the header, nothing forwarded.
    let r = h
        .client
        .post(format!("{}/challenges/echo/sink", h.base))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; TEN_MB])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    assert_eq!(h.up.sink_bytes.load(Ordering::SeqCst), 0);

    // Streamed (chunked, no length): cut off while streaming; the
    // upstream never sees the body complete.
    let produced = Arc::new(AtomicU64::new(0));
    let p = produced.clone();
    let chunks = futures::stream::iter(0..TEN_MB / 65536).map(move |_| {
        p.fetch_add(65536, Ordering::SeqCst);
        Ok::<_, std::io::Error>(Bytes::from(vec![1u8; 65536]))
    });
    let r = h
        .client
        .post(format!("{}/challenges/echo/sink", h.base))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let v: Value = r.json().await.unwrap();
            assert!(v["detail"].as_str().unwrap().contains("7500000"), "{v}");
        }
        // The server may close while the client is still writing; the
        // upstream-side assertions below are what matters.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !h.up.sink_complete.load(Ordering::SeqCst),
        "upstream got it all"
    );
    let seen = h.up.sink_bytes.load(Ordering::SeqCst);
    assert!(seen <= 7_500_000, "upstream saw {seen} bytes");

    // Under the limit streams through whole.
    let r = h
        .client
        .post(format!("{}/challenges/echo/sink", h.base))
        .body(vec![2u8; 1_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(h.up.sink_complete.load(Ordering::SeqCst));
}

#[tokio::test]
async fn dead_upstream_is_502_and_challenge_errors_pass_through() {
    let h = harness(no_limits()).await;
    let r = h
        .client
        .get(format!("{}/challenges/dead/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "Challenge unavailable"})
    );
    for code in [400u16, 404, 418, 500, 503] {
        let r = h
            .client
            .get(format!("{}/challenges/echo/status/{code}", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code);
        assert_eq!(r.headers()["x-challenge-said"], "no");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["detail"], format!("challenge says {code}"));
    }
}

#[tokio::test]
async fn clients_over_their_rate_get_429_with_retry_after() {
    let h = harness(ProxyConfig {
        rate_limit: RateLimit {
            per_minute: 6,
            burst: 2,
            include_loopback: true,
        },
        ..ProxyConfig::default()
    })
    .await;
    for _ in 0..2 {
        let r = h
            .client
            .get(format!("{}/challenges/echo/x", h.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = h
        .client
        .get(format!("{}/challenges/echo/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    // The bridges count too.
    let r = h
        .client
        .get(format!("{}/v1/challenges/echo/submissions/abc", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Other routes are not limited.
    let r = h
        .client
        .get(format!("{}/health", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn one_busy_challenge_is_capped_without_starving_others() {
    let h = harness(ProxyConfig {
        max_concurrent_per_challenge: 1,
        ..no_limits()
    })
    .await;
    // Another challenge on the same upstream, with its own permits.
    add_challenge(
        &h.registry,
        "echo2",
        h.upstream.clone(),
        ChallengeStatus::Inactive,
    )
    .await;
    let r = h
        .client
        .post(format!("{}/v1/admin/challenges/echo2/activate", h.base))
        .header("x-admin-token", ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    let client = h.client.clone();
    let url = format!("{}/challenges/echo/slow", h.base);
    let held =
        tokio::spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() });
    // Wait until the slow request holds the permit (it reached upstream).
    for _ in 0..500 {
        if h.up.paths.lock().unwrap().iter().any(|p| p == "/slow") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = h
        .client
        .get(format!("{}/challenges/echo/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);

    assert_eq!(busy.headers()["retry-after"], "1");
    let v: Value = busy.json().await.unwrap();
    assert!(v["detail"].as_str().unwrap().contains("busy"), "{v}");
    // The other challenge is unaffected.
    let r = h
        .client
        .get(format!("{}/challenges/echo2/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.up.slow_release.notify_one();
    assert_eq!(held.await.unwrap(), "done");
    let r = h
        .client
        .get(format!("{}/challenges/echo/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn signed(
    key: &MinerKey,
    path: &str,
    body: &[u8],
    nonce: &str,
    timestamp: i64,
) -> Vec<(&'static str, String)> {
    let t = SignedTarget {
        netuid: 100,
        slug: "echo",
        method: "POST",
        path,
    };
    let h = key.sign_request(&t, body, nonce, timestamp);
    h.pairs().iter().map(|(k, v)| (*k, v.to_string())).collect()
}

async fn upload(
    h: &Harness,
    headers: &[(&'static str, String)],
    body: &'static [u8],
) -> (u16, Value) {
    let mut req = h
        .client
        .post(format!("{}/v1/challenges/echo/submissions", h.base))
        .header("content-type", "application/json")
        .header("x-submission-filename", "agent.py")
        .header("x-base-verified-hotkey", "5SpoofedHotkey")
        .header("x-base-verified-uid", "7")
        .header("cookie", "session=1")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn signed_uploads_are_verified_then_bridged_with_fresh_headers() {
    let h = harness(no_limits()).await;
    let path = "/v1/challenges/echo/submissions";
    let body: &'static [u8] = br#"{"code":"print(42)"}"#;
    let now = chrono::Utc::now().timestamp();
    let good = signed(&miner(), path, body, "nonce-1", now);

    let (code, v) = upload(&h, &good, body).await;
    assert_eq!(code, 202, "{v}");
    let fwd = v["headers"].as_object().unwrap();
    assert_eq!(fwd["x-base-verified-hotkey"], miner().hotkey().as_str());
    assert_eq!(fwd["x-base-verified-uid"], "1");
    assert_eq!(fwd["x-base-verified-nonce"], "nonce-1");
    assert_eq!(fwd["x-base-request-hash"], body_sha256_hex(body).as_str());
    assert_eq!(fwd["x-base-challenge-slug"], "echo");
    assert_eq!(fwd["content-type"], "application/json");
    assert_eq!(fwd["x-submission-filename"], "agent.py");
    let token = fwd["authorization"].as_str().unwrap();
    assert!(token.starts_with("Bearer ") && token.len() > 40, "{token}");
    for dropped in [
        "x-hotkey",
        "x-signature",
        "x-nonce",
        "x-timestamp",
        "cookie",
    ] {
        assert!(!fwd.contains_key(dropped), "{dropped} forwarded");
    }
    assert_eq!(h.up.bridged.lock().unwrap().len(), 1);
    assert_eq!(v["body_sha256"], body_sha256_hex(body).as_str());

    // Replay: same nonce → 409, not forwarded.
    let (code, v) = upload(&h, &good, body).await;
    assert_eq!((code, v), (409, json!({"detail": "nonce already used"})));

    // Stale and future timestamps (well outside ±300 s: `now` was read
    // earlier, and a loaded machine may let seconds pass; the exact edge is
    // covered by the signature module's unit tests).
    for ts in [now - 330, now + 330] {
        let (code, v) = upload(&h, &signed(&miner(), path, body, "nonce-2", ts), body).await;
        assert_eq!((code, v), (401, json!({"detail": "stale signature"})));
    }

    // Forged: signed for another body, or by another key.
    let other_body = signed(&miner(), path, b"other", "nonce-3", now);
    let (code, v) = upload(&h, &other_body, body).await;
    assert_eq!((code, v), (401, json!({"detail": "invalid signature"})));
    // Another (unregistered) key's address with this signature: refused
    // from the head, before the body is read, as an unknown hotkey.
    let mut forged = signed(&miner(), path, body, "nonce-4", now);
    forged[0].1 = MinerKey::from_seed([5u8; 32]).unwrap().hotkey();
    let (code, v) = upload(&h, &forged, body).await;
    assert_eq!((code, v), (401, json!({"detail": "unknown hotkey"})));

    // Valid signature, hotkey not in the metagraph.
    let stranger = MinerKey::from_seed([9u8; 32]).unwrap();
    let (code, v) = upload(&h, &signed(&stranger, path, body, "nonce-5", now), body).await;
    assert_eq!((code, v), (401, json!({"detail": "unknown hotkey"})));

    // The owner's uid 0 is blocked.
    let (code, v) = upload(&h, &signed(&owner(), path, body, "nonce-6", now), body).await;
    assert_eq!(
        (code, v),
        (403, json!({"detail": "uid 0 is not allowed to submit"}))
    );

    // Missing headers, in order.
    let (code, v) = upload(&h, &[], body).await;
    assert_eq!((code, v), (401, json!({"detail": "missing x-hotkey"})));
    let (code, v) = upload(&h, &good[..2], body).await;
    assert_eq!((code, v), (401, json!({"detail": "missing x-nonce"})));

    // None of the refused ones reached the challenge.
    assert_eq!(h.up.bridged.lock().unwrap().len(), 1);

    // A fresh nonce works again.
    let (code, _) = upload(&h, &signed(&miner(), path, body, "nonce-7", now), body).await;
    assert_eq!(code, 202);
}

#[tokio::test]
async fn bridge_nonce_is_spent_even_when_the_challenge_is_down() {
    let h = harness(no_limits()).await;
    let path = "/v1/challenges/dead/submissions";
    let body: &'static [u8] = b"x";
    let t = SignedTarget {
        netuid: 100,
        slug: "dead",
        method: "POST",
        path,
    };
    let now = chrono::Utc::now().timestamp();
    let hdrs = miner().sign_request(&t, body, "n-dead", now);
    let send = || {
        let mut req = h.client.post(format!("{}{path}", h.base)).body(body);
        for (k, v) in hdrs.pairs() {
            req = req.header(k, v);
        }
        req.send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 502);
    let r = send().await.unwrap();
    assert_eq!(
        r.status(),
        409,
        "see docs/decisions.md: nonces are spent before forwarding"
    );
}

#[tokio::test]
async fn status_bridge_forwards_to_the_challenge() {
    let h = harness(no_limits()).await;
    let r = h
        .client
        .get(format!("{}/v1/challenges/echo/submissions/sub-1", h.base))
        .header("x-base-verified-hotkey", "5Spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "sub-1");
    assert!(v["headers"].get("x-base-verified-hotkey").is_none());
    assert_eq!(v["headers"]["x-base-challenge-slug"], "echo");
    let r = h
        .client
        .get(format!(
            "{}/v1/challenges/echo/submissions/a%2F..%2Fb",
            h.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn admin_writes_reach_the_proxy_at_once_and_admin_routes_still_work() {
    let h = harness(no_limits()).await;
    // Warm the directory, then register and activate a new challenge.
    let r = h
        .client
        .get(format!("{}/challenges/fresh/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .client
        .post(format!("{}/v1/admin/challenges", h.base))
        .header("x-admin-token", ADMIN)
        .json(&json!({
            "slug": "fresh", "name": "Fresh", "image": "base.local/echo:1", "version": "1",
            "status": "active", "internal_base_url": h.upstream,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = h
        .client
        .get(format!("{}/challenges/fresh/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .client
        .post(format!("{}/v1/admin/challenges/fresh/deactivate", h.base))
        .header("x-admin-token", ADMIN)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = h
        .client
        .get(format!("{}/challenges/fresh/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Lookups are served from memory: a write that bypasses the API (and
    // so does not invalidate) is not seen until the periodic refresh.
    let r = h
        .client
        .get(format!("{}/challenges/echo/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    h.registry
        .set_status("echo", ChallengeStatus::Inactive, "test")
        .await
        .unwrap();
    let r = h
        .client
        .get(format!("{}/challenges/echo/x", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a proxied request queried the database");
    let r = h
        .client
        .get(format!("{}/v1/admin/challenges/echo", h.base))
        .header("x-admin-token", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_orchestrators_endpoint_wins_over_the_records_url() {
    use base_sdk::orchestrator::{MockOrchestrator, ServiceState, ServiceStatus};
    let (up_addr, up) = start_upstream().await;
    let db = base_sdk::testing::sqlite().await.unwrap();
    let registry = Registry::new(db.store.clone(), Environment::Development);
    // The record points nowhere; the orchestrator knows where it runs
    // (as the process orchestrator of `dev` does).
    let dead = format!("http://127.0.0.1:{}", dead_port().await);
    add_challenge(&registry, "moved", dead, ChallengeStatus::Active).await;
    let mut orchestrator = MockOrchestrator::new();
    let endpoint = format!("http://{up_addr}");
    orchestrator
        .expect_challenge_status()
        .returning(move |slug| {
            Ok(ServiceStatus {
                slug: slug.clone(),
                state: ServiceState::Running,
                image: None,
                endpoint: Some(endpoint.clone()),
                message: None,
                started_at: None,
            })
        });
    let state = AppState::new(registry, AdminAuth::new(None), 100)
        .with_orchestrator(Arc::new(orchestrator))
        .with_proxy(Arc::new(Proxy::new(no_limits(), None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .get(format!("http://{addr}/challenges/moved/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.paths.lock().unwrap().as_slice(), ["/x"]);
    // Without a metagraph the bridge refuses uploads rather than guess.
    let t = SignedTarget {
        netuid: 100,
        slug: "moved",
        method: "POST",
        path: "/v1/challenges/moved/submissions",
    };
    let hdrs = miner().sign_request(&t, b"x", "n-1", chrono::Utc::now().timestamp());
    let mut req = client
        .post(format!("http://{addr}/v1/challenges/moved/submissions"))
        .body("x");
    for (k, v) in hdrs.pairs() {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "metagraph unavailable"})
    );
}

/// What a raw upstream does with one request.
enum Script {
    /// Writes these bytes and waits for the next request.
    Answer(&'static [u8]),
    /// Writes these bytes, then closes the connection without saying so
    /// (as a challenge's keep-alive timeout would), a moment later so the
    /// proxy sees the answer before the FIN.
    AnswerThenClose(&'static [u8]),
    /// Never answers.
    Hang,
    /// Closes the connection without answering.
    Close,
}

/// A bare HTTP/1.1 upstream: `script` decides, from the request's path
/// and its number on the connection (from 1), what to do; the count is of
/// connections accepted.
async fn raw_upstream(script: fn(&str, usize) -> Script) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    served += 1;
                    match script(head.split(' ').nth(1).unwrap_or(""), served) {
                        Script::Answer(bytes) => {
                            if s.write_all(bytes).await.is_err() {
                                return;
                            }
                        }
                        Script::AnswerThenClose(bytes) => {
                            let _ = s.write_all(bytes).await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            return;
                        }
                        Script::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        Script::Close => return,
                    }
                }
            });
        }
    });
    (addr, accepted)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn upstream_connections_are_reused_and_closed_ones_replaced() {
    let (keep_addr, keep_count) = raw_upstream(|_, _| Script::Answer(OK)).await;
    let (close_addr, close_count) = raw_upstream(|_, _| Script::AnswerThenClose(OK)).await;
    let db = base_sdk::testing::sqlite().await.unwrap();
    let registry = Registry::new(db.store.clone(), Environment::Development);
    let keep = format!("http://{keep_addr}");
    add_challenge(&registry, "keep", keep, ChallengeStatus::Active).await;
    let close = format!("http://{close_addr}");
    add_challenge(&registry, "close", close, ChallengeStatus::Active).await;
    let state = AppState::new(registry, AdminAuth::new(None), 100)
        .with_proxy(Arc::new(Proxy::new(no_limits(), None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for slug in ["keep", "close"] {
        for i in 0..5 {
            let r = client
                .get(format!("http://{addr}/challenges/{slug}/n{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{slug} request {i}");
            assert_eq!(r.text().await.unwrap(), "ok");
            // Long enough for the closing upstream's FIN to arrive.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // One connection served every sequential request...
    assert_eq!(keep_count.load(Ordering::SeqCst), 1);
    // ...and a connection the challenge closed while idle was noticed
    // and replaced, without failing a request.
    assert_eq!(close_count.load(Ordering::SeqCst), 5);
}

/// One answer read off a raw connection: status, headers (lower-case
/// names), body (de-chunked).
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits what a server sent on one connection into its answers (to
/// requests none of which was HEAD).
fn raw_answers(mut data: &[u8]) -> Vec<RawAnswer> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut storage);
        let httparse::Status::Complete(n) = res.parse(data).unwrap() else {
            panic!("incomplete answer: {:?}", String::from_utf8_lossy(data))
        };
        let headers: Vec<(String, String)> = res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).to_string(),
                )
            })
            .collect();
        let status = res.code.unwrap();
        data = &data[n..];
        let mut body = Vec::new();
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if get("transfer-encoding").is_some() {
            loop {
                let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
                let size_text = std::str::from_utf8(&data[..line_end]).unwrap();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16).unwrap();
                data = &data[line_end + 2..];
                if size == 0 {
                    let end = data.windows(2).position(|w| w == b"\r\n").unwrap();
                    data = &data[end + 2..];
                    break;
                }
                body.extend_from_slice(&data[..size]);
                data = &data[size + 2..];
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().unwrap();
            body.extend_from_slice(&data[..len]);
            data = &data[len..];
        }
        out.push(RawAnswer {
            status,
            headers,
            body,
        });
    }
    out
}

/// Writes `requests` at once on one connection (pipelined) and reads until
/// the server closes it.
async fn raw_session(addr: SocketAddr, requests: &[u8]) -> Vec<RawAnswer> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(requests).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    raw_answers(&buf)
}

#[tokio::test]
async fn fast_and_general_requests_share_one_pipelined_connection() {
    let h = harness(no_limits()).await;
    let answers = raw_session(
        h.addr,
        b"GET /challenges/echo/one?a=1 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /challenges/ECHO/%2e%2e/health HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /challenges/echo/two HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc\
          POST /challenges/echo/three HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n\
          GET /challenges/echo/four HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 403, 200, 200, 200, 200], "{answers:?}");
    let json = |i: usize| serde_json::from_slice::<Value>(&answers[i].body).unwrap();
    assert_eq!(
        (json(0)["path"].clone(), json(0)["query"].clone()),
        (json!("/one"), json!("a=1"))
    );
    assert_eq!(json(1), json!({"detail": "Proxy path is not allowed"}));
    assert_eq!(
        (json(2)["path"].clone(), json(2)["body"].clone()),
        (json!("/two"), json!("abc"))
    );
    // The chunked upload went to the general server, which carried on.
    assert_eq!(
        (json(3)["path"].clone(), json(3)["body"].clone()),
        (json!("/three"), json!("xyz"))
    );
    assert_eq!(json(4)["path"], "/four");
    assert_eq!(json(5)["status"], "ok");
    assert_eq!(
        h.up.paths.lock().unwrap().as_slice(),
        ["/one", "/two", "/three", "/four"]
    );
}

#[tokio::test]
async fn both_paths_forward_the_same_request() {
    let mut seen = Vec::new();
    for fast_path in [true, false] {
        let h = harness(ProxyConfig {
            fast_path,
            ..no_limits()
        })
        .await;
        let r = h
            .client
            .put(format!(
                "{}/challenges/Echo/a/./b/../c%20d/?q=%2F&x",
                h.base
            ))
            .header("X-Base-Verified-Hotkey", "5Spoof")
            .header("x-base-proxy", "false")
            .header("Authorization", "Bearer stolen")
            .header("Forwarded", "for=1.2.3.4")
            .header("Connection", "keep-alive, X-Hop")
            .header("X-Hop", "1")
            .header("Accept", "a")
            .header("X-Miner-Note", "kept")
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        headers.sort();
        let mut v = r.json::<Value>().await.unwrap();
        // The one difference: each run has its own upstream.
        let host = v["headers"]
            .as_object_mut()
            .unwrap()
            .remove("host")
            .unwrap();
        assert_eq!(
            Some(host.as_str().unwrap()),
            h.upstream.strip_prefix("http://")
        );
        seen.push((v, headers));
    }
    assert_eq!(seen[0], seen[1], "fast path vs general path");
    assert_eq!(seen[0].0["path"], "/a/c%20d/");
    assert_eq!(seen[0].0["headers"]["x-miner-note"], "kept");
    assert!(seen[0].0["headers"].get("x-hop").is_none());
}

/// A challenge whose paths ask for the answer's shape: one per framing,
/// two malformed ones, one that never answers; any other path is
/// answered on a connection's first request only (a second is read and
/// the connection closed unanswered).
fn scripted(path: &str, served: usize) -> Script {
    match path {
        "/until-close" => Script::AnswerThenClose(b"HTTP/1.1 200 OK\r\nx-kind: eof\r\n\r\nhello until close"),
        "/chunked" => Script::Answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n5;e=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        ),
        "/hints" => Script::Answer(
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        ),
        "/empty" => Script::Answer(b"HTTP/1.1 204 No Content\r\nx-kind: none\r\n\r\n"),
        "/both" => Script::Answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        "/bad-length" => Script::AnswerThenClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"),
        "/bad-chunk" => Script::AnswerThenClose(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        "/hang" => Script::Hang,
        _ if served > 1 => Script::Close,
        _ => Script::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh"),
    }
}

/// A master whose one challenge, "sc", is `upstream`.
async fn master_for(upstream: SocketAddr, config: ProxyConfig) -> (SocketAddr, TempSqlite) {
    let db = base_sdk::testing::sqlite().await.unwrap();
    let registry = Registry::new(db.store.clone(), Environment::Development);
    add_challenge(
        &registry,
        "sc",
        format!("http://{upstream}"),
        ChallengeStatus::Active,
    )
    .await;
    let state = AppState::new(registry, AdminAuth::new(None), 100)
        .with_proxy(Arc::new(Proxy::new(config, None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    (addr, db)
}

#[tokio::test]
async fn challenge_answers_of_every_framing_are_relayed() {
    let (up, connections) = raw_upstream(scripted).await;
    let (addr, _db) = master_for(
        up,
        ProxyConfig {
            upstream_timeout: Duration::from_millis(300),
            ..no_limits()
        },
    )
    .await;
    let get = |path: &str| format!("GET /challenges/sc{path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut session = String::new();
    for path in [
        "/until-close",
        "/chunked",
        "/hints",
        "/empty",
        "/both",
        "/bad-length",
        "/bad-chunk",
        "/hang",
    ] {
        session.push_str(&get(path));
    }
    session.push_str("GET /challenges/sc/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let a = raw_session(addr, session.as_bytes()).await;
    let statuses: Vec<u16> = a.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 201, 204, 200, 502, 502, 504, 200],
        "{a:?}"
    );
    // A body the challenge ended by closing arrives whole, re-framed, and
    // the miner's connection stays open.
    assert_eq!(a[0].body, b"hello until close");
    assert_eq!(a[0].header("transfer-encoding"), Some("chunked"));
    assert_eq!(a[0].header("x-kind"), Some("eof"));
    // The challenge sent no `Date`; the proxy adds one (RFC 9110 §6.6.1).
    assert!(
        a[0].header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{a:?}"
    );
    // Chunked bodies are relayed with their framing; `Trailer` is
    // hop-by-hop and dropped.
    assert_eq!(a[1].body, b"hello world");
    assert_eq!(a[1].header("trailer"), None);
    // The interim answer is not relayed, the final one is.
    assert_eq!(
        (a[2].body.as_slice(), a[2].header("link")),
        (&b"ok"[..], None)
    );
    assert_eq!((a[3].body.len(), a[3].header("x-kind")), (0, Some("none")));
    // Both framings: the chunked one wins, the length is not relayed.
    assert_eq!(
        (a[4].body.as_slice(), a[4].header("content-length")),
        (&b"ok"[..], None)
    );
    assert_eq!(a[8].body, b"fresh");
    // New connections: the first (closed by the challenge), after the
    // double-framed answer, after each broken answer, after the timeout.
    assert!(
        connections.load(Ordering::SeqCst) >= 5,
        "{}",
        connections.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_unanswered_is_retried_only_when_repeatable() {
    let (up, connections) = raw_upstream(scripted).await;
    let (addr, _db) = master_for(up, no_limits()).await;
    let a = raw_session(
        addr,
        b"GET /challenges/sc/1 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /challenges/sc/2 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /challenges/sc/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx\
          GET /challenges/sc/4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = a.iter().map(|a| a.status).collect();
    // 1 opens a connection; 2 finds it closed without an answer and goes
    // again on a new one; 3 (not repeatable) gets 502 when the same
    // happens; 4 opens the third connection.
    assert_eq!(statuses, [200, 200, 502, 200], "{a:?}");
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn shutdown_closes_idle_fast_path_connections() {
    let (up, _) = raw_upstream(scripted).await;
    let db = base_sdk::testing::sqlite().await.unwrap();
    let registry = Registry::new(db.store.clone(), Environment::Development);
    add_challenge(
        &registry,
        "sc",
        format!("http://{up}"),
        ChallengeStatus::Active,
    )
    .await;
    let state = AppState::new(registry, AdminAuth::new(None), 100)
        .with_proxy(Arc::new(Proxy::new(no_limits(), None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let signal = stop.clone();
    let served = tokio::spawn(base_server::serve(listener, state, async move {
        signal.notified().await
    }));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /challenges/sc/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The kept-alive connection is idle: shutdown closes it and returns.
    stop.notify_one();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serve did not return with an idle connection open")
        .unwrap()
        .unwrap();
    assert_eq!(s.read(&mut buf).await.unwrap(), 0, "connection left open");
}

#[tokio::test]
async fn head_answers_carry_no_body_on_either_outcome() {
    let h = harness(no_limits()).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"HEAD /challenges/echo/x HTTP/1.1\r\nHost: t\r\n\r\n\
          HEAD /challenges/nope/x HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /challenges/echo/last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    // Each head is followed directly by the next answer: a body after a
    // HEAD answer would be read as the start of the next one.
    let heads: Vec<&str> = text.split("\r\n\r\n").collect();
    assert!(heads[0].starts_with("HTTP/1.1 200 "), "{text}");
    assert!(heads[1].starts_with("HTTP/1.1 404 "), "{text}");
    assert!(heads[2].starts_with("HTTP/1.1 200 "), "{text}");
    assert!(heads[3].contains("\"path\":\"/last\""), "{text}");
}
