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
//!
//! The framing of a forwarded request is the proxy's own: a miner's
//! `Content-Length` never crosses (the client writes one from the body it
//! actually sends, or chunks it), and a `Connection` header that nominates
//! a framing or identity header is refused outright
//! ([`check_connection`]) — a miner has no business making those
//! hop-by-hop, and honouring it is how a body becomes a second request.

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

/// Prefixes of request header names that are dropped whatever follows:
/// BASE's own, the Python platform's legacy twin (`x-platform-*`, which
/// older challenge SDKs still read) and client-address claims.
pub const IDENTITY_PREFIXES: [&str; 3] = ["x-base-", "x-platform-", "x-forwarded-"];

/// Request headers that delimit the message or route it: never a miner's
/// to forward, nor to make hop-by-hop through `Connection`.
pub const FRAMING: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// Whether header-name bytes `a` and `b` are the same name to a lenient
/// reader: any case, and `_` read as `-` (CGI-style gateways map both to
/// `HTTP_X_BASE_…`, so `X_Base_Hotkey` must be dropped like `X-Base-Hotkey`).
fn same_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            let fold = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            fold(*x) == fold(*y)
        })
}

fn listed(list: &[&str], name: &str) -> bool {
    list.iter()
        .any(|l| same_name(l.as_bytes(), name.as_bytes()))
}

fn has_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && same_name(&name.as_bytes()[..prefix.len()], prefix.as_bytes())
}

/// Why a request's headers are refused (400) before anything is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `Connection` nominates a framing or identity header.
    #[error("Connection header may not nominate '{0}'")]
    ConnectionNominates(String),
    /// A `Connection` value that is not a list of tokens.
    #[error("malformed Connection header")]
    MalformedConnection,
}

/// Whether `name` (any case) is hop-by-hop.
pub fn is_hop_by_hop_name(name: &str) -> bool {
    listed(&HOP_BY_HOP, name)
}

/// Whether a request header called `name` (any case, `_` for `-`) is
/// dropped before forwarding: the one rule both the general path (over
/// [`HeaderMap`]s) and the fast path (over the raw head, [`super::wire`])
/// apply. Framing headers are among them: the proxy writes its own.
pub fn is_dropped_request_name(name: &str) -> bool {
    is_hop_by_hop_name(name)
        || listed(&FRAMING, name)
        || listed(&IDENTITY, name)
        || IDENTITY_PREFIXES.iter().any(|p| has_prefix(name, p))
}

/// Whether `name` is, or reads as (any case, `_` for `-`), a framing
/// header other than `Content-Length` and `Host` spelled as such: the
/// fast path leaves such requests to the general server.
pub fn is_framing_name(name: &str) -> bool {
    listed(&FRAMING, name)
        && !name.eq_ignore_ascii_case("content-length")
        && !name.eq_ignore_ascii_case("host")
}

/// Whether a `Connection` token nominates a header the proxy itself
/// frames or states (a framing header, or one dropped as identity): such a
/// request is refused rather than forwarded.
pub fn is_protected_name(token: &str) -> bool {
    listed(&FRAMING, token)
        || listed(&IDENTITY, token)
        || IDENTITY_PREFIXES.iter().any(|p| has_prefix(token, p))
}

/// Whether an HTTP token byte (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks the raw bytes of the `Connection` header values `values`: each a
/// comma-separated list of tokens, none of them [`is_protected_name`].
/// Both paths call it (the fast path over its raw head, the general path
/// through [`check_connection`]), so they refuse the same requests.
pub fn check_connection_values<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), HeaderError> {
    for value in values {
        for token in value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            if !token.iter().all(|b| is_tchar(*b)) {
                return Err(HeaderError::MalformedConnection);
            }
            // All tchars are ASCII.
            let token = std::str::from_utf8(token).map_err(|_| HeaderError::MalformedConnection)?;
            if is_protected_name(token) {
                return Err(HeaderError::ConnectionNominates(token.to_ascii_lowercase()));
            }
        }
    }
    Ok(())
}

/// [`check_connection_values`] over a header map (the general path).
pub fn check_connection(inbound: &HeaderMap) -> Result<(), HeaderError> {
    check_connection_values(
        inbound
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
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
/// minus hop-by-hop, credential and identity headers and the miner's
/// `content-length`, plus the canonical `X-Base-Proxy: true` and
/// `X-Base-Challenge-Slug: <slug>`. The client frames the body it sends
/// itself (a length from the body's exact size, or chunks), so the framing
/// upstream always matches the bytes forwarded — a miner's length, even a
/// valid one, could disagree with a body that was not sent (the status
/// bridge sends none) and leave the rest of a pooled connection to be read
/// as a body or a request.
pub fn request_headers(inbound: &HeaderMap, slug: &HeaderValue) -> HeaderMap {
    let connection = connection_values(inbound);
    let mut out = HeaderMap::with_capacity(inbound.len() + 2);
    for (name, value) in inbound {
        if is_dropped_request_header(name)
            || named_by_connection(connection.iter().copied(), name.as_str())
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
    fn the_miners_framing_never_travels() {
        let inbound = map(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        let out = request_headers(&inbound, &HeaderValue::from_static("s"));
        assert!(out.get("content-length").is_none() && out.get("transfer-encoding").is_none());
        // Nor alone: the client frames the body it sends itself.
        let inbound = map(&[("content-length", "5")]);
        let out = request_headers(&inbound, &HeaderValue::from_static("s"));
        assert!(out.get("content-length").is_none());
    }

    #[test]
    fn legacy_and_underscore_identity_headers_are_dropped() {
        let inbound = map(&[
            ("x-platform-challenge-slug", "other"),
            ("X-Platform-Verified-Hotkey", "5F"),
            ("x_base_verified_hotkey", "5F"),
            ("x_forwarded_for", "1.2.3.4"),
            ("content_length", "5"),
            ("content-length", "5"),
            ("x_note", "kept"),
        ]);
        let out = request_headers(&inbound, &HeaderValue::from_static("s"));
        let mut got: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, ["x-base-challenge-slug", "x-base-proxy", "x_note"]);
    }

    #[test]
    fn connection_may_not_nominate_framing_or_identity_headers() {
        for bad in [
            "content-length",
            "Content-Length",
            "keep-alive, transfer-encoding",
            "host",
            "x-base-proxy",
            "X-Platform-Anything",
            "x_forwarded_for",
            "authorization",
            "cookie",
        ] {
            let got = check_connection(&map(&[("connection", bad)]));
            assert!(
                matches!(got, Err(HeaderError::ConnectionNominates(_))),
                "{bad}: {got:?}"
            );
        }
        assert_eq!(
            check_connection(&map(&[
                ("connection", "close"),
                ("connection", "content_length")
            ])),
            Err(HeaderError::ConnectionNominates("content_length".into()))
        );
        assert_eq!(
            check_connection_values([&b"a b"[..]]),
            Err(HeaderError::MalformedConnection)
        );
        assert_eq!(
            check_connection_values([&b"close, \xff"[..]]),
            Err(HeaderError::MalformedConnection)
        );
        for ok in [
            "close",
            "keep-alive",
            "Keep-Alive, Upgrade, x-hop",
            "te",
            ", ,close",
        ] {
            assert_eq!(
                check_connection(&map(&[("connection", ok)])),
                Ok(()),
                "{ok}"
            );
        }
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
