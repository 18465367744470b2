//! Fuzzes the decoder of a job's output lines (writable mounts coming back).
//!
//! The lines come from an untrusted job's log: whatever it prints, feeding
//! them to `Decoder` must never panic, and must never hand back an archive
//! whose length and digest were not announced. The input is split into
//! lines; half of them get this job's prefix so the fuzzer reaches the
//! parsing of kinds, sequence numbers and base64.

#![no_main]

use base_shim::frame::{Decoder, MARK};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new("job", 3, 1 << 20);
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        if i % 2 == 0 {
            let mut framed = format!("{MARK}job ").into_bytes();
            framed.extend_from_slice(line);
            decoder.feed(&framed);
        } else {
            decoder.feed(line);
        }
    }
    let _ = decoder.finish();
});
