//! Fuzz the HPACK decoder: the input is split into header blocks decoded
//! in order by one decoder (so the dynamic table carries over, as on a
//! connection); no panic, the table never exceeds its limit, and whatever
//! our encoder emits for the decoded fields decodes to the same fields.
#![no_main]

#[path = "../../src/wire/hpack.rs"]
#[allow(dead_code)]
mod hpack;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = hpack::Decoder::new(4096);
    // First byte: where blocks are cut (every n bytes, n >= 1).
    let Some((&cut, rest)) = data.split_first() else { return };
    for block in rest.chunks(usize::from(cut).max(1)) {
        let mut fields = Vec::new();
        let ok = d.decode(block, |n, v| fields.push((n.to_vec(), v.to_vec())));
        assert!(d.table_size() <= 4096);
        if ok.is_err() {
            return; // the connection would end here
        }
        let mut enc = Vec::new();
        for (n, v) in &fields {
            if let (Ok(n), Ok(v)) = (std::str::from_utf8(n), std::str::from_utf8(v)) {
                hpack::encode_literal(n, v, &mut enc);
            }
        }
        let mut again = Vec::new();
        hpack::Decoder::new(0)
            .decode(&enc, |n, v| again.push((n.to_vec(), v.to_vec())))
            .expect("our encoding decodes");
        let utf8: Vec<_> = fields
            .into_iter()
            .filter(|(n, v)| std::str::from_utf8(n).is_ok() && std::str::from_utf8(v).is_ok())
            .collect();
        assert_eq!(again, utf8);
    }
    let mut out = Vec::new();
    let _ = hpack::huffman_decode(rest, &mut out);
    assert!(out.len() <= rest.len() * 8 / 5 + 1);
});
