//! Differential property test of the proxy's two paths over request
//! bytes built from the framing tricks a miner can try (issue 13): for
//! every input, whatever the fast path (`wire::parse_request` and
//! `wire::write_upstream_request`) or the general path's rules forward
//! reads, with an independent strict HTTP/1.1 reader, as exactly one
//! request whose declared length is the body forwarded, with the same
//! method, target, headers and body on both paths and never a private
//! route (`base_sdk::testing::strict_http::differential`). The
//! `proxy_differential` fuzz target runs the same check on arbitrary bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base_sdk::testing::strict_http::{Outcome, check_forwarded, differential};
use proptest::prelude::*;

/// A request that reads as a forged internal call from BASE.
const SMUGGLED: &str = "GET /internal/v1/get_weights HTTP/1.1\r\nHost: c\r\nX-Base-Challenge-Slug: s\r\nX-Base-Verified-Hotkey: 5F\r\n\r\n";

fn request_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("GET /challenges/s/x HTTP/1.1".to_string()),
        4 => Just("POST /challenges/s/a/b?q=1&r=%2F HTTP/1.1".to_string()),
        1 => Just("PUT /challenges/S/x/ HTTP/1.1".to_string()),
        1 => Just("POST /challenges/s/internal/v1/x HTTP/1.1".to_string()),
        1 => Just("GET /challenges/s/%2e%2e/internal HTTP/1.1".to_string()),
        1 => Just("GET /challenges/s/a/../../internal HTTP/1.1".to_string()),
        1 => Just("GET http://h/challenges/s/x HTTP/1.1".to_string()),
        1 => Just("GET /challenges/s/x HTTP/1.0".to_string()),
        1 => Just("GET  /challenges/s/x HTTP/1.1".to_string()),
        1 => Just("GET /challenges/s/x HTTP/1.1 ".to_string()),
        1 => Just("\r\nGET /challenges/s/x HTTP/1.1".to_string()),
        1 => Just("get /challenges/s/x HTTP/1.1".to_string()),
        1 => Just("CONNECT /challenges/s/x HTTP/1.1".to_string()),
        2 => ("[A-Z]{1,7}", "/challenges/s(/[a-z0-9%.]{0,6}){0,3}(\\?[a-z=&/]{0,8})?")
            .prop_map(|(m, t)| format!("{m} {t} HTTP/1.1")),
    ]
}

fn header(body_len: usize) -> impl Strategy<Value = String> {
    let n = body_len;
    prop_oneof![
        6 => Just(format!("Content-Length: {n}")),
        1 => Just(format!("content-length:{n}")),
        1 => Just(format!("Content-Length: 0{n}")),
        1 => Just(format!("Content-Length: +{n}")),
        1 => Just(format!("Content-Length: {n}, {n}")),
        1 => Just(format!("Content-Length : {n}")),
        1 => Just(format!("Content_Length: {n}")),
        1 => Just(format!("Content-Length: {n} ")),
        1 => Just("Content-Length: 4".to_string()),
        3 => Just("Transfer-Encoding: chunked".to_string()),
        1 => Just("Transfer-Encoding: Chunked".to_string()),
        1 => Just("Transfer-Encoding: chunked, identity".to_string()),
        1 => Just("Transfer-Encoding: identity".to_string()),
        1 => Just("Transfer_Encoding: chunked".to_string()),
        1 => Just(" Transfer-Encoding: chunked".to_string()),
        1 => Just("Transfer-Encoding:\tchunked".to_string()),
        2 => Just("Connection: content-length".to_string()),
        1 => Just("Connection: Transfer-Encoding".to_string()),
        1 => Just("Connection: host".to_string()),
        1 => Just("Connection: x-base-proxy".to_string()),
        1 => Just("Connection: X-Forwarded-For".to_string()),
        1 => Just("Connection: x_base_x".to_string()),
        2 => Just("Connection: close".to_string()),
        2 => Just("Connection: keep-alive, x-hop".to_string()),
        1 => Just("x-hop: 1".to_string()),
        1 => Just("X-Base-Verified-Hotkey: 5Spoof".to_string()),
        1 => Just("X-Platform-Challenge-Slug: other".to_string()),
        1 => Just("x_base_hotkey: 5".to_string()),
        1 => Just("X-Forwarded-For: 1.2.3.4".to_string()),
        1 => Just("Host: evil".to_string()),
        1 => Just("Expect: 100-continue".to_string()),
        1 => Just("Authorization: Bearer x".to_string()),
        1 => Just("Trailer: x-base-proxy".to_string()),
        1 => Just("X-Note: a\nb".to_string()),
        1 => Just("X-Note: a\rb".to_string()),
        1 => Just("X-Note: a\0b".to_string()),
        1 => Just("Bad Name: v".to_string()),
        1 => Just("X-Fold: a\r\n b".to_string()),
        1 => Just("X-Obs: \u{e9}t\u{e9}".to_string()),
        4 => ("[a-zA-Z][a-zA-Z0-9_-]{0,10}", "[ -~\t]{0,12}").prop_map(|(k, v)| format!("{k}: {v}")),
    ]
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => Just(SMUGGLED.to_string()),
        2 => Just(format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len())),
        1 => Just(format!("0\r\n\r\n{SMUGGLED}")),
        2 => "[ -~]{0,40}",
    ]
}

/// A request built from tricky parts, its line ends sometimes bare LF.
fn input() -> impl Strategy<Value = Vec<u8>> {
    (request_line(), body(), any::<bool>(), 0u8..8).prop_flat_map(|(line, body, pipelined, lf)| {
        let len = body.len();
        prop::collection::vec(header(len), 0..6).prop_map(move |headers| {
            let eol = if lf == 0 { "\n" } else { "\r\n" };
            let mut raw = format!("{line}{eol}");
            for h in &headers {
                raw.push_str(h);
                raw.push_str(eol);
            }
            raw.push_str(eol);
            raw.push_str(&body);
            if pipelined {
                raw.push_str("GET /challenges/s/next HTTP/1.1\r\n\r\n");
            }
            raw.into_bytes()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn both_paths_forward_one_request_as_the_strict_reader_reads_it(raw in input()) {
        if let Err(e) = differential(&raw) {
            prop_assert!(false, "{e}\ninput: {:?}", String::from_utf8_lossy(&raw));
        }
    }

    #[test]
    fn arbitrary_bytes_after_a_plain_head(tail in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut raw = b"POST /challenges/s/x HTTP/1.1\r\n".to_vec();
        raw.extend_from_slice(&tail);
        if let Err(e) = differential(&raw) {
            prop_assert!(false, "{e}\ninput: {:?}", String::from_utf8_lossy(&raw));
        }
    }
}

#[test]
fn the_fast_path_takes_plain_requests() {
    for raw in [
        &b"GET /challenges/s/x HTTP/1.1\r\nHost: m\r\n\r\n"[..],
        b"POST /challenges/s/x?q=1 HTTP/1.1\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\nhello",
        b"POST /challenges/s/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    ] {
        let got = differential(raw).unwrap();
        assert!(matches!(got, Outcome::Fast(_)), "{got:?}");
    }
}

#[test]
fn doubtful_heads_are_never_forwarded_by_the_fast_path() {
    for raw in [
        // The critical one: the length nominated by Connection.
        format!("POST /challenges/s/x HTTP/1.1\r\nConnection: Content-Length\r\nContent-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
        "POST /challenges/s/x HTTP/1.1\r\nConnection: x-base-proxy\r\nContent-Length: 1\r\n\r\nx".into(),
        "POST /challenges/s/x HTTP/1.1\r\nConnection: x-platform-a\r\n\r\n".into(),
        "POST /challenges/s/x HTTP/1.1\r\nContent-Length: 01\r\n\r\nx".into(),
        "POST /challenges/s/x HTTP/1.1\r\nContent_Length: 1\r\n\r\nx".into(),
        "POST /challenges/s/x HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n".into(),
        "POST /challenges/s/x HTTP/1.1\nContent-Length: 1\n\nx".into(),
        "POST /challenges/s/x HTTP/1.1\r\nX: 1\nContent-Length: 1\r\n\r\nx".into(),
        "POST /challenges/s/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n".into(),
    ] {
        let got = differential(raw.as_bytes()).unwrap();
        assert_eq!(got, Outcome::General, "{raw}");
    }
}

#[test]
fn the_oracle_sees_a_smuggled_request() {
    // What the fast path forwarded before the fix for the first input
    // above: no length, the body a second request.
    let old = format!(
        "POST /x HTTP/1.1\r\nhost: c\r\nx-base-proxy: true\r\nx-base-challenge-slug: s\r\n\r\n{SMUGGLED}"
    );
    assert!(check_forwarded(old.as_bytes(), SMUGGLED.as_bytes()).is_err());
    let forged = "GET /x HTTP/1.1\r\nhost: c\r\nx-base-proxy: true\r\nx-base-challenge-slug: s\r\nx-platform-verified-hotkey: 5F\r\n\r\n";
    assert!(check_forwarded(forged.as_bytes(), b"").is_err());
    let internal = "GET /internal/v1/x HTTP/1.1\r\nhost: c\r\nx-base-proxy: true\r\nx-base-challenge-slug: s\r\n\r\n";
    assert!(check_forwarded(internal.as_bytes(), b"").is_err());
}
