//! Fuzzes the parser of the miner signature headers (`X-Hotkey`,
//! `X-Signature`, `X-Nonce`, `X-Timestamp`) and the sr25519 verification
//! behind it.
//!
//! The input is split on NUL into up to four header values (a missing one
//! is an absent header). Parsing must never panic, and a parsed header set
//! must verify or refuse cleanly.

#![no_main]

use base_sdk::proxy::signature::{SignedHeaders, SignedTarget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let (h, s, n, t) = (parts.next(), parts.next(), parts.next(), parts.next());
    if let Ok(headers) = SignedHeaders::parse(h, s, n, t) {
        let _ = headers.check_fresh(1_700_000_000, 300);
        let target = SignedTarget {
            netuid: 100,
            slug: "fuzz",
            method: "POST",
            path: "/v1/challenges/fuzz/submissions",
        };
        let _ = headers.verify(&target, "00");
    }
});
