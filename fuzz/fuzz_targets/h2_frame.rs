//! Fuzz the HTTP/2 frame codec: back-to-back frames are split with the
//! payload bound enforced, every payload accessor is tried on every frame
//! (never a panic, never a slice past the payload), and the header
//! round-trips through emit. Codec included by path (std-only, no I/O).
#![no_main]

#[path = "../../src/wire/h2.rs"]
#[allow(dead_code)]
mod h2;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((f, used))) = h2::split(buf, h2::DEFAULT_MAX_FRAME) {
        assert!(used == h2::HEADER_LEN + f.payload.len() && used <= buf.len());
        assert!(f.payload.len() <= h2::DEFAULT_MAX_FRAME);
        let mut out = Vec::new();
        f.hdr.emit(&mut out);
        assert_eq!(h2::Header::parse(&out), Some(f.hdr));
        if let Ok(p) = h2::unpad(f.hdr.flags, f.payload) {
            assert!(p.len() <= f.payload.len());
        }
        if let Ok(p) = h2::headers_fragment(f.hdr.flags, f.payload) {
            assert!(p.len() <= f.payload.len());
        }
        if let Ok(it) = h2::settings(f.payload) {
            assert_eq!(it.count() * 6, f.payload.len());
        }
        let _ = h2::window_update(f.payload);
        let _ = h2::rst_stream(f.payload);
        let _ = h2::ping(f.payload);
        let _ = h2::goaway(f.payload);
        buf = &buf[used..];
    }
});
