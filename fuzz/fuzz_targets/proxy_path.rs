//! Fuzzes the public proxy's path normalizer with arbitrary bytes.
//!
//! The path after `/challenges/{slug}` is the most attacked input BASE has
//! (CONTRACTS.md §3.2). Whatever the bytes, `check` must not panic, and
//! whatever it allows must be a fixed point (checking the forwarded path
//! again allows it unchanged) that never names a private route.

#![no_main]

use base_sdk::proxy::path::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Request targets are ASCII on the wire; lossy conversion also feeds
    // the decoder the replacement characters of invalid UTF-8.
    let raw = String::from_utf8_lossy(data);
    if let Ok(path) = check(&raw) {
        let encoded = path.encoded();
        let again = check(&encoded).expect("a forwarded path is allowed again");
        assert_eq!(again, path, "not a fixed point: {raw:?} -> {encoded:?}");
        let lower = encoded.to_ascii_lowercase();
        assert!(lower != "/health" && lower != "/version", "{raw:?}");
        assert!(!lower.starts_with("/internal/") && lower != "/internal", "{raw:?}");
    }
});
