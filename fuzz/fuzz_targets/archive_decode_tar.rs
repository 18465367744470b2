//! Fuzzes the tar side of the broker's mount-archive checker.
//!
//! Random bytes are rarely valid gzip, so `archive_decode` spends much of
//! its time in the gzip decoder. Here the input is the *decompressed*
//! stream: it is gzip-compressed and base64-encoded before `decode`, so
//! every input reaches the tar parser and the member checks.

#![no_main]

use std::io::Write as _;

use base_sdk::broker::archive::{ArchiveLimits, decode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::Compression;
use flate2::write::GzEncoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    if encoder.write_all(data).is_err() {
        return;
    }
    let Ok(compressed) = encoder.finish() else {
        return;
    };
    // Small limits so the fuzzer also reaches the limit checks.
    let limits = ArchiveLimits {
        max_members: 16,
        max_file_bytes: 4096,
        max_total_bytes: 64 * 1024,
        max_path_len: 128,
        max_depth: 8,
        ..ArchiveLimits::default()
    };
    let _ = decode(&STANDARD.encode(compressed), &limits);
});
