//! Fuzzes the proxy's fast path in bytes (`base_sdk::proxy::wire`): the
//! miner's request head, the challenge's response head and the chunked
//! scanner read untrusted bytes from both sides of the proxy.
//!
//! None may panic; a request the fast path takes must lie within the
//! buffer, and the upstream request written from it must hold no CR or LF
//! inside a line (no header injection); the chunked scanner must never
//! report an end beyond the bytes it was given.

#![no_main]

use base_sdk::proxy::wire::{self, ChunkedScanner, Parsed, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut fields = [httparse::EMPTY_HEADER; wire::MAX_HEADERS];
    if let Parsed::Done(req) = wire::parse_request(data, &mut fields) {
        assert!(req.head_len <= data.len());
        let body = &data[req.head_len..req.len().min(data.len())];
        let mut out = Vec::new();
        let to = Target {
            prefix: "",
            path: "/p",
            authority: b"challenge:8000",
            slug: b"s",
        };
        wire::write_upstream_request(&mut out, &req, to, body);
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(out.len());
        for line in out[..head_end].split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(!line.contains(&b'\r'), "CR inside a forwarded header line");
        }
    }
    let mut out = Vec::new();
    let head = data.first().is_some_and(|b| b & 1 == 1);
    let _ = wire::parse_response(data, head, || "Thu, 01 Jan 1970 00:00:00 GMT".into(), &mut out);
    let mut scanner = ChunkedScanner::new();
    let (a, b) = data.split_at(data.len() / 2);
    for part in [a, b] {
        match scanner.feed(part) {
            Ok(Some(end)) => {
                assert!(end <= part.len());
                break;
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
});
