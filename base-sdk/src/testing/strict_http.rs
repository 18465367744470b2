//! A strict HTTP/1.1 request reader (RFC 9112), written apart from httparse
//! and hyper, and the proxy's differential check built on it: the oracle
//! that the smuggling tests, the `proxy_differential` property test and
//! the fuzz target of the same name read forwarded requests with.
//!
//! A reader that shares code with the proxy would share its mistakes, so
//! this one is deliberately small and unforgiving: CRLF only, no obs-fold,
//! no whitespace before a colon, token names, one `Content-Length` of
//! plain digits or one `Transfer-Encoding: chunked`, never both. A request
//! the proxy forwards must read here as exactly one request whose body is
//! the one the proxy meant to send.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use crate::proxy::headers;
use crate::proxy::path;
use crate::proxy::wire::{self, Parsed, Target};

/// Why bytes are not one clean request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    /// The bytes end before the request does.
    #[error("incomplete request")]
    Incomplete,
    /// The request line is malformed.
    #[error("malformed request line")]
    RequestLine,
    /// A header line is malformed.
    #[error("malformed header line: {0}")]
    HeaderLine(&'static str),
    /// The framing headers are missing their one clear reading.
    #[error("ambiguous framing: {0}")]
    Framing(&'static str),
    /// The chunked body is malformed.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// One request as read by [`read_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrictRequest {
    /// The method.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// The minor version (`HTTP/1.x`).
    pub minor: u8,
    /// Every header, in order, name as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// Whether the body was chunked.
    pub chunked: bool,
    /// The trailer fields of a chunked body.
    pub trailers: Vec<(String, Vec<u8>)>,
    /// The bytes the request occupied.
    pub len: usize,
}

impl StrictRequest {
    /// Every value of the header `name` (any case).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The line starting at `at`, without its CRLF, and where the next one
/// starts. A CR or LF that is not part of the line's CRLF is an error.
fn line(buf: &[u8], at: usize) -> Result<(&[u8], usize), StrictError> {
    let rest = &buf[at..];
    let Some(i) = rest.iter().position(|b| *b == b'\r' || *b == b'\n') else {
        return Err(StrictError::Incomplete);
    };
    if rest[i] == b'\n' {
        return Err(StrictError::HeaderLine("bare LF"));
    }
    match rest.get(i + 1) {
        None => Err(StrictError::Incomplete),
        Some(b'\n') => Ok((&rest[..i], at + i + 2)),
        Some(_) => Err(StrictError::HeaderLine("bare CR")),
    }
}

fn request_line(l: &[u8]) -> Result<(String, String, u8), StrictError> {
    let mut parts = l.split(|b| *b == b' ');
    let (Some(m), Some(t), Some(v), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(StrictError::RequestLine);
    };
    if m.is_empty() || !m.iter().all(|b| is_tchar(*b)) {
        return Err(StrictError::RequestLine);
    }
    if t.is_empty() || !t.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(StrictError::RequestLine);
    }
    let minor = match v {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Err(StrictError::RequestLine),
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((text(m), text(t), minor))
}

fn field(l: &[u8]) -> Result<(String, Vec<u8>), StrictError> {
    let colon = l
        .iter()
        .position(|b| *b == b':')
        .ok_or(StrictError::HeaderLine("no colon"))?;
    let (name, value) = (&l[..colon], &l[colon + 1..]);
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        // Also a line starting with SP or HTAB (obs-fold) and whitespace
        // before the colon.
        return Err(StrictError::HeaderLine("name is not a token"));
    }
    let value = value.trim_ascii();
    if !value
        .iter()
        .all(|b| *b == b'\t' || (0x20..=0x7e).contains(b) || *b >= 0x80)
    {
        return Err(StrictError::HeaderLine("control byte in value"));
    }
    Ok((String::from_utf8_lossy(name).into_owned(), value.to_vec()))
}

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A chunked body: its data, its trailer fields, where it ends.
type Chunked = (Vec<u8>, Vec<(String, Vec<u8>)>, usize);

/// Reads a chunked body starting at `at`.
fn chunked(buf: &[u8], mut at: usize) -> Result<Chunked, StrictError> {
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    loop {
        let (l, next) = line(buf, at)?;
        let size = l.split(|b| *b == b';').next().unwrap_or_default();
        if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(StrictError::Chunked("chunk size"));
        }
        let n = usize::from_str_radix(std::str::from_utf8(size).unwrap_or("x"), 16)
            .map_err(|_| StrictError::Chunked("chunk size"))?;
        at = next;
        if n == 0 {
            // Trailer fields, then the empty line.
            loop {
                let (l, next) = line(buf, at)?;
                at = next;
                if l.is_empty() {
                    return Ok((body, trailers, at));
                }
                trailers.push(field(l)?);
            }
        }
        let end = at.checked_add(n).ok_or(StrictError::Chunked("size"))?;
        if buf.len() < end + 2 {
            return Err(StrictError::Incomplete);
        }
        body.extend_from_slice(&buf[at..end]);
        if &buf[end..end + 2] != b"\r\n" {
            return Err(StrictError::Chunked("data not ended by CRLF"));
        }
        at = end + 2;
    }
}

/// Reads the one request at the start of `buf`.
pub fn read_request(buf: &[u8]) -> Result<StrictRequest, StrictError> {
    let (l, mut at) = line(buf, 0)?;
    let (method, target, minor) = request_line(l)?;
    let mut headers = Vec::new();
    loop {
        let (l, next) = line(buf, at)?;
        at = next;
        if l.is_empty() {
            break;
        }
        headers.push(field(l)?);
    }
    let named = |n: &'static str| {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n))
            .collect::<Vec<_>>()
    };
    let te = named("transfer-encoding");
    let cl = named("content-length");
    let (body, trailers, len, is_chunked) = match (te.as_slice(), cl.as_slice()) {
        ([], []) => (Vec::new(), Vec::new(), at, false),
        ([], [(_, v)]) => {
            let n = digits(v).ok_or(StrictError::Framing("content-length"))?;
            let n = usize::try_from(n).map_err(|_| StrictError::Framing("content-length"))?;
            let end = at
                .checked_add(n)
                .ok_or(StrictError::Framing("content-length"))?;
            if buf.len() < end {
                return Err(StrictError::Incomplete);
            }
            (buf[at..end].to_vec(), Vec::new(), end, false)
        }
        ([(_, v)], []) if v.eq_ignore_ascii_case(b"chunked") && minor == 1 => {
            let (body, trailers, end) = chunked(buf, at)?;
            (body, trailers, end, true)
        }
        ([], _) => return Err(StrictError::Framing("repeated content-length")),
        (_, []) => return Err(StrictError::Framing("transfer-encoding")),
        _ => return Err(StrictError::Framing("content-length and transfer-encoding")),
    };
    Ok(StrictRequest {
        method,
        target,
        minor,
        headers,
        body,
        chunked: is_chunked,
        trailers,
        len,
    })
}

/// Reads `buf` as a sequence of requests that fill it exactly.
pub fn read_all(buf: &[u8]) -> Result<Vec<StrictRequest>, StrictError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let r = read_request(&buf[at..])?;
        at += r.len;
        out.push(r);
    }
    Ok(out)
}

/// Checks a request as forwarded to a challenge: exactly one request, in
/// origin form, its body `body` declared by one `Content-Length` (none
/// when empty), the one `Host`, the canonical `X-Base-*` headers and no
/// other identity header, and a target that is not a blocked route.
pub fn check_forwarded(forwarded: &[u8], body: &[u8]) -> Result<StrictRequest, String> {
    let mut all = read_all(forwarded).map_err(|e| format!("forwarded request unreadable: {e}"))?;
    if all.len() != 1 {
        return Err(format!("{} requests forwarded", all.len()));
    }
    let r = all.remove(0);
    if r.body != body {
        return Err("forwarded body differs".into());
    }
    let lengths: Vec<&[u8]> = r.all("content-length").collect();
    let want: Vec<String> = if body.is_empty() {
        vec![]
    } else {
        vec![body.len().to_string()]
    };
    if lengths
        .iter()
        .map(|v| String::from_utf8_lossy(v))
        .collect::<Vec<_>>()
        != want
    {
        return Err(format!(
            "declared lengths {lengths:?} for a body of {}",
            body.len()
        ));
    }
    if r.chunked || r.all("transfer-encoding").next().is_some() {
        return Err("forwarded with transfer-encoding".into());
    }
    if r.all("host").count() != 1 {
        return Err("not exactly one host".into());
    }
    for (name, value) in &r.headers {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "host" | "content-length" => {}
            "x-base-proxy" if value == b"true" => {}
            "x-base-challenge-slug" => {}
            _ if headers::is_dropped_request_name(name) => {
                return Err(format!("miner header {name} forwarded"));
            }
            _ => {}
        }
    }
    if r.all("x-base-proxy").count() != 1 || r.all("x-base-challenge-slug").count() != 1 {
        return Err("canonical headers not exactly once".into());
    }
    let path = r.target.split('?').next().unwrap_or_default();
    if !path.starts_with('/') || path::check(path).is_err() {
        return Err(format!(
            "forwarded to a blocked or malformed target {}",
            r.target
        ));
    }
    Ok(r)
}

/// How the proxy's two paths treat one input (see [`differential`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The fast path forwarded it (the forwarded bytes).
    Fast(Vec<u8>),
    /// The fast path wants more bytes.
    Partial,
    /// The fast path refused it before forwarding (the path rules).
    Refused,
    /// The fast path left it to the general server.
    General,
}

/// The challenge-side target a passthrough request is sent to.
const AUTHORITY: &[u8] = b"challenge-s:8000";

/// The request the general path forwards for the request `r` read off
/// the wire (its header rules, its framing: hyper's client writes a
/// length for a body of known size), or `None` when it refuses it.
pub fn general_forward(r: &StrictRequest) -> Option<Vec<u8>> {
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (r.target.as_str(), None),
    };
    let rest = path.strip_prefix("/challenges/")?;
    let (_, rest) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let encoded = path::check(rest).ok()?.encoded();
    let mut map = HeaderMap::new();
    for (n, v) in &r.headers {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).ok()?,
            HeaderValue::from_bytes(v).ok()?,
        );
    }
    headers::check_connection(&map).ok()?;
    let out = headers::request_headers(&map, &HeaderValue::from_static("s"));
    let mut bytes = format!("{} {encoded}", r.method).into_bytes();
    if let Some(q) = query {
        bytes.push(b'?');
        bytes.extend_from_slice(q.as_bytes());
    }
    bytes.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    bytes.extend_from_slice(AUTHORITY);
    bytes.extend_from_slice(b"\r\n");
    for (n, v) in &out {
        bytes.extend_from_slice(n.as_str().as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(v.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    if !r.body.is_empty() {
        bytes.extend_from_slice(format!("content-length: {}\r\n", r.body.len()).as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&r.body);
    Some(bytes)
}

/// The fast path's treatment of the first request in `input`.
pub fn fast_forward(input: &[u8]) -> Outcome {
    let mut fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
    let req = match wire::parse_request(input, &mut fields) {
        Parsed::Done(req) if input.len() >= req.len() => req,
        Parsed::Done(_) | Parsed::Partial => return Outcome::Partial,
        Parsed::General => return Outcome::General,
    };
    let Ok(checked) = path::check(req.rest) else {
        return Outcome::Refused;
    };
    let encoded = checked.encoded();
    let mut out = Vec::new();
    wire::write_upstream_request(
        &mut out,
        &req,
        Target {
            prefix: "",
            path: &encoded,
            authority: AUTHORITY,
            slug: b"s",
        },
        &input[req.head_len..req.len()],
    );
    Outcome::Fast(out)
}

/// The differential check for arbitrary request bytes `input`: whatever
/// the fast path forwards reads strictly as one request (see
/// [`check_forwarded`]) carrying the method, target and body the strict
/// reader finds in `input` — the fast path takes nothing it reads
/// differently — and is the request the general path forwards for the same
/// input, header for header. Whatever the general path's rules forward
/// for an input the strict reader takes passes [`check_forwarded`] too.
pub fn differential(input: &[u8]) -> Result<Outcome, String> {
    let strict = read_request(input);
    if let Ok(r) = &strict
        && let Some(general) = general_forward(r)
    {
        check_forwarded(&general, &r.body).map_err(|e| format!("general path: {e}"))?;
    }
    let outcome = fast_forward(input);
    let Outcome::Fast(forwarded) = &outcome else {
        return Ok(outcome);
    };
    let r = strict
        .map_err(|e| format!("the fast path took a request the strict reader refuses: {e}"))?;
    let f = check_forwarded(forwarded, &r.body).map_err(|e| format!("fast path: {e}"))?;
    if f.method != r.method {
        return Err(format!("method {} became {}", r.method, f.method));
    }
    let general =
        general_forward(&r).ok_or("the fast path forwarded what the general path refuses")?;
    let g = read_request(&general).map_err(|e| e.to_string())?;
    if (&f.target, &f.body) != (&g.target, &g.body) {
        return Err(format!("targets {} vs {}", f.target, g.target));
    }
    let mut fh = f.headers.clone();
    let mut gh = g.headers.clone();
    for h in [&mut fh, &mut gh] {
        for (n, _) in h.iter_mut() {
            n.make_ascii_lowercase();
        }
        h.sort();
    }
    if fh != gh {
        return Err(format!("headers differ: fast {fh:?} general {gh:?}"));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strict_reader_refuses_what_readers_disagree_on() {
        for bad in [
            &b"GET / HTTP/1.1\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
        ] {
            assert!(
                read_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let two = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        let all = read_all(two).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].body.as_slice(), all[1].body.as_slice()),
            (&b"abc"[..], &b"hi"[..])
        );
        assert_eq!(
            read_request(b"GET / HTTP/1.1\r\n"),
            Err(StrictError::Incomplete)
        );
    }
}
