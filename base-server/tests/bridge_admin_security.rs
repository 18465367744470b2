//! Denial-of-service tests of the signed upload bridge, `/v1/registry` and
//! the admin routes (issue 13, docs/security/bridge-admin.md), through the
//! real listener: raw sockets where the test is about what the server
//! does before, during or instead of reading a body, and source addresses
//! in 127/8 (all loopback on Linux) to be two different clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use base_sdk::auth::{AdminAuth, AdminLimits};
use base_sdk::config::Environment;
use base_sdk::metagraph::{MetagraphSnapshot, StaticMetagraph};
use base_sdk::model::ChallengeStatus;
use base_sdk::proxy::signature::{MinerKey, SignedTarget, body_sha256_hex};
use base_sdk::proxy::{Proxy, ProxyConfig, RateLimit};
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::store::{MockStore, StoreError};
use base_sdk::testing::TempSqlite;
use base_sdk::vault::Vault;
use base_server::AppState;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const ADMIN: &str = "admin-token-for-bridge-tests-0123";
const UPLOAD_PATH: &str = "/v1/challenges/echo/submissions";
/// How long an answer that must not wait for a body may take: generous,
/// for a loaded 2-core machine.
const PROMPT: Duration = Duration::from_secs(5);

fn key(seed: u8) -> MinerKey {
    MinerKey::from_seed([seed; 32]).unwrap()
}

/// uid 0, blocked by default.
fn owner() -> MinerKey {
    key(0)
}

/// uids 1, 2 and 3.
fn miner(n: u8) -> MinerKey {
    assert!((1..=3).contains(&n));
    key(n)
}

/// Not in the metagraph.
fn stranger() -> MinerKey {
    key(9)
}

/// The challenge's bridge endpoint counts what reaches it.
async fn start_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    async fn bridged(
        State(count): State<Arc<AtomicUsize>>,
        _headers: HeaderMap,
        body: Bytes,
    ) -> impl IntoResponse {
        count.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"body_sha256": body_sha256_hex(&body)})),
        )
    }
    let count = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/internal/v1/bridge/submissions", post(bridged))
        .with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

struct Master {
    addr: SocketAddr,
    bridged: Arc<AtomicUsize>,
    registry: Registry,
    _db: TempSqlite,
}

fn proxy_config() -> ProxyConfig {
    ProxyConfig {
        max_body_bytes: 1_000_000,
        rate_limit: RateLimit {
            per_minute: 0,
            burst: 0,
            include_loopback: false,
        },
        ..ProxyConfig::default()
    }
}

fn lenient_admin() -> AdminLimits {
    AdminLimits {
        per_minute: 0,
        burst: 0,
        max_failures: 1000,
        lockout_max: Duration::from_secs(60),
    }
}

async fn master(config: ProxyConfig, admin: AdminLimits) -> Master {
    let (up, bridged) = start_upstream().await;
    let db = base_sdk::testing::sqlite().await.unwrap();
    let vault = Arc::new(Vault::from_text(&Vault::generate_key()).unwrap());
    let registry = Registry::new(db.store.clone(), Environment::Development).with_vault(vault);
    registry
        .create(
            NewChallenge {
                slug: "echo".into(),
                name: "echo".into(),
                image: "base.local/echo:1".into(),
                version: "1".into(),
                status: Some(ChallengeStatus::Active),
                internal_base_url: Some(format!("http://{up}")),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let hotkeys: Vec<String> = [owner(), miner(1), miner(2), miner(3)]
        .iter()
        .map(MinerKey::hotkey)
        .collect();
    let metagraph = StaticMetagraph(MetagraphSnapshot::from_hotkeys(
        &hotkeys,
        chrono::Utc::now(),
    ));
    let state = AppState::new(
        registry.clone(),
        AdminAuth::new(Some(SecretString::from(ADMIN.to_string()))),
        100,
    )
    .with_proxy(Arc::new(Proxy::new(config, Some(Arc::new(metagraph)))))
    .with_admin_limits(admin);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    Master {
        addr,
        bridged,
        registry,
        _db: db,
    }
}

/// A connection to `to` from the loopback address `from`.
async fn connect(to: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// One answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (status, headers, a `Content-Length` body as JSON
/// when it parses) within `within`, or panics naming what it waited for.
async fn answer(s: &mut TcpStream, within: Duration, what: &str) -> Answer {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = resp.parse(&buf).unwrap() {
                let status = resp.code.unwrap();
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).to_string(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
                while buf.len() < head + length {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "connection closed inside the body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = serde_json::from_slice(&buf[head..head + length]).unwrap_or(Value::Null);
                return Answer {
                    status,
                    headers,
                    body,
                };
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before an answer");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| panic!("no answer within {within:?}: {what}"))
}

/// The four signature headers of `key` for `body`, signed now.
fn signature(key: &MinerKey, body: &[u8], nonce: &str) -> String {
    signature_at(key, body, nonce, chrono::Utc::now().timestamp())
}

fn signature_at(key: &MinerKey, body: &[u8], nonce: &str, timestamp: i64) -> String {
    let target = SignedTarget {
        netuid: 100,
        slug: "echo",
        method: "POST",
        path: UPLOAD_PATH,
    };
    key.sign_request(&target, body, nonce, timestamp)
        .pairs()
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

/// An upload head with `signature` headers and `framing` (the
/// `Content-Length` or `Transfer-Encoding` line).
fn head(signature: &str, framing: &str) -> String {
    format!(
        "POST {UPLOAD_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n{signature}{framing}\r\n"
    )
}

/// Opens an upload from `from`: sends the head and `first` body bytes,
/// and leaves the connection open.
async fn start_upload(m: &Master, from: &str, head: &str, first: &[u8]) -> TcpStream {
    let mut s = connect(m.addr, from).await;
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(first).await.unwrap();
    s
}

#[tokio::test]
async fn strangers_and_blocked_uids_are_refused_from_the_head_without_the_body() {
    let m = master(proxy_config(), lenient_admin()).await;
    // Each declares a body within the limit, sends a few bytes of it and
    // then nothing: the answer may not wait for the rest.
    let body = vec![b'x'; 900_000];
    let cases = [
        (stranger(), 401, "unknown hotkey"),
        (owner(), 403, "uid 0 is not allowed to submit"),
    ];
    for (i, (who, status, detail)) in cases.into_iter().enumerate() {
        let sig = signature(&who, &body, &format!("n-{i}"));
        let mut s = start_upload(
            &m,
            "127.0.0.2",
            &head(&sig, "Content-Length: 900000\r\n"),
            &body[..100],
        )
        .await;
        let a = answer(&mut s, PROMPT, detail).await;
        assert_eq!(
            (a.status, a.body),
            (status, json!({ "detail": detail })),
            "{detail}"
        );
    }
    // A client that waits for `100 Continue` before sending its body is
    // answered with the refusal instead: the body is never asked for.
    let sig = signature(&stranger(), &body, "n-expect");
    let mut s = start_upload(
        &m,
        "127.0.0.2",
        &head(&sig, "Content-Length: 900000\r\nExpect: 100-continue\r\n"),
        b"",
    )
    .await;
    let a = answer(&mut s, PROMPT, "refusal instead of 100 Continue").await;
    assert_eq!(
        (a.status, a.body),
        (401, json!({"detail": "unknown hotkey"}))
    );
    // Stale timestamps too (the clock is read before any body byte).
    let sig = signature_at(&miner(1), &body, "n-stale", 1_000_000_000);
    let mut s = start_upload(
        &m,
        "127.0.0.2",
        &head(&sig, "Content-Length: 900000\r\n"),
        &body[..100],
    )
    .await;
    let a = answer(&mut s, PROMPT, "stale").await;
    assert_eq!(
        (a.status, a.body),
        (401, json!({"detail": "stale signature"}))
    );
    assert_eq!(m.bridged.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_declared_oversize_upload_is_413_from_the_head_alone() {
    let m = master(proxy_config(), lenient_admin()).await;
    for (who, nonce) in [(miner(1), "n-big-1"), (stranger(), "n-big-2")] {
        let sig = signature(&who, b"", nonce);
        // 10^9 declared, not one body byte sent.
        let mut s = start_upload(
            &m,
            "127.0.0.2",
            &head(&sig, "Content-Length: 1000000000\r\n"),
            b"",
        )
        .await;
        let a = answer(&mut s, PROMPT, "413 for a declared 10^9 bytes").await;
        assert_eq!(
            (a.status, a.body),
            (
                413,
                json!({"detail": "request body larger than 1000000 bytes"})
            )
        );
    }
    assert_eq!(m.bridged.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_chunked_upload_over_the_limit_is_413_while_streaming() {
    let m = master(
        ProxyConfig {
            max_body_bytes: 1000,
            ..proxy_config()
        },
        lenient_admin(),
    )
    .await;
    let sig = signature(&miner(1), &[b'x'; 1500], "n-chunked");
    // 1500 bytes in 3 chunks, and no last chunk: the body never ends.
    let chunk = format!("1f4\r\n{}\r\n", "x".repeat(500));
    let mut s = start_upload(
        &m,
        "127.0.0.2",
        &head(&sig, "Transfer-Encoding: chunked\r\n"),
        chunk.repeat(3).as_bytes(),
    )
    .await;
    let a = answer(&mut s, PROMPT, "413 while streaming").await;
    assert_eq!(
        (a.status, a.body),
        (
            413,
            json!({"detail": "request body larger than 1000 bytes"})
        )
    );
    assert_eq!(m.bridged.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_upload_body_slower_than_the_deadline_is_408_and_frees_its_slot() {
    let m = master(
        ProxyConfig {
            upload_body_timeout: Duration::from_secs(2),
            max_concurrent_uploads_per_hotkey: 1,
            ..proxy_config()
        },
        lenient_admin(),
    )
    .await;
    let body = [b'y'; 100];
    let sig = signature(&miner(1), &body, "n-slow");
    let mut s = start_upload(
        &m,
        "127.0.0.2",
        &head(&sig, "Content-Length: 100\r\n"),
        &body[..10],
    )
    .await;
    let a = answer(&mut s, Duration::from_secs(15), "408 after the deadline").await;
    assert_eq!(
        (a.status, a.body),
        (
            408,
            json!({"detail": "request body not received within 2 s"})
        )
    );
    // The hotkey's one slot came back: a whole upload goes through.
    let sig = signature(&miner(1), &body, "n-after-slow");
    let mut s = start_upload(
        &m,
        "127.0.0.2",
        &head(&sig, "Content-Length: 100\r\n"),
        &body,
    )
    .await;
    let a = answer(&mut s, PROMPT, "upload after the slow one").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(m.bridged.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_uploads_are_capped_per_hotkey_and_in_all() {
    let m = master(
        ProxyConfig {
            max_concurrent_uploads: 2,
            max_concurrent_uploads_per_hotkey: 1,
            ..proxy_config()
        },
        lenient_admin(),
    )
    .await;
    let body = [b'z'; 50];
    let framing = "Content-Length: 50\r\n";
    // Miner 1 holds one upload open (half its body sent).
    let sig = signature(&miner(1), &body, "n-a");
    let mut a = start_upload(&m, "127.0.0.2", &head(&sig, framing), &body[..25]).await;
    // Let the server take the head in before the next one arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second upload by miner 1 is refused at once with 429.
    let sig = signature(&miner(1), &body, "n-b");
    let mut b = start_upload(&m, "127.0.0.3", &head(&sig, framing), &body[..25]).await;
    let refused = answer(&mut b, PROMPT, "per-hotkey cap").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("1 uploads in progress"),
        "{refused:?}"
    );
    // Miner 2 takes the second slot; miner 3 finds the bridge full: 503.
    let sig = signature(&miner(2), &body, "n-c");
    let mut c = start_upload(&m, "127.0.0.2", &head(&sig, framing), &body[..25]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sig = signature(&miner(3), &body, "n-d");
    let mut d = start_upload(&m, "127.0.0.3", &head(&sig, framing), &body[..25]).await;
    let refused = answer(&mut d, PROMPT, "global cap").await;
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        refused.body,
        json!({"detail": "too many uploads in progress (2); retry shortly"})
    );
    // The held uploads complete normally and give their slots back.
    a.write_all(&body[25..]).await.unwrap();
    assert_eq!(answer(&mut a, PROMPT, "held upload a").await.status, 202);
    c.write_all(&body[25..]).await.unwrap();
    assert_eq!(answer(&mut c, PROMPT, "held upload c").await.status, 202);
    let sig = signature(&miner(3), &body, "n-e");
    let mut e = start_upload(&m, "127.0.0.3", &head(&sig, framing), &body).await;
    assert_eq!(answer(&mut e, PROMPT, "after release").await.status, 202);
    assert_eq!(m.bridged.load(Ordering::SeqCst), 3);
}

fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// A store that only lists challenges (what `/v1/registry` reads),
/// counting the calls and failing while `down` is set.
fn counting_store(
    challenges: Vec<base_sdk::model::Challenge>,
) -> (MockStore, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(AtomicBool::new(false));
    let mut mock = MockStore::new();
    mock.expect_backend()
        .return_const(base_sdk::store::Backend::Sqlite);
    let (c, d) = (calls.clone(), down.clone());
    mock.expect_list_challenges().returning(move || {
        c.fetch_add(1, Ordering::SeqCst);
        if d.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut))
        } else {
            Ok(challenges.clone())
        }
    });
    (mock, calls, down)
}

#[tokio::test]
async fn the_registry_is_served_from_memory_and_survives_the_database() {
    // A real record to list, read once from SQLite.
    let db = base_sdk::testing::sqlite().await.unwrap();
    let real = Registry::new(db.store.clone(), Environment::Development);
    real.create(
        NewChallenge {
            slug: "echo".into(),
            name: "echo".into(),
            image: "base.local/echo:1".into(),
            version: "1".into(),
            status: Some(ChallengeStatus::Active),
            ..Default::default()
        },
        "test",
    )
    .await
    .unwrap();
    let (mock, calls, down) = counting_store(db.store.list_challenges().await.unwrap());
    let refresh = Duration::from_millis(200);
    let state = AppState::new(
        Registry::new(Arc::new(mock), Environment::Development),
        AdminAuth::new(None),
        100,
    )
    .with_proxy(Arc::new(Proxy::new(
        ProxyConfig {
            directory_refresh: refresh,
            ..proxy_config()
        },
        None,
    )));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    let client = client_from("127.0.0.2");
    let get = || async {
        let r = client
            .get(format!("http://{addr}/v1/registry"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let started = std::time::Instant::now();
    let (status, first) = get().await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["challenges"][0]["slug"], "echo");
    for _ in 0..50 {
        assert_eq!(get().await, (200, first.clone()));
    }
    // One query for the first request, then at most one per refresh
    // interval, however many requests came in between.
    let queries = calls.load(Ordering::SeqCst);
    let intervals = started.elapsed().as_millis() / refresh.as_millis();
    assert!(
        queries as u128 <= 2 + intervals,
        "{queries} database queries for 51 registry requests in {intervals} refresh intervals"
    );
    // The database goes away: the last view keeps being served, including
    // after refreshes have been tried (and failed).
    down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        tokio::time::sleep(refresh).await;
        assert_eq!(get().await, (200, first.clone()));
    }
    assert!(
        calls.load(Ordering::SeqCst) > queries,
        "the periodic refresh never ran"
    );
}

#[tokio::test]
async fn registry_changes_through_the_admin_api_show_on_the_next_request() {
    let m = master(
        ProxyConfig {
            // No periodic refresh during the test: only admin writes count.
            directory_refresh: Duration::from_secs(3600),
            ..proxy_config()
        },
        lenient_admin(),
    )
    .await;
    let client = client_from("127.0.0.2");
    let slugs = || async {
        let v: Value = client
            .get(format!("http://{}/v1/registry", m.addr))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{}={}", c["slug"].as_str().unwrap(), c["status"]))
            .collect::<Vec<_>>()
    };
    assert_eq!(slugs().await, ["echo=\"active\""]);
    let r = client
        .post(format!("http://{}/v1/admin/challenges", m.addr))
        .header("x-admin-token", ADMIN)
        .json(&json!({
            "slug": "fresh", "name": "Fresh", "image": "base.local/echo:1",
            "version": "1", "status": "active",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(slugs().await, ["echo=\"active\"", "fresh=\"active\""]);
    let r = client
        .post(format!(
            "http://{}/v1/admin/challenges/fresh/deactivate",
            m.addr
        ))
        .header("x-admin-token", ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(slugs().await, ["echo=\"active\"", "fresh=\"inactive\""]);
    // A write that bypasses the API (so does not invalidate) is not seen
    // before the periodic refresh: requests are answered from memory.
    m.registry
        .set_status("echo", ChallengeStatus::Inactive, "test")
        .await
        .unwrap();
    assert_eq!(
        slugs().await,
        ["echo=\"active\"", "fresh=\"inactive\""],
        "a registry request queried the database"
    );
}

/// GET an admin route from `from` with `token`.
async fn admin_get(m: &Master, client: &reqwest::Client, token: &str) -> (u16, Option<String>) {
    let r = client
        .get(format!("http://{}/v1/admin/challenges", m.addr))
        .header("x-admin-token", token)
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry)
}

#[tokio::test]
async fn bad_admin_tokens_lock_out_that_address_and_not_others() {
    let m = master(
        proxy_config(),
        AdminLimits {
            max_failures: 3,
            ..lenient_admin()
        },
    )
    .await;
    let attacker = client_from("127.0.0.2");
    let admin = client_from("127.0.0.3");
    for _ in 0..3 {
        assert_eq!(admin_get(&m, &attacker, "guess").await.0, 401);
    }
    // Locked out: 429 at once, even with the right token, with a wait.
    let (status, retry) = admin_get(&m, &attacker, ADMIN).await;
    assert_eq!(status, 429);
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry), "{retry}");
    assert_eq!(admin_get(&m, &attacker, "guess").await.0, 429);
    // Another address with the right token is not affected.
    assert_eq!(admin_get(&m, &admin, ADMIN).await.0, 200);
    // Nor is the public API for the locked-out address.
    let r = attacker
        .get(format!("http://{}/v1/registry", m.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_routes_are_rate_limited_per_address() {
    let m = master(
        proxy_config(),
        AdminLimits {
            per_minute: 6,
            burst: 3,
            ..lenient_admin()
        },
    )
    .await;
    let busy = client_from("127.0.0.2");
    for _ in 0..3 {
        assert_eq!(admin_get(&m, &busy, ADMIN).await.0, 200);
    }
    let (status, retry) = admin_get(&m, &busy, ADMIN).await;
    assert_eq!(status, 429);
    assert!(retry.is_some());
    assert_eq!(admin_get(&m, &client_from("127.0.0.3"), ADMIN).await.0, 200);
}

/// Everything the test process logs, from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || SharedWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    })
    .clone()
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn failed_admin_authentications_are_logged_without_the_credential() {
    let logs = captured_logs();
    let m = master(proxy_config(), lenient_admin()).await;
    let client = client_from("127.0.0.2");
    let guesses = [
        "Guessed-Admin-Token-7f3a9c",
        // Close to the real one: nothing of it may show either.
        "admin-token-for-bridge-tests-0124",
    ];
    for guess in guesses {
        assert_eq!(admin_get(&m, &client, guess).await.0, 401);
    }
    let r = client
        .get(format!("http://{}/v1/admin/audit", m.addr))
        .header("authorization", "Bearer Bearer-Guess-55e1d0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(admin_get(&m, &client, ADMIN).await.0, 200);
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("admin authentication failed"))
        .collect();
    assert_eq!(failures.len(), 3, "{text}");
    for line in &failures {
        assert!(line.contains("127.0.0.2"), "{line}");
        assert!(line.contains("wrong credential"), "{line}");
    }
    assert!(failures[2].contains("/v1/admin/audit"), "{}", failures[2]);
    // No 8-character piece of any credential sent appears in the log.
    for secret in guesses
        .iter()
        .copied()
        .chain(["Bearer-Guess-55e1d0", ADMIN])
    {
        for window in secret.as_bytes().windows(8) {
            let piece = std::str::from_utf8(window).unwrap();
            assert!(!text.contains(piece), "{piece:?} of a credential logged");
        }
    }
}

/// Behind a trusted reverse proxy (`BASE_TRUSTED_PROXIES`) the admin guard
/// counts the client the proxy names, as the passthrough does: one guesser
/// behind the proxy is locked out, another client behind it is not, and a
/// client that is not a trusted proxy cannot dodge its lockout by sending
/// `X-Forwarded-For`.
#[tokio::test]
async fn admin_lockout_follows_the_client_a_trusted_proxy_names() {
    let m = master(
        ProxyConfig {
            trusted_proxies: "127.0.0.4".parse().unwrap(),
            ..proxy_config()
        },
        AdminLimits {
            max_failures: 2,
            ..lenient_admin()
        },
    )
    .await;
    let via_proxy = client_from("127.0.0.4");
    let get = |client: &reqwest::Client, forwarded: &str, token: &str| {
        client
            .get(format!("http://{}/v1/admin/challenges", m.addr))
            .header("x-admin-token", token.to_string())
            .header("x-forwarded-for", forwarded.to_string())
            .send()
    };
    for _ in 0..2 {
        let r = get(&via_proxy, "198.51.100.7", "guess").await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = get(&via_proxy, "198.51.100.7", ADMIN).await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "the guesser behind the proxy is locked out"
    );
    let r = get(&via_proxy, "198.51.100.8", ADMIN).await.unwrap();
    assert_eq!(r.status(), 200, "another client behind the proxy is not");

    // An untrusted peer's X-Forwarded-For is ignored: its own address is counted.
    let direct = client_from("127.0.0.5");
    for n in 0..2 {
        let forged = format!("203.0.113.{n}");
        let r = get(&direct, &forged, "guess").await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = get(&direct, "203.0.113.99", ADMIN).await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "a forged X-Forwarded-For does not dodge the lockout"
    );
}
