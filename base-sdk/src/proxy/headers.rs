//! Which headers cross the proxy (CONTRACTS.md §3.2 rule 3), as pure
//! functions over header maps.
//!
//! Inbound, a miner controls every header, so anything a challenge might
//! read as a statement *by BASE* (every `x-base-*`), any credential
//! (`authorization`, cookies, the miner signature headers) and any claim
//! about the client's identity (`x-forwarded-*`, `x-real-ip`, …) is
//! dropped; then the proxy alone sets `X-Base-Proxy` and
//! `X-Base-Challenge-Slug`. Hop-by-hop headers (RFC 9110 §7.6.1), including
//! those the `Connection` header names, never cross in either direction.

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Base-Proxy`, set to `true` on every proxied request.
pub const X_BASE_PROXY: HeaderName = HeaderName::from_static("x-base-proxy");
/// `X-Base-Challenge-Slug`, the canonical slug the request was routed by.
pub const X_BASE_CHALLENGE_SLUG: HeaderName = HeaderName::from_static("x-base-challenge-slug");

/// Hop-by-hop headers of RFC 9110 §7.6.1, plus the legacy
/// `proxy-connection` and `keep-alive` that clients still send (lower
/// case; names are compared without regard to case).
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers that carry credentials or claims about who the client
/// is. Dropped so a challenge never mistakes a miner's claim for BASE's.
pub const IDENTITY: [&str; 16] = [
    "host",
    "authorization",
    "cookie",
    // The proxy reads the body itself; a client's `Expect: 100-continue`
    // has already been answered by our server.
    "expect",
    "forwarded",
    "x-admin-token",
    "x-hotkey",
    "x-signature",
    "x-nonce",
    "x-timestamp",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-rewrite-url",
];

/// Prefixes of request header names that are dropped whatever follows.
pub const IDENTITY_PREFIXES: [&str; 2] = ["x-base-", "x-forwarded-"];

fn listed(list: &[&str], name: &str) -> bool {
    list.iter().any(|l| l.eq_ignore_ascii_case(name))
}

fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// Whether `name` (any case) is hop-by-hop.
pub fn is_hop_by_hop_name(name: &str) -> bool {
    listed(&HOP_BY_HOP, name)
}

/// Whether a request header called `name` (any case) is dropped before
/// forwarding: the one rule both the general path (over [`HeaderMap`]s)
/// and the fast path (over the raw head, [`super::wire`]) apply.
pub fn is_dropped_request_name(name: &str) -> bool {
    is_hop_by_hop_name(name)
        || listed(&IDENTITY, name)
        || IDENTITY_PREFIXES.iter().any(|p| has_prefix(name, p))
}

/// Whether one of the `Connection` header values `connection` lists
/// `name` (any case), which makes it hop-by-hop for this message.
pub fn named_by_connection<'a>(connection: impl IntoIterator<Item = &'a str>, name: &str) -> bool {
    connection
        .into_iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name))
}

/// The `Connection` header's values that are text.
fn connection_values(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Whether a request header is dropped before forwarding.
pub fn is_dropped_request_header(name: &HeaderName) -> bool {
    is_dropped_request_name(name.as_str())
}

/// The headers sent upstream for a proxied request: the inbound ones
/// minus hop-by-hop, credential and identity headers, plus the canonical
/// `X-Base-Proxy: true` and `X-Base-Challenge-Slug: <slug>`.
pub fn request_headers(inbound: &HeaderMap, slug: &HeaderValue) -> HeaderMap {
    let connection = connection_values(inbound);
    // With `transfer-encoding` the body is re-framed (chunked) upstream; a
    // `content-length` sent beside it would disagree with the body and is
    // the classic request-smuggling shape.
    let chunked = inbound.contains_key(header::TRANSFER_ENCODING);
    let mut out = HeaderMap::with_capacity(inbound.len() + 2);
    for (name, value) in inbound {
        if is_dropped_request_header(name)
            || named_by_connection(connection.iter().copied(), name.as_str())
            || (chunked && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out.insert(X_BASE_PROXY, HeaderValue::from_static("true"));
    out.insert(X_BASE_CHALLENGE_SLUG, slug.clone());
    out
}

/// Removes, in place, the headers of a challenge's response that must not
/// reach the miner: hop-by-hop ones and those `Connection` names. The body
/// is relayed byte for byte (no decompression), so `content-length` and
/// `content-encoding` still describe it and are kept.
pub fn strip_response_headers(headers: &mut HeaderMap) {
    let connection: Vec<HeaderName> = connection_values(headers)
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in &HOP_BY_HOP {
        headers.remove(*name);
    }
    for name in &connection {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_identity_and_hop_by_hop_are_dropped() {
        let inbound = map(&[
            ("host", "master:18080"),
            ("authorization", "Bearer stolen"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "session=1"),
            ("x-admin-token", "t"),
            ("X-Base-Verified-Hotkey", "5Spoofed"),
            ("x-base-challenge-slug", "other"),
            ("x-base-proxy", "false"),
            ("x-hotkey", "5H"),
            ("x-signature", "00"),
            ("x-nonce", "n"),
            ("x-timestamp", "1"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("connection", "keep-alive, x-custom-hop"),
            ("keep-alive", "timeout=5"),
            ("x-custom-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("accept", "text/event-stream"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
            ("x-miner-note", "kept"),
        ]);
        let out = request_headers(&inbound, &HeaderValue::from_static("quiz"));
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        let mut expected = vec![
            "accept",
            "content-type",
            "x-request-id",
            "x-miner-note",
            "x-base-proxy",
            "x-base-challenge-slug",
        ];
        let mut got = names.clone();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(out.get(X_BASE_PROXY).unwrap(), "true");
        assert_eq!(out.get(X_BASE_CHALLENGE_SLUG).unwrap(), "quiz");
        assert_eq!(out.get_all(X_BASE_CHALLENGE_SLUG).iter().count(), 1);
    }

    #[test]
    fn content_length_never_travels_with_transfer_encoding() {
        let inbound = map(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        let out = request_headers(&inbound, &HeaderValue::from_static("s"));
        assert!(out.get("content-length").is_none() && out.get("transfer-encoding").is_none());
        let inbound = map(&[("content-length", "5")]);
        let out = request_headers(&inbound, &HeaderValue::from_static("s"));
        assert_eq!(out.get("content-length").unwrap(), "5");
    }

    #[test]
    fn repeated_headers_are_kept_in_order() {
        let inbound = map(&[("accept", "a"), ("accept", "b")]);
        let out = request_headers(&inbound, &HeaderValue::from_static("s"));
        let v: Vec<_> = out.get_all("accept").iter().collect();
        assert_eq!(v, ["a", "b"]);
    }

    #[test]
    fn response_keeps_body_framing_but_not_hop_by_hop() {
        let mut h = map(&[
            ("connection", "close, x-upstream-hop"),
            ("x-upstream-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("content-encoding", "gzip"),
            ("content-type", "text/event-stream"),
            ("x-challenge", "1"),
        ]);
        strip_response_headers(&mut h);
        let mut got: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "content-encoding",
                "content-length",
                "content-type",
                "x-challenge"
            ]
        );
    }

    proptest! {
        /// Whatever a client sends, no `x-base-*` header other than the two
        /// canonical ones (with the proxy's values) goes upstream.
        #[test]
        fn no_inbound_x_base_header_survives(
            suffix in "[a-z0-9-]{1,20}",
            value in "[ -~]{0,30}",
            upper in any::<bool>(),
        ) {
            let name = format!("x-base-{suffix}");
            let name = if upper { name.to_ascii_uppercase() } else { name };
            let mut inbound = HeaderMap::new();
            inbound.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(&value).unwrap(),
            );
            let out = request_headers(&inbound, &HeaderValue::from_static("slug"));
            for (k, v) in &out {
                if k.as_str().starts_with("x-base-") {
                    prop_assert!(k == X_BASE_PROXY || k == X_BASE_CHALLENGE_SLUG);
                    prop_assert!(v == "true" || v == "slug");
                }
            }
            prop_assert_eq!(out.len(), 2);
        }
    }
}
