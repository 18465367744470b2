//! Differential fuzzing of the proxy's two paths on arbitrary request
//! bytes (issue 13, request smuggling): whatever the fast path
//! (`wire::parse_request` + `wire::write_upstream_request`) or the general
//! path's header rules forward must read, with an independent strict
//! HTTP/1.1 reader, as exactly one request whose declared length is the
//! body forwarded, with the same method, target, headers and body on both
//! paths, and never a private route. The check itself is
//! `base_sdk::testing::strict_http::differential`, shared with the
//! property test `base-sdk/tests/proxy_differential.rs`.

#![no_main]

use base_sdk::testing::strict_http::differential;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = differential(data) {
        panic!("{e}\ninput: {:?}", String::from_utf8_lossy(data));
    }
});
