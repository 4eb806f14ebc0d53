//! Fuzz the STUN codec: parsing must never panic, and whatever parses must
//! survive emit → parse unchanged; the responder must only ever answer with
//! a well-formed Binding Success echoing the transaction ID.
//!
//! The codec is pulled in by path rather than depending on the `tinyscale`
//! crate: `src/wire/` is std-only and I/O-free, and this keeps the fuzz build
//! from compiling (and instrumenting) the whole server's dependency tree.
#![no_main]

#[path = "../../src/wire/stun.rs"]
#[allow(dead_code)]
mod stun;

use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use stun::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        let _ = p.attributes().count();
        if let Ok(r) = Repr::parse(&p) {
            let again = r.to_vec();
            let back = Repr::parse(&Packet::new_checked(&again[..]).expect("emitted length"))
                .expect("emitted message parses");
            assert_eq!(back, r);
        }
    }
    let sources: [SocketAddr; 2] = [
        "192.0.2.1:41641".parse().unwrap(),
        "[2001:db8::1]:3478".parse().unwrap(),
    ];
    for src in sources {
        let mut out = [0u8; 64];
        if let Some(n) = stun::respond(data, src, &mut out) {
            let resp = Repr::parse(&Packet::new_checked(&out[..n]).expect("response length"))
                .expect("response parses");
            match resp {
                Repr::BindingSuccess {
                    transaction_id,
                    mapped,
                } => {
                    assert_eq!(&transaction_id[..], &data[8..20]);
                    assert_eq!(mapped, src);
                }
                other => panic!("responder emitted {other:?}"),
            }
        }
    }
});
