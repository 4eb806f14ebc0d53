//! Fuzz the front door's HTTP/1 head parser: any bytes give a head, "need
//! more", or an error, never a panic; a parsed head's length is within the
//! input and the head bound, and its accessors (headers, query, Content-Length,
//! tokens) never panic either.
//!
//! The parser is included by path (it needs only httparse), so the
//! instrumented build skips the main crate.
#![no_main]

#[path = "../../src/http/head.rs"]
#[allow(dead_code)]
mod head;

use head::{parse, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((h, n))) = parse(data) {
        assert!(
            n <= data.len() && n <= MAX_HEAD,
            "head length {n} of {}",
            data.len()
        );
        let _ = h.content_length();
        let _ = h.header("upgrade");
        let _ = h.header_has_token("connection", "close");
        let _ = h.query_param("v");
        assert!(h.headers.len() <= 48);
    }
    // The same bytes arriving one at a time never panic either.
    for end in 0..data.len().min(64) {
        let _ = parse(&data[..end]);
    }
});
