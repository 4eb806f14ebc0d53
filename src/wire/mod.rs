//! Byte-level codecs with no I/O: each is a checked view over a borrowed
//! buffer plus `parse`/`emit`, unit-tested and fuzzed on its own.

pub mod base64;
pub mod derp;
pub mod h2;
pub mod hpack;
pub mod mapframe;
pub mod noise;
pub mod stun;

/// Test vectors as spaced hex ("0400 28ab ..."), as the RFCs print them.
#[cfg(test)]
pub(crate) fn test_hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
