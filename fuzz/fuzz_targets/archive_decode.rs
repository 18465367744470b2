//! Fuzzes the broker's mount-archive checker with arbitrary bytes.
//!
//! A mount archive is untrusted input (CONTRACTS.md §4): whatever the bytes,
//! `decode` must return an error or a map, never panic, hang or allocate
//! past its limits. The input is base64-encoded first so the fuzzer spends
//! its time in the gzip and tar parsing rather than in base64 rejection.

#![no_main]

use base_sdk::broker::archive::{ArchiveLimits, decode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(&STANDARD.encode(data), &ArchiveLimits::default());
});
