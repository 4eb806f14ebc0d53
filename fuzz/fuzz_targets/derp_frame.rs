//! Fuzz the DERP frame codec over a stream of back-to-back frames: header
//! and frame parsing must never panic, every parsed frame must re-emit to
//! bytes that parse to the same value, and no frame may exceed its bound.
//!
//! The codec is included by path (see stun_parse.rs for why).
#![no_main]

#[path = "../../src/wire/derp.rs"]
#[allow(dead_code)]
mod derp;

use derp::{Header, Repr, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while !rest.is_empty() {
        if let Ok(h) = Header::parse(rest) {
            assert!(h.payload_len <= h.frame_type.max_payload_len());
        }
        match Repr::parse_bytes(rest) {
            Ok((r, used)) => {
                assert!(used >= HEADER_LEN && used <= rest.len());
                let v = r.to_vec();
                assert_eq!(v.len(), r.buffer_len());
                let (back, n) = Repr::parse_bytes(&v).expect("emitted frame parses");
                assert_eq!(n, v.len());
                assert_eq!(back, r);
                rest = &rest[used..];
            }
            Err(_) => break,
        }
    }
});
