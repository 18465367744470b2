//! Request smuggling through the real listener (issue 13): one test per
//! framing trick a miner can try, on both of the proxy's paths (the
//! byte-level fast path and the general hyper path). A raw upstream reads
//! everything the proxy sends it with an independent strict HTTP/1.1
//! reader (`base_sdk::testing::strict_http`) and records each request,
//! each byte it cannot read and each byte left over; every trick must leave
//! the challenge with at most the one request the miner meant, nothing on
//! `/internal`, no identity header of the miner's, and a pooled
//! connection that the next miner's request uses cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base_sdk::auth::AdminAuth;
use base_sdk::config::Environment;
use base_sdk::model::ChallengeStatus;
use base_sdk::proxy::{Proxy, ProxyConfig, RateLimit};
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::testing::TempSqlite;
use base_sdk::testing::strict_http::{StrictError, StrictRequest, read_request};
use base_server::AppState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the upstream challenge saw, over all its connections.
#[derive(Default)]
struct Seen {
    /// Requests read cleanly, in order.
    requests: Vec<StrictRequest>,
    /// Bytes it could not read as a request (the reason, the bytes).
    unreadable: Vec<(StrictError, String)>,
    /// Per connection, bytes received and not (yet) part of a request.
    pending: Vec<usize>,
}

type Upstream = Arc<Mutex<Seen>>;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A bare HTTP/1.1 challenge that answers every request it reads with
/// `ok`, keeping its connections open.
async fn recording_upstream() -> (SocketAddr, Upstream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Upstream::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let seen = record.clone();
            let index = {
                let mut g = seen.lock().unwrap();
                g.pending.push(0);
                g.pending.len() - 1
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        match read_request(&buf) {
                            Ok(r) => {
                                buf.drain(..r.len);
                                seen.lock().unwrap().requests.push(r);
                                if s.write_all(OK).await.is_err() {
                                    return;
                                }
                            }
                            Err(StrictError::Incomplete) => break,
                            Err(e) => {
                                let text = String::from_utf8_lossy(&buf).into_owned();
                                let mut g = seen.lock().unwrap();
                                g.unreadable.push((e, text));
                                g.pending[index] = 0;
                                return;
                            }
                        }
                    }
                    seen.lock().unwrap().pending[index] = buf.len();
                }
            });
        }
    });
    (addr, seen)
}

/// A master (fast path on or off) whose one challenge, "sc", is
/// `upstream`.
async fn master_for(upstream: SocketAddr, fast_path: bool) -> (SocketAddr, TempSqlite) {
    let db = base_sdk::testing::sqlite().await.unwrap();
    let registry = Registry::new(db.store.clone(), Environment::Development);
    registry
        .create(
            NewChallenge {
                slug: "sc".into(),
                name: "sc".into(),
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
    let config = ProxyConfig {
        fast_path,
        upstream_timeout: Duration::from_secs(2),
        rate_limit: RateLimit {
            per_minute: 0,
            burst: 0,
            include_loopback: false,
        },
        ..ProxyConfig::default()
    };
    let state = AppState::new(registry, AdminAuth::new(None), 100)
        .with_proxy(Arc::new(Proxy::new(config, None)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(base_server::serve(listener, state, std::future::pending()));
    (addr, db)
}

/// Writes `raw` on a new connection and returns the status codes of the
/// answers read until the server closes it or stays quiet for a while.
async fn send(addr: SocketAddr, raw: &[u8]) -> Vec<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(800), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    // Status lines (hyper answers HTTP/1.0 in kind).
    let text = String::from_utf8_lossy(&got);
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A request to the challenge that reads back as a forged internal call.
const SMUGGLED: &str = "GET /internal/v1/get_weights HTTP/1.1\r\nHost: challenge-sc:8000\r\n\
    X-Base-Challenge-Slug: sc\r\nX-Base-Proxy: true\r\nX-Base-Verified-Hotkey: 5Forged\r\n\r\n";

/// What a trick must come to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Refused with this status; nothing reaches the challenge.
    Refused(u16),
    /// Exactly one request reaches the challenge, with this target and
    /// body; the miner's first answer is 200.
    One(&'static str, String),
}

fn one(target: &'static str, body: &str) -> Expect {
    Expect::One(target, body.to_string())
}

/// Runs the tricks `(name, raw, expect)` at the same time (each on its own
/// masters and upstreams).
async fn tricks(list: Vec<(&str, Vec<u8>, Expect)>) {
    futures::future::join_all(
        list.into_iter()
            .map(|(name, raw, expect)| async move { trick(name, &raw, expect).await }),
    )
    .await;
}

/// Sends `raw` through a fresh master on each path, then a plain request
/// on a new connection, and checks what the challenge saw.
async fn trick(name: &str, raw: &[u8], expect: Expect) {
    let mut statuses = Vec::new();
    for fast_path in [true, false] {
        let (up, seen) = recording_upstream().await;
        let (addr, _db) = master_for(up, fast_path).await;
        let answers = send(addr, raw).await;
        // The next miner, on a new connection: it must get its own answer
        // from a pooled upstream connection nothing was left on.
        let after = send(
            addr,
            b"GET /challenges/sc/after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        let ctx = format!("{name} (fast path {fast_path}): answers {answers:?}");
        assert_eq!(after, [200], "{ctx}: the next request was not answered");
        let g = seen.lock().unwrap();
        assert!(g.unreadable.is_empty(), "{ctx}: {:?}", g.unreadable);
        assert!(
            g.pending.iter().all(|p| *p == 0),
            "{ctx}: bytes left on an upstream connection: {:?}",
            g.pending
        );
        let targets: Vec<&str> = g.requests.iter().map(|r| r.target.as_str()).collect();
        for r in &g.requests {
            let path = r.target.split('?').next().unwrap_or_default();
            assert!(!path.contains("internal"), "{ctx}: {targets:?}");
            for (n, v) in r.headers.iter().chain(&r.trailers) {
                let n = n.to_ascii_lowercase().replace('_', "-");
                let canonical = (n == "x-base-proxy" && v == b"true")
                    || (n == "x-base-challenge-slug" && v == b"sc");
                assert!(
                    canonical
                        || !(n.starts_with("x-base-")
                            || n.starts_with("x-platform-")
                            || n.starts_with("x-forwarded-")
                            || n == "authorization"),
                    "{ctx}: miner header {n} reached the challenge"
                );
            }
        }
        let (mine, last) = g.requests.split_at(g.requests.len().saturating_sub(1));
        assert_eq!(
            last.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(),
            ["/after"],
            "{ctx}: {targets:?}"
        );
        match expect {
            Expect::Refused(status) => {
                assert_eq!(answers.first(), Some(&status), "{ctx}");
                assert!(mine.is_empty(), "{ctx}: {targets:?} reached the challenge");
            }
            Expect::One(target, ref body) => {
                assert_eq!(answers.first(), Some(&200), "{ctx}");
                assert_eq!(mine.len(), 1, "{ctx}: {targets:?}");
                assert_eq!(mine[0].target, target, "{ctx}");
                assert_eq!(String::from_utf8_lossy(&mine[0].body), *body, "{ctx}");
            }
        }
        statuses.push(answers);
    }
    assert_eq!(
        statuses[0], statuses[1],
        "{name}: the two paths answer differently"
    );
}

/// `POST /challenges/sc/x` with `headers` (CRLF-terminated lines) and
/// `body`.
fn post(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /challenges/sc/x HTTP/1.1\r\nHost: t\r\n{headers}\r\n{body}").into_bytes()
}

fn with_length(extra: &str, body: &str) -> Vec<u8> {
    post(&format!("{extra}Content-Length: {}\r\n", body.len()), body)
}

#[tokio::test]
async fn connection_nominating_content_length_is_refused() {
    // The critical one: the fast path dropped the length and forwarded
    // the body, which the challenge read as a second request.
    tricks(vec![
        (
            "connection: content-length",
            with_length("Connection: Content-Length\r\n", SMUGGLED),
            Expect::Refused(400),
        ),
        (
            "second connection header",
            with_length(
                "Connection: keep-alive\r\nConnection: content-length\r\n",
                SMUGGLED,
            ),
            Expect::Refused(400),
        ),
    ])
    .await;
}

#[tokio::test]
async fn connection_nominating_framing_or_identity_headers_is_refused() {
    let mut list: Vec<(&str, Vec<u8>, Expect)> = [
        ("transfer-encoding", "Transfer-Encoding"),
        ("host", "Host"),
        ("x-base-*", "X-Base-Proxy"),
        ("x-base-* in a list", "keep-alive, x-base-challenge-slug"),
        ("x-platform-*", "X-Platform-Challenge-Slug"),
        ("x-forwarded-for", "X-Forwarded-For"),
        ("authorization", "Authorization"),
        ("underscore look-alike", "Content_Length"),
    ]
    .into_iter()
    .map(|(name, nominated)| {
        let raw = with_length(&format!("Connection: {nominated}\r\n"), "hello");
        (name, raw, Expect::Refused(400))
    })
    .collect();
    list.push((
        "chunked, connection: transfer-encoding",
        post(
            "Transfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n",
            "5\r\nhello\r\n0\r\n\r\n",
        ),
        Expect::Refused(400),
    ));
    // Ordinary Connection tokens still work.
    list.push((
        "ordinary connection tokens",
        with_length("Connection: keep-alive, x-hop\r\nx-hop: 1\r\n", "hello"),
        one("/x", "hello"),
    ));
    tricks(list).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_forwards_one_request() {
    // CL.TE: the chunked body ends at once; what follows is the miner's
    // next request to the master, never a request to the challenge.
    let cl_te = format!("0\r\n\r\n{SMUGGLED}");
    // TE.CL: a short length, the chunked body carrying the request.
    let te_cl = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    tricks(vec![
        (
            "CL.TE",
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    cl_te.len()
                ),
                &cl_te,
            ),
            one("/x", ""),
        ),
        (
            "TE.CL",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &te_cl,
            ),
            one("/x", SMUGGLED),
        ),
    ])
    .await;
}

#[tokio::test]
async fn transfer_encoding_variants_never_reach_the_fast_path() {
    let chunked = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let mut list = Vec::new();
    // Read as chunked by both paths (hyper takes these spellings).
    for (name, te) in [
        ("capitalised", "Transfer-Encoding: Chunked\r\n"),
        ("upper case name", "TRANSFER-ENCODING: chunked\r\n"),
        ("tab before the value", "Transfer-Encoding:\tchunked\r\n"),
        ("trailing space", "Transfer-Encoding: chunked \r\n"),
        (
            "identity then chunked",
            "Transfer-Encoding: identity, chunked\r\n",
        ),
    ] {
        let raw = post(&format!("{te}Content-Length: 3\r\n"), &chunked);
        list.push((name, raw, one("/x", SMUGGLED)));
    }
    // Not a chunked final coding: refused.
    for (name, te) in [
        (
            "chunked then identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        ("identity", "Transfer-Encoding: identity\r\n"),
        ("xchunked", "Transfer-Encoding: xchunked\r\n"),
        ("gzip", "Transfer-Encoding: gzip\r\n"),
    ] {
        list.push((name, post(te, &chunked), Expect::Refused(400)));
    }
    // A name a lenient reader folds into transfer-encoding is only a
    // header here: the body is the length's, the look-alike is dropped.
    list.push((
        "underscore look-alike",
        post(
            &format!(
                "Transfer_Encoding: chunked\r\nContent-Length: {}\r\n",
                chunked.len()
            ),
            &chunked,
        ),
        one("/x", &chunked),
    ));
    tricks(list).await;
}

#[tokio::test]
async fn duplicate_and_malformed_lengths_are_refused() {
    let mut list = Vec::new();
    for (name, lengths) in [
        ("conflicting", "Content-Length: 5\r\nContent-Length: 90\r\n"),
        ("list", "Content-Length: 5, 90\r\n"),
        ("plus sign", "Content-Length: +5\r\n"),
        ("minus sign", "Content-Length: -5\r\n"),
        ("inner space", "Content-Length: 5 0\r\n"),
        ("hex", "Content-Length: 0x5\r\n"),
        ("equal list", "Content-Length: 5, 5\r\n"),
        ("empty", "Content-Length: \r\n"),
        ("huge", "Content-Length: 99999999999999999999999\r\n"),
    ] {
        let raw = post(lengths, &format!("hello{SMUGGLED}"));
        list.push((name, raw, Expect::Refused(400)));
    }
    // Forms some readers take and others do not: the body is the one the
    // proxy read, framed by the proxy's own length.
    for (name, lengths) in [
        (
            "repeated equal",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
        ),
        ("leading zeros", "Content-Length: 005\r\n"),
    ] {
        list.push((name, post(lengths, "hello"), one("/x", "hello")));
    }
    tricks(list).await;
}

#[tokio::test]
async fn malformed_head_lines_are_refused() {
    let list = vec![
        (
            "obs-fold",
            post("X-Note: a\r\n Content-Length: 5\r\n", "hello"),
        ),
        (
            "space before colon",
            post("Content-Length : 30\r\n", &SMUGGLED[..30]),
        ),
        ("tab before colon", post("Content-Length\t: 5\r\n", "hello")),
        ("non-token name", post("Content(Length): 5\r\n", "hello")),
        (
            "NUL in a value",
            post("X-Note: a\0b\r\nContent-Length: 5\r\n", "hello"),
        ),
        (
            "bare CR in a value",
            post("X-Note: a\rContent-Length: 5\r\n", "hello"),
        ),
        (
            "two spaces in the request line",
            b"GET  /challenges/sc/x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        ),
        (
            "space in the target",
            b"GET /challenges/sc/x /internal HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/1.2",
            b"GET /challenges/sc/x HTTP/1.2\r\nHost: t\r\n\r\n".to_vec(),
        ),
    ];
    tricks(
        list.into_iter()
            .map(|(n, raw)| (n, raw, Expect::Refused(400)))
            .collect(),
    )
    .await;
}

#[tokio::test]
async fn bare_lf_heads_are_reframed_by_the_proxy() {
    // httparse (under both paths) reads a bare LF as a line end; what is
    // forwarded is the proxy's own head, in CRLF, with its own length.
    tricks(vec![
        (
            "bare LF",
            b"POST /challenges/sc/x HTTP/1.1\nHost: t\nContent-Length: 5\n\nhello".to_vec(),
            one("/x", "hello"),
        ),
        (
            "one bare LF",
            b"POST /challenges/sc/x HTTP/1.1\r\nHost: t\nContent-Length: 5\r\n\r\nhello".to_vec(),
            one("/x", "hello"),
        ),
    ])
    .await;
}

#[tokio::test]
async fn request_line_and_target_tricks_reach_no_private_route() {
    tricks(vec![
        (
            "dot segments to internal",
            b"GET /challenges/sc/a/../internal/v1/get_weights HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            Expect::Refused(403),
        ),
        (
            "encoded dot segments",
            b"GET /challenges/sc/%2e%2e/internal/v1/get_weights HTTP/1.1\r\nHost: t\r\n\r\n"
                .to_vec(),
            Expect::Refused(403),
        ),
        (
            "absolute form",
            b"GET http://evil/challenges/sc/x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            one("/x", ""),
        ),
        (
            "absolute form to internal",
            b"GET http://challenge-sc:8000/internal/v1/get_weights HTTP/1.1\r\nHost: t\r\n\r\n"
                .to_vec(),
            Expect::Refused(404),
        ),
        (
            "internal only in the query",
            b"GET /challenges/sc/x?next=/internal HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            one("/x?next=/internal", ""),
        ),
    ])
    .await;
}

#[tokio::test]
async fn pipelined_requests_after_a_body_are_each_checked() {
    // The first is forwarded, the second refused (403), the third is the
    // master's own route (404): the challenge sees only the first.
    let raw = format!(
        "POST /challenges/sc/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
         GET /challenges/sc/internal/v1/get_weights HTTP/1.1\r\nHost: t\r\n\r\n\
         {SMUGGLED}"
    );
    tricks(vec![("pipelined", raw.into_bytes(), one("/x", "hello"))]).await;
}

#[tokio::test]
async fn http10_requests_are_framed_by_the_proxy() {
    let keep_alive = format!(
        "POST /challenges/sc/x HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\
         Content-Length: 5\r\n\r\nhello{SMUGGLED}"
    );
    let chunked = format!(
        "POST /challenges/sc/x HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
        SMUGGLED.len()
    );
    tricks(vec![
        (
            "HTTP/1.0 keep-alive",
            keep_alive.into_bytes(),
            one("/x", "hello"),
        ),
        (
            "HTTP/1.0 chunked",
            chunked.into_bytes(),
            Expect::Refused(400),
        ),
    ])
    .await;
}

#[tokio::test]
async fn legacy_and_look_alike_identity_headers_are_stripped() {
    let raw = with_length(
        "X-Platform-Challenge-Slug: other\r\nX-Platform-Verified-Hotkey: 5Forged\r\n\
         X_Base_Verified_Hotkey: 5Forged\r\nX-Base-Proxy: false\r\nX-Forwarded-For: 1.2.3.4\r\n",
        "hello",
    );
    tricks(vec![(
        "x-platform and underscores",
        raw,
        one("/x", "hello"),
    )])
    .await;
}

#[tokio::test]
async fn chunked_trailers_and_extensions_carry_no_identity() {
    let raw = post(
        "Transfer-Encoding: chunked\r\nTrailer: X-Base-Verified-Hotkey\r\n",
        "5;x-base-verified-hotkey=5F\r\nhello\r\n0\r\nX-Base-Verified-Hotkey: 5Forged\r\n\r\n",
    );
    tricks(vec![("trailers", raw, one("/x", "hello"))]).await;
}

#[tokio::test]
async fn a_body_on_the_status_bridge_does_not_poison_the_pool() {
    // The status bridge sends no body: a miner's length must not go with
    // it, or the challenge would read the next request as this body.
    let raw = format!(
        "GET /v1/challenges/sc/submissions/abc HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    tricks(vec![(
        "status bridge with a body",
        raw.into_bytes(),
        one("/v1/submissions/abc", ""),
    )])
    .await;
}
