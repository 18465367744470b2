//! The proxy's fast path in bytes: the HTTP/1.1 heads it reads and writes
//! itself and the chunked framing it relays, as pure functions over
//! buffers (the IO is in [`super::http1`]).
//!
//! A general HTTP server and client (hyper) spend most of the proxy's
//! user-space time building header maps, URIs and body channels that a
//! passthrough only copies (docs/benchmarks.md). The fast path parses the
//! miner's head in place (httparse), writes the upstream head straight
//! into a buffer with the same header rules ([`super::headers`]), and
//! relays the challenge's answer as bytes. It takes only the common shape
//! — HTTP/1.1, an origin-form target of plain characters, no body or a
//! short one with `Content-Length`, no `Transfer-Encoding` or `Expect` —
//! and gives everything else to the general server ([`Parsed::General`]),
//! which applies the same rules.

use std::io::Write as _;

use super::headers;

/// Most request or response headers the fast path reads.
pub const MAX_HEADERS: usize = 64;
/// Largest request or response head the fast path reads (bytes); a larger
/// request goes to the general server, a larger response is an error.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body the fast path forwards (it reads it whole first);
/// larger bodies stream through the general server.
pub const MAX_FAST_BODY: u64 = 64 * 1024;
/// Largest chunk extension or trailer section relayed (bytes).
const MAX_CHUNK_META: usize = 16 * 1024;

/// The route prefix of the passthrough.
const PREFIX: &str = "/challenges/";

/// Why a challenge's answer cannot be relayed (the miner gets 502, or the
/// connection is closed when the head was already sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The response head does not parse.
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    /// The response head is over [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// `Content-Length` values that are not one decimal number.
    #[error("invalid or conflicting content-length")]
    ContentLength,
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer-encoding")]
    TransferEncoding,
    /// `101 Switching Protocols`, never asked for (`Upgrade` is dropped).
    #[error("unexpected 101 Switching Protocols")]
    Upgrade,
    /// The chunked body is malformed.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
}

/// The outcome of reading a head from a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// More bytes are needed.
    Partial,
    /// A complete head.
    Done(T),
    /// Not a shape the fast path takes: hand the connection (with what was
    /// read) to the general server.
    General,
}

/// A miner's request the fast path forwards, borrowed from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'h, 'b> {
    /// Bytes of the head, up to and including the empty line.
    pub head_len: usize,
    /// The request method.
    pub method: &'b str,
    /// The slug as sent (not yet lower-cased).
    pub slug: &'b str,
    /// The still percent-encoded path after the slug (may be empty).
    pub rest: &'b str,
    /// The raw query, without `?`.
    pub query: Option<&'b str>,
    /// The body's length (`Content-Length`, 0 without one).
    pub body_len: u64,
    /// `Connection: close`: the connection ends after this answer.
    pub close: bool,
    /// Every header, as received.
    pub headers: &'h [httparse::Header<'b>],
}

impl Request<'_, '_> {
    /// Head and body: the bytes this request occupies in the buffer.
    pub fn len(&self) -> usize {
        self.head_len + self.body_len as usize
    }

    /// Whether this request occupies no bytes (never, for a parsed one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the answer has no body whatever its headers say.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    /// Whether the request may be sent again when a reused upstream
    /// connection turns out closed before any answer (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method,
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
        )
    }
}

/// Whether `b` may appear in a request target the fast path takes: the
/// unreserved, sub-delim and `:@/%?` characters of RFC 3986 — a strict
/// subset of what the general server accepts, so the fast path never
/// forwards a target the general one would refuse.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'%'
                | b'?'
        )
}

/// Whether the `Connection` header values of `headers` list `token`.
fn connection_lists(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers::named_by_connection(connection_values(headers), token)
}

fn connection_values<'a>(headers: &'a [httparse::Header<'a>]) -> impl Iterator<Item = &'a str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

/// A request's `Content-Length` as the fast path takes it: one to 19
/// digits, no leading zero, nothing else. Anything a reader could take
/// another way (a sign, a list, inner spaces, `007`) is not the fast
/// path's to decide.
fn canonical_length(value: &[u8]) -> Option<u64> {
    match value {
        [] | [b'0', _, ..] => None,
        v if v.len() > 19 || !v.iter().all(u8::is_ascii_digit) => None,
        v => std::str::from_utf8(v).ok()?.parse().ok(),
    }
}

/// Whether every LF of `head` ends a CRLF: a bare LF is a line end to some
/// readers and not to others.
fn only_crlf(head: &[u8]) -> bool {
    let mut prev = 0u8;
    head.iter().all(|&b| {
        let ok = b != b'\n' || prev == b'\r';
        prev = b;
        ok
    })
}

/// A decimal `Content-Length` value (no sign, no spaces inside).
fn decimal(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Reads a request head from `buf` into `headers` and decides whether the
/// fast path takes it.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Parsed<Request<'h, 'b>> {
    // httparse skips empty lines before the request line (RFC 9112 §2.2
    // allows it); the fast path takes only heads that start with one.
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return Parsed::General;
    }
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Parsed::Partial,
        // Too large, too many headers or malformed: the general server
        // answers (431, 400) as it always has.
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::General,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::General;
    };
    // A 2xx answer to CONNECT opens a tunnel: not a passthrough exchange.
    if method == "CONNECT" {
        return Parsed::General;
    }
    if !target.bytes().all(plain_target_byte) {
        return Parsed::General;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let Some(after) = path.strip_prefix(PREFIX) else {
        return Parsed::General;
    };
    let (slug, rest) = after.split_at(after.find('/').unwrap_or(after.len()));
    if slug.is_empty() {
        return Parsed::General;
    }
    // httparse reads a bare LF as a line end; the fast path takes only
    // heads every reader splits the same way.
    if !only_crlf(&buf[..head_len]) {
        return Parsed::General;
    }
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let mut body_len = None;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (body_len, canonical_length(h.value)) {
                (None, Some(n)) if n <= MAX_FAST_BODY => body_len = Some(n),
                _ => return Parsed::General,
            }
        } else if name.eq_ignore_ascii_case("expect")
            || headers::is_framing_name(name)
            // A `Connection` that nominates a framing or identity header
            // is refused (400) by the general path; so are values that
            // are not a token list.
            || (name.eq_ignore_ascii_case("connection")
                && headers::check_connection_values([h.value]).is_err())
        {
            // `Transfer-Encoding` in any form, a look-alike of a framing
            // header (`Content_Length`), `Expect`: the general server's.
            return Parsed::General;
        }
    }
    Parsed::Done(Request {
        head_len,
        method,
        slug,
        rest,
        query,
        body_len: body_len.unwrap_or(0),
        close: connection_lists(headers, "close"),
        headers,
    })
}

/// Where a request goes upstream.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The base URL's path (no trailing `/`, usually empty).
    pub prefix: &'a str,
    /// The checked, re-encoded path (starts with `/`).
    pub path: &'a str,
    /// `host[:port]` of the challenge.
    pub authority: &'a [u8],
    /// The canonical slug (`X-Base-Challenge-Slug`).
    pub slug: &'a [u8],
}

/// Appends to `out` the request sent to the challenge: `req`'s method, the
/// target, the challenge's `Host`, the headers the rules let through, the
/// canonical `X-Base-Proxy` and `X-Base-Challenge-Slug`, a `Content-Length`
/// of `body` (when not empty), then `body`. The framing is the proxy's
/// own: no header of the miner's can remove, repeat or override it.
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    req: &Request<'_, '_>,
    to: Target<'_>,
    body: &[u8],
) {
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(to.prefix.as_bytes());
    out.extend_from_slice(to.path.as_bytes());
    if let Some(q) = req.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(to.authority);
    out.extend_from_slice(b"\r\n");
    let has_connection = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    for h in req.headers {
        if headers::is_dropped_request_name(h.name)
            || (has_connection && connection_lists(req.headers, h.name))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-base-proxy: true\r\nx-base-challenge-slug: ");
    out.extend_from_slice(to.slug);
    out.extend_from_slice(b"\r\n");
    // As hyper's client frames the general path's: a length when there
    // is a body, nothing when there is none.
    if !body.is_empty() {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: relayed as it is, up to its last chunk and trailers.
    Chunked,
    /// Until the challenge closes: relayed re-framed as chunks.
    UntilClose,
}

/// A challenge's response head, as relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// An interim (1xx) answer of this many bytes: skipped, the final one
    /// follows.
    Interim(usize),
    /// The final answer.
    Final {
        /// Bytes of the head.
        head_len: usize,
        /// Status code.
        status: u16,
        /// How its body is delimited.
        framing: Framing,
        /// Whether the connection may carry another request afterwards.
        reusable: bool,
    },
}

/// Reads a challenge's response head from `buf` (the answer to a HEAD
/// request when `head`) and, for a final answer, appends the head the
/// miner gets to `out`: the status, the headers minus hop-by-hop ones and
/// those `Connection` names, a `Date` from `now` when the challenge sent
/// none (RFC 9110 §6.6.1: a forwarding recipient with a clock adds one),
/// and the framing of the relayed body. `Ok(None)`: more bytes are needed.
pub fn parse_response(
    buf: &[u8],
    head: bool,
    now: impl FnOnce() -> String,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, WireError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut storage);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(WireError::HeadTooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::HeadTooLarge),
        Err(e) => return Err(WireError::Head(e)),
    };
    let (Some(status), Some(version)) = (res.code, res.version) else {
        return Err(WireError::Head(httparse::Error::Status));
    };
    if status == 101 {
        return Err(WireError::Upgrade);
    }
    if (100..200).contains(&status) {
        return Ok(Some(Response::Interim(head_len)));
    }
    let fields = &*res.headers;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut lengths_seen = false;
    for h in fields {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` alone is relayed; a repeated header or a list
            // naming it twice is as unusable as gzip.
            let only_chunked = std::str::from_utf8(h.value)
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
            if !only_chunked || chunked.is_some() {
                return Err(WireError::TransferEncoding);
            }
            chunked = Some(());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            lengths_seen = true;
            for v in h.value.split(|b| *b == b',') {
                let n = decimal(v).ok_or(WireError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(WireError::ContentLength);
                }
                length = Some(n);
            }
        }
    }
    let no_body = head || status == 204 || status == 304;
    let framing = match (no_body, chunked, length) {
        (true, _, _) => Framing::Empty,
        (false, Some(()), _) => Framing::Chunked,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::UntilClose,
    };
    // A message with both framings may be a smuggling attempt: relay it
    // by the chunked one (RFC 9112 §6.3) and close the connection.
    let reusable = version == 1
        && !connection_lists(fields, "close")
        && framing != Framing::UntilClose
        && !(chunked.is_some() && lengths_seen);

    out.extend_from_slice(b"HTTP/1.1 ");
    let _ = write!(out, "{status}");
    out.push(b' ');
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let has_connection = fields
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection"));
    let mut has_date = false;
    for h in fields {
        has_date |= h.name.eq_ignore_ascii_case("date");
        let framing_header =
            h.name.eq_ignore_ascii_case("content-length") && framing != Framing::Empty;
        if framing_header
            || headers::is_hop_by_hop_name(h.name)
            || (has_connection && connection_lists(fields, h.name))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(now().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Response::Final {
        head_len,
        status,
        framing,
        reusable,
    }))
}

/// Appends one chunk holding `data` (not empty) to `out`: how a body
/// delimited by the challenge closing its connection is relayed.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// `b` must be `want`; otherwise the framing is malformed (`what`).
fn require_byte(b: u8, want: u8, what: &'static str) -> Result<(), WireError> {
    if b == want {
        Ok(())
    } else {
        Err(WireError::Chunked(what))
    }
}

/// The last chunk, ending a re-framed body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Finds where a chunked body ends as its bytes go by, so it can be
/// relayed unchanged and the connection reused.
#[derive(Debug, Default, Clone)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// Size of the chunk being read (digits so far, then bytes left).
    size: u64,
    digits: u8,
    /// Bytes of extensions or trailers so far.
    meta: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl ChunkedScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// One byte of a chunk extension or a trailer line (`what`): CR ends
    /// the line and moves to `then`; bare LF and NUL are refused; together
    /// they may not exceed [`MAX_CHUNK_META`].
    fn meta_byte(&mut self, b: u8, then: ChunkState, what: &'static str) -> Result<(), WireError> {
        match b {
            b'\r' => self.state = then,
            b'\n' | 0 => return Err(WireError::Chunked(what)),
            _ => {
                self.meta += 1;
                if self.meta > MAX_CHUNK_META {
                    return Err(WireError::Chunked("chunk extensions or trailers too long"));
                }
            }
        }
        Ok(())
    }

    /// Reads `data`, the body's next bytes; `Some(n)` when the body ends
    /// after the first `n` of them.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, WireError> {
        use ChunkState::*;
        let bad = WireError::Chunked;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err(bad("chunk size too large"));
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size << 4 | u64::from(d);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = Extension,
                    b'\r' if self.digits > 0 => self.state = SizeLf,
                    _ => return Err(bad("invalid chunk size")),
                },
                Extension => self.meta_byte(b, SizeLf, "chunk extension")?,
                SizeLf => {
                    require_byte(b, b'\n', "chunk size line not ended by CRLF")?;
                    self.digits = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let take =
                        (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    require_byte(b, b'\r', "chunk data not ended by CRLF")?;
                    self.state = DataLf;
                }
                DataLf => {
                    require_byte(b, b'\n', "chunk data not ended by CRLF")?;
                    self.state = Size;
                }
                TrailerStart if b == b'\r' => self.state = EndLf,
                TrailerStart => {
                    self.state = Trailer;
                    continue;
                }
                Trailer => self.meta_byte(b, TrailerLf, "trailer")?,
                TrailerLf => {
                    require_byte(b, b'\n', "trailer not ended by CRLF")?;
                    self.state = TrailerStart;
                }
                EndLf => {
                    require_byte(b, b'\n', "last chunk not ended by CRLF")?;
                    self.state = Done;
                    return Ok(Some(i + 1));
                }
                Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(if self.state == Done { Some(0) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Head length, method, slug, rest, query, body length, close.
    type Fields = (usize, String, String, String, Option<String>, u64, bool);

    fn parse(raw: &[u8]) -> Parsed<Fields> {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(raw, &mut h) {
            Parsed::Partial => Parsed::Partial,
            Parsed::General => Parsed::General,
            Parsed::Done(r) => Parsed::Done((
                r.head_len,
                r.method.to_string(),
                r.slug.to_string(),
                r.rest.to_string(),
                r.query.map(str::to_string),
                r.body_len,
                r.close,
            )),
        }
    }

    #[test]
    fn plain_passthrough_requests_take_the_fast_path() {
        let raw = b"GET /challenges/Echo/a/b%20c?x=1&y=%2F HTTP/1.1\r\nHost: m\r\n\r\nNEXT";
        assert_eq!(
            parse(raw),
            Parsed::Done((
                raw.len() - 4,
                "GET".into(),
                "Echo".into(),
                "/a/b%20c".into(),
                Some("x=1&y=%2F".into()),
                0,
                false
            ))
        );
        let raw =
            b"POST /challenges/q HTTP/1.1\r\nContent-Length: 3\r\nConnection: Close\r\n\r\nabc";
        let Parsed::Done((_, _, slug, rest, _, body, close)) = parse(raw) else {
            panic!("not parsed")
        };
        assert_eq!(
            (slug.as_str(), rest.as_str(), body, close),
            ("q", "", 3, true)
        );
        assert_eq!(
            parse(b"GET /challenges/echo/x HTTP/1.1\r\nHo"),
            Parsed::Partial
        );
    }

    #[test]
    fn other_shapes_go_to_the_general_server() {
        for raw in [
            &b"GET /health HTTP/1.1\r\n\r\n"[..],
            b"GET /v1/challenges/echo HTTP/1.1\r\n\r\n",
            b"GET /challenges/ HTTP/1.1\r\n\r\n",
            b"GET /challenges//x HTTP/1.1\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.0\r\n\r\n",
            b"CONNECT /challenges/echo/x HTTP/1.1\r\n\r\n",
            b"GET http://h/challenges/echo/x HTTP/1.1\r\n\r\n",
            b"GET /challenges/echo/a\"b HTTP/1.1\r\n\r\n",
            b"GET /challenges/echo/a{b} HTTP/1.1\r\n\r\n",
            b"GET /challenges/echo/a\\b HTTP/1.1\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nBad Header: 1\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            // Doubtful heads (issue 13): never forwarded from here.
            b"POST /challenges/echo/x HTTP/1.1\r\nConnection: Content-Length\r\nContent-Length: 1\r\n\r\nx",
            b"POST /challenges/echo/x HTTP/1.1\r\nConnection: keep-alive, transfer-encoding\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nConnection: HOST\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nConnection: x-base-proxy\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nConnection: X-Platform-Challenge-Slug\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nConnection: x_forwarded_for\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nConnection: authorization\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nConnection: a b\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nContent-Length: 01\r\n\r\nx",
            b"POST /challenges/echo/x HTTP/1.1\r\nContent-Length: 1 1\r\n\r\nx",
            b"POST /challenges/echo/x HTTP/1.1\r\nContent_Length: 1\r\n\r\nx",
            b"POST /challenges/echo/x HTTP/1.1\r\nTransfer_Encoding: chunked\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\r\nTRANSFER-ENCODING: identity\r\n\r\n",
            b"POST /challenges/echo/x HTTP/1.1\nContent-Length: 1\n\nx",
            b"GET /challenges/echo/x HTTP/1.1\r\nx: 1\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nx: 1\r\n y\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nx : 1\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nx: a\0b\r\n\r\n",
            b"GET /challenges/echo/x HTTP/1.1\r\nx: a\rb\r\n\r\n",
            b"GET  /challenges/echo/x HTTP/1.1\r\n\r\n",
            b"\r\nGET /challenges/echo/x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse(raw), Parsed::General, "{}", String::from_utf8_lossy(raw));
        }
        let mut big = b"GET /challenges/echo/x HTTP/1.1\r\nx-a: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 1, b'a');
        assert_eq!(parse(&big), Parsed::General);
    }

    fn upstream_request(raw: &[u8]) -> String {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Parsed::Done(req) = parse_request(raw, &mut h) else {
            panic!("not parsed")
        };
        let mut out = Vec::new();
        let body = &raw[req.head_len..req.len()];
        let to = Target {
            prefix: "/pre",
            path: "/a/b",
            authority: b"challenge-echo:8000",
            slug: b"echo",
        };
        write_upstream_request(&mut out, &req, to, body);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn upstream_heads_carry_only_what_the_rules_let_through() {
        let got = upstream_request(
            b"POST /challenges/echo/a/b?q=1 HTTP/1.1\r\nHost: master\r\nX-Base-Verified-Hotkey: 5Spoof\r\n\
              x-base-proxy: false\r\nAuthorization: Bearer x\r\nX-Forwarded-For: 1.2.3.4\r\n\
              Connection: keep-alive, X-Hop\r\nx-hop: 1\r\nAccept: a\r\naccept: b\r\n\
              Content-Length: 2\r\n\r\nhiEXTRA",
        );
        assert_eq!(
            got,
            "POST /pre/a/b?q=1 HTTP/1.1\r\nhost: challenge-echo:8000\r\nAccept: a\r\naccept: b\r\n\
             x-base-proxy: true\r\nx-base-challenge-slug: echo\r\ncontent-length: 2\r\n\r\nhi"
        );
        // Legacy identity headers and `_` look-alikes never cross; a
        // request without a body gets no length.
        let got = upstream_request(
            b"GET /challenges/echo/a/b HTTP/1.1\r\nX-Platform-Challenge-Slug: other\r\n\
              X_Base_Verified_Hotkey: 5Spoof\r\nx_forwarded_for: 1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            got,
            "GET /pre/a/b HTTP/1.1\r\nhost: challenge-echo:8000\r\n\
             x-base-proxy: true\r\nx-base-challenge-slug: echo\r\n\r\n"
        );
    }

    fn now() -> String {
        "Thu, 26 Nov 2026 14:00:00 GMT".into()
    }

    fn response(raw: &[u8], head: bool) -> Result<Option<(Response, String)>, WireError> {
        let mut out = Vec::new();
        Ok(parse_response(raw, head, now, &mut out)?.map(|r| (r, String::from_utf8(out).unwrap())))
    }

    #[test]
    fn response_heads_are_relayed_with_their_framing() {
        let raw = b"HTTP/1.1 200 Fine\r\nContent-Length: 5\r\nConnection: x-up\r\nx-up: 1\r\nKeep-Alive: 5\r\nx-c: 1\r\n\r\nhello";
        let (r, head) = response(raw, false).unwrap().unwrap();
        assert_eq!(
            r,
            Response::Final {
                head_len: raw.len() - 5,
                status: 200,
                framing: Framing::Length(5),
                reusable: true
            }
        );
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx-c: 1\r\ndate: Thu, 26 Nov 2026 14:00:00 GMT\r\ncontent-length: 5\r\n\r\n"
        );

        let (r, head) = response(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            r,
            Response::Final {
                framing: Framing::Chunked,
                reusable: true,
                ..
            }
        ));
        assert_eq!(
            head,
            "HTTP/1.1 201 Created\r\ndate: Thu, 26 Nov 2026 14:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );

        let (r, head) = response(b"HTTP/1.0 200 OK\r\nx: y\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(matches!(
            r,
            Response::Final {
                framing: Framing::UntilClose,
                reusable: false,
                ..
            }
        ));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nx: y\r\ndate: Thu, 26 Nov 2026 14:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );

        // HEAD keeps the length of the body it did not get.
        let (r, head) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert!(matches!(
            r,
            Response::Final {
                framing: Framing::Empty,
                reusable: true,
                ..
            }
        ));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\ndate: Thu, 26 Nov 2026 14:00:00 GMT\r\n\r\n"
        );
        let (r, _) = response(b"HTTP/1.1 204 No Content\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(matches!(
            r,
            Response::Final {
                framing: Framing::Empty,
                ..
            }
        ));

        // Both framings: chunked wins, the connection is not reused.
        let (r, head) = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            r,
            Response::Final {
                framing: Framing::Chunked,
                reusable: false,
                ..
            }
        ));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ndate: Thu, 26 Nov 2026 14:00:00 GMT\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let (r, _) = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            r,
            Response::Final {
                reusable: false,
                ..
            }
        ));

        let hints = b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n";
        assert_eq!(
            response(hints, false).unwrap().unwrap().0,
            Response::Interim(hints.len())
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\nContent-Le", false).unwrap(),
            None
        );
    }

    #[test]
    fn the_challenges_date_is_kept_and_a_missing_one_added() {
        let (_, head) = response(
            b"HTTP/1.1 200 OK\r\nDate: Mon, 02 Jan 2026 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nDate: Mon, 02 Jan 2026 00:00:00 GMT\r\ncontent-length: 0\r\n\r\n"
        );
        let (_, head) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(head.matches("date: ").count(), 1, "{head}");
    }

    #[test]
    fn unusable_responses_are_errors() {
        for (raw, want) in [
            (&b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..], WireError::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n", WireError::ContentLength),
            (b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n", WireError::ContentLength),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", WireError::TransferEncoding),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", WireError::TransferEncoding),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", WireError::Upgrade),
        ] {
            assert_eq!(response(raw, false).unwrap_err(), want, "{}", String::from_utf8_lossy(raw));
        }
        assert!(matches!(
            response(b"HTTP/1.1 2000 OK\r\n\r\n", false),
            Err(WireError::Head(_))
        ));
        // Repeated equal lengths are one length.
        let (r, _) = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            r,
            Response::Final {
                framing: Framing::Length(3),
                ..
            }
        ));
        let mut big = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
        big.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(response(&big, false).unwrap_err(), WireError::HeadTooLarge);
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_end() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let mut s = ChunkedScanner::new();
        assert_eq!(s.feed(body).unwrap(), Some(body.len() - 4));
        assert!(s.is_done());
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX",
            b"5\nhello",
            b"11111111111111111\r\n",
        ] {
            assert!(
                ChunkedScanner::new().feed(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(ChunkedScanner::new().feed(b"5\r\nhel").unwrap(), None);
    }

    /// A chunked encoding of `chunks` with optional trailers.
    fn encode(chunks: &[Vec<u8>], trailers: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            write_chunk(&mut out, c);
        }
        if trailers {
            out.extend_from_slice(b"0\r\nx-t: 1\r\n\r\n");
        } else {
            out.extend_from_slice(LAST_CHUNK);
        }
        out
    }

    proptest! {
        /// However a chunked body is cut into reads, its end is found at
        /// its last byte, never before.
        #[test]
        fn chunked_end_is_found_across_any_cuts(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
            trailers in any::<bool>(),
            cuts in prop::collection::vec(1usize..64, 0..40),
        ) {
            let body = encode(&chunks, trailers);
            let mut s = ChunkedScanner::new();
            let mut at = 0;
            let mut cuts = cuts.into_iter();
            let mut end = None;
            while at < body.len() {
                let n = cuts.next().unwrap_or(body.len()).min(body.len() - at);
                if let Some(k) = s.feed(&body[at..at + n]).unwrap() {
                    end = Some(at + k);
                    break;
                }
                at += n;
            }
            prop_assert_eq!(end, Some(body.len()));
        }

        /// Arbitrary bytes never panic the scanner or the head parsers.
        #[test]
        fn arbitrary_bytes_are_handled(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = ChunkedScanner::new().feed(&data);
            let mut out = Vec::new();
            let _ = parse_response(&data, false, now, &mut out);
            let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let _ = parse_request(&data, &mut h);
        }

        /// Whatever bytes a header value holds, a request the fast path
        /// takes is forwarded with one line per header it lets through:
        /// no CR or LF of the miner's ends up inside the upstream head.
        #[test]
        fn no_header_injection(value in prop::collection::vec(any::<u8>(), 0..40)) {
            let mut raw = b"GET /challenges/s/x HTTP/1.1\r\nx-note: ".to_vec();
            raw.extend_from_slice(&value);
            raw.extend_from_slice(b"\r\naccept: a\r\n\r\n");
            let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
            if let Parsed::Done(req) = parse_request(&raw, &mut h) {
                let mut out = Vec::new();
                write_upstream_request(&mut out, &req, Target { prefix: "", path: "/x", authority: b"a", slug: b"s" }, b"");
                let head = &out[..out.len() - 4];
                let lines: Vec<&[u8]> = head.split(|b| *b == b'\n').collect();
                for line in &lines {
                    prop_assert!(!line.strip_suffix(b"\r").unwrap_or(line).contains(&b'\r'));
                }
                // Request line, host, the miner's headers the rules let
                // through, the two canonical ones.
                let kept = req.headers.iter().filter(|f| !headers::is_dropped_request_name(f.name)).count();
                prop_assert_eq!(lines.len(), 2 + kept + 2);
            }
        }

        /// The fast path drops exactly the request headers the general
        /// path drops, whatever their case.
        #[test]
        fn both_paths_drop_the_same_request_headers(
            name in prop_oneof![
                prop::sample::select(headers::HOP_BY_HOP.to_vec()).prop_map(str::to_string),
                prop::sample::select(headers::IDENTITY.to_vec()).prop_map(str::to_string),
                "x-(base|platform|forwarded)-[a-z]{1,8}",
                "[a-z][a-z0-9-]{0,15}",
            ],
            upper in prop::collection::vec(any::<bool>(), 32),
        ) {
            let mixed: String = name
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, u)| if *u { c.to_ascii_uppercase() } else { c })
                .collect();
            let raw = format!("GET /challenges/s/x HTTP/1.1\r\n{mixed}: v\r\n\r\n");
            let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let Parsed::Done(req) = parse_request(raw.as_bytes(), &mut h) else {
                // `transfer-encoding` and `expect` requests are the general path's.
                prop_assert!(matches!(name.as_str(), "transfer-encoding" | "expect" | "content-length"));
                return Ok(());
            };
            let mut out = Vec::new();
            write_upstream_request(&mut out, &req, Target { prefix: "", path: "/x", authority: b"a", slug: b"s" }, b"");
            let forwarded = String::from_utf8(out).unwrap().contains(&format!("\r\n{mixed}: v\r\n"));
            let mut map = axum::http::HeaderMap::new();
            map.insert(axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), axum::http::HeaderValue::from_static("v"));
            let general = headers::request_headers(&map, &axum::http::HeaderValue::from_static("s"));
            prop_assert_eq!(forwarded, general.contains_key(name.as_str()));
        }
    }
}
