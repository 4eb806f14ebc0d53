//! Byte-level codecs with no I/O: each is a checked view over a borrowed
//! buffer plus `parse`/`emit`, unit-tested and fuzzed on its own.

pub mod base64;
pub mod derp;
pub mod mapframe;
pub mod noise;
pub mod stun;
