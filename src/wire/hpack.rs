//! HPACK (RFC 7541): a complete decoder (static and dynamic tables,
//! Huffman, size updates) and the smallest encoder a peer must accept:
//! literals without indexing, raw strings, names from the static table.
//!
//! The encoder never inserts into the peer's table, so we keep no encoder
//! state at all; the decoder's table is bounded by the size we accept.

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Huffman code length of each symbol, 0..=255 and EOS (RFC 7541
/// Appendix B). The code is canonical (codes of one length are consecutive
/// and ordered by symbol), so the lengths alone define it: 257 bytes
/// instead of a 257-entry code table or a decoding state machine.
const HUFFMAN_LEN: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];
const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// The canonical code's decoding tables: symbols ordered by (length,
/// symbol), and per length the number of codes and the first code.
struct Canon {
    sorted: [u16; 257],
    count: [u16; MAX_CODE_LEN + 1],
    first: [u32; MAX_CODE_LEN + 1],
    /// Index into `sorted` of each length's first symbol.
    offset: [u16; MAX_CODE_LEN + 1],
}

const CANON: Canon = canon();

const fn canon() -> Canon {
    let mut c = Canon {
        sorted: [0; 257],
        count: [0; MAX_CODE_LEN + 1],
        first: [0; MAX_CODE_LEN + 1],
        offset: [0; MAX_CODE_LEN + 1],
    };
    let mut n = 0;
    let mut len = 1;
    let mut code = 0u32;
    while len <= MAX_CODE_LEN {
        c.offset[len] = n as u16;
        c.first[len] = code;
        let mut s = 0;
        while s < 257 {
            if HUFFMAN_LEN[s] as usize == len {
                c.sorted[n] = s as u16;
                n += 1;
                c.count[len] += 1;
            }
            s += 1;
        }
        code = (code + c.count[len] as u32) << 1;
        len += 1;
    }
    c
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    Truncated,
    /// An integer past what any bounded field could hold.
    Overflow,
    BadIndex,
    BadHuffman,
    /// A dynamic table size update above our limit, or not at the start.
    BadSizeUpdate,
}

/// Decodes a Huffman string, appending to `out`.
pub fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in src {
        for i in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> i) & 1);
            len += 1;
            let idx = code.wrapping_sub(CANON.first[len]);
            if idx < u32::from(CANON.count[len]) {
                let sym = CANON.sorted[CANON.offset[len] as usize + idx as usize];
                if sym == EOS {
                    return Err(Error::BadHuffman);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            } else if len >= MAX_CODE_LEN {
                return Err(Error::BadHuffman);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len >= 8 || code != (1u32 << len) - 1 {
        return Err(Error::BadHuffman);
    }
    Ok(())
}

/// Reads an integer with an `n`-bit prefix (§5.1) from `b[*pos..]`.
/// Values are capped at 2^28 (four continuation bytes), ample for any
/// length or index we accept.
pub fn decode_int(b: &[u8], pos: &mut usize, n: u8) -> Result<usize, Error> {
    let mask = (1usize << n) - 1;
    let first = *b.get(*pos).ok_or(Error::Truncated)?;
    *pos += 1;
    let mut v = usize::from(first) & mask;
    if v < mask {
        return Ok(v);
    }
    for shift in [0, 7, 14, 21] {
        let c = *b.get(*pos).ok_or(Error::Truncated)?;
        *pos += 1;
        v += usize::from(c & 0x7f) << shift;
        if c & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::Overflow)
}

/// Appends an integer with an `n`-bit prefix; `high` holds the bits above
/// the prefix in the first byte.
pub fn encode_int(mut v: usize, n: u8, high: u8, out: &mut Vec<u8>) {
    let mask = (1usize << n) - 1;
    if v < mask {
        out.push(high | v as u8);
        return;
    }
    out.push(high | mask as u8);
    v -= mask;
    while v >= 0x80 {
        out.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends one header field as a literal without indexing (§6.2.2), its
/// name by static index when it has one, strings raw (no Huffman).
pub fn encode_literal(name: &str, value: &str, out: &mut Vec<u8>) {
    match STATIC.iter().position(|(n, _)| *n == name) {
        Some(i) => encode_int(i + 1, 4, 0x00, out),
        None => {
            out.push(0x00);
            encode_int(name.len(), 7, 0, out);
            out.extend_from_slice(name.as_bytes());
        }
    }
    encode_int(value.len(), 7, 0, out);
    out.extend_from_slice(value.as_bytes());
}

/// Appends one fully indexed static entry (`:method POST`, `:status 200`).
pub fn encode_indexed(name: &str, value: &str, out: &mut Vec<u8>) -> bool {
    match STATIC.iter().position(|e| *e == (name, value)) {
        Some(i) => {
            encode_int(i + 1, 7, 0x80, out);
            true
        }
        None => false,
    }
}

/// Per-entry overhead the table size counts (§4.1).
const ENTRY_OVERHEAD: usize = 32;

/// The decoding context of one connection direction.
#[derive(Default)]
pub struct Decoder {
    /// Newest first: dynamic index 62 is `table[0]`. Each entry is name
    /// and value in one allocation, split at `.1`.
    table: std::collections::VecDeque<(Box<[u8]>, usize)>,
    /// Sum of entry sizes (§4.1).
    size: usize,
    /// Current maximum, set by the encoder's size updates.
    max: usize,
    /// The most a size update may set: what we advertise (or the
    /// protocol's initial 4096, which a peer may use before it has seen
    /// our SETTINGS).
    limit: usize,
}

impl Decoder {
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            table: Default::default(),
            size: 0,
            max: limit,
            limit,
        }
    }

    /// Bytes the dynamic table holds (entry sizes per §4.1).
    pub fn table_size(&self) -> usize {
        self.size
    }

    fn evict_to(&mut self, max: usize) {
        while self.size > max {
            match self.table.pop_back() {
                Some((e, _)) => self.size -= e.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
        if self.table.is_empty() {
            // Peers that honour our table size of 0 leave it empty: hold
            // no allocation for it then (one per idle connection).
            self.table = Default::default();
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let sz = name.len() + value.len() + ENTRY_OVERHEAD;
        if sz > self.max {
            // §4.4: an entry larger than the table empties it.
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max - sz);
        let mut e = Vec::with_capacity(name.len() + value.len());
        e.extend_from_slice(name);
        e.extend_from_slice(value);
        self.table.push_front((e.into_boxed_slice(), name.len()));
        self.size += sz;
    }

    /// Copies entry `i` (1-based, static then dynamic) into `name`/`value`.
    fn lookup(
        &self,
        i: usize,
        name: &mut Vec<u8>,
        value: Option<&mut Vec<u8>>,
    ) -> Result<(), Error> {
        let (n, v): (&[u8], &[u8]) = match i {
            0 => return Err(Error::BadIndex),
            1..=61 => {
                let (n, v) = STATIC[i - 1];
                (n.as_bytes(), v.as_bytes())
            }
            _ => {
                let (e, split) = self.table.get(i - 62).ok_or(Error::BadIndex)?;
                e.split_at(*split)
            }
        };
        name.extend_from_slice(n);
        if let Some(value) = value {
            value.extend_from_slice(v);
        }
        Ok(())
    }

    /// Decodes a whole header block, calling `f(name, value)` per field in
    /// order. On error the table may be half-updated: the caller must end
    /// the connection (COMPRESSION_ERROR), as the RFC requires.
    pub fn decode(&mut self, block: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        let mut pos = 0;
        let mut name = Vec::new();
        let mut value = Vec::new();
        let mut fields_seen = false;
        while pos < block.len() {
            let b = block[pos];
            name.clear();
            value.clear();
            if b & 0x80 != 0 {
                let i = decode_int(block, &mut pos, 7)?;
                self.lookup(i, &mut name, Some(&mut value))?;
                f(&name, &value);
                fields_seen = true;
                continue;
            }
            if b & 0xe0 == 0x20 {
                // §6.3: only before the first field of a block.
                let max = decode_int(block, &mut pos, 5)?;
                if fields_seen || max > self.limit {
                    return Err(Error::BadSizeUpdate);
                }
                self.max = max;
                self.evict_to(max);
                continue;
            }
            let (prefix, index) = if b & 0x40 != 0 { (6, true) } else { (4, false) };
            let i = decode_int(block, &mut pos, prefix)?;
            if i == 0 {
                read_string(block, &mut pos, &mut name)?;
            } else {
                self.lookup(i, &mut name, None)?;
            }
            read_string(block, &mut pos, &mut value)?;
            f(&name, &value);
            fields_seen = true;
            if index {
                self.insert(&name, &value);
            }
        }
        Ok(())
    }
}

/// Reads a string literal (§5.2), Huffman-decoding it when flagged.
fn read_string(b: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Result<(), Error> {
    let huffman = b.get(*pos).ok_or(Error::Truncated)? & 0x80 != 0;
    let len = decode_int(b, pos, 7)?;
    let end = pos.checked_add(len).ok_or(Error::Truncated)?;
    let s = b.get(*pos..end).ok_or(Error::Truncated)?;
    *pos = end;
    if huffman {
        huffman_decode(s, out)
    } else {
        out.extend_from_slice(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_hex as h;

    fn fields(d: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut v = Vec::new();
        d.decode(block, |n, val| {
            v.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(val.to_vec()).unwrap(),
            ))
        })
        .unwrap();
        v
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The canonical construction reproduces codes quoted in RFC 7541
    /// Appendix B ('0' = 00000, ' ' = 010100, 'a' = 00011, EOS = 30 ones).
    #[test]
    fn canonical_code_matches_appendix_b() {
        let code_of = |sym: u16| {
            let len = HUFFMAN_LEN[sym as usize] as usize;
            let pos = (CANON.offset[len] as usize..)
                .find(|&i| CANON.sorted[i] == sym)
                .unwrap();
            (
                CANON.first[len] + (pos - CANON.offset[len] as usize) as u32,
                len,
            )
        };
        assert_eq!(code_of(b'0' as u16), (0b00000, 5));
        assert_eq!(code_of(b'a' as u16), (0b00011, 5));
        assert_eq!(code_of(b' ' as u16), (0b010100, 6));
        assert_eq!(code_of(b'w' as u16), (0b1111000, 7));
        assert_eq!(code_of(EOS), (0x3fff_ffff, 30));
    }

    /// RFC 7541 C.4: requests with Huffman, sharing a dynamic table.
    #[test]
    fn rfc_c4_requests_with_huffman() {
        let mut d = Decoder::new(4096);
        let got = fields(&mut d, &h("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
        assert_eq!(
            got,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.table_size(), 57);
        let got = fields(&mut d, &h("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(
            got,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.table_size(), 110);
        let got = fields(
            &mut d,
            &h("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(
            got,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.table_size(), 164);
    }

    /// RFC 7541 C.5: responses in a 256-byte table, which forces evictions.
    #[test]
    fn rfc_c5_responses_evict() {
        let mut d = Decoder::new(256);
        let first = h("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        let got = fields(&mut d, &first);
        assert_eq!(got[0], (":status".to_string(), "302".to_string()));
        assert_eq!(d.table_size(), 222);
        let got = fields(&mut d, &h("4803 3330 37c1 c0bf"));
        assert_eq!(got[0].1, "307");
        assert_eq!(
            got[3],
            (
                "location".to_string(),
                "https://www.example.com".to_string()
            )
        );
        assert_eq!(d.table_size(), 222);
    }

    #[test]
    fn integers_round_trip_and_overflow() {
        for n in [4u8, 5, 6, 7] {
            for v in [0usize, 1, 14, 15, 30, 31, 127, 128, 1337, 1 << 20] {
                let mut out = Vec::new();
                encode_int(v, n, 0, &mut out);
                let mut pos = 0;
                assert_eq!(decode_int(&out, &mut pos, n), Ok(v));
                assert_eq!(pos, out.len());
            }
        }
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos, 5),
            Err(Error::Overflow)
        );
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0xff], &mut pos, 5),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn encoder_output_decodes() {
        let mut out = Vec::new();
        assert!(encode_indexed(":status", "200", &mut out));
        assert!(!encode_indexed(":status", "413", &mut out));
        encode_literal(":status", "413", &mut out);
        encode_literal("content-type", "application/json", &mut out);
        encode_literal("x-long-name-that-is-not-static", &"v".repeat(300), &mut out);
        let mut d = Decoder::new(0);
        let got = fields(&mut d, &out);
        assert_eq!(got[0], (":status".into(), "200".into()));
        assert_eq!(got[1], (":status".into(), "413".into()));
        assert_eq!(got[2], ("content-type".into(), "application/json".into()));
        assert_eq!(got[3].1.len(), 300);
        assert_eq!(d.table_size(), 0, "literals without indexing add nothing");
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::new(4096);
        let mut bad = |b: &[u8]| d.decode(b, |_, _| {}).unwrap_err();
        assert_eq!(bad(&[0x80]), Error::BadIndex); // index 0
        assert_eq!(bad(&[0xbe]), Error::BadIndex); // dynamic 62, empty table
        assert_eq!(bad(&[0x40, 0x05, b'a']), Error::Truncated);
        assert_eq!(bad(&[0x3f, 0xe2, 0x1f]), Error::BadSizeUpdate); // 4097 > limit
        assert_eq!(bad(&[0x82, 0x20]), Error::BadSizeUpdate); // after a field
                                                              // Huffman: EOS inside, padding of 8+ bits, padding with a zero bit.
        assert_eq!(
            bad(&[0x00, 0x01, b'a', 0x84, 0xff, 0xff, 0xff, 0xff]),
            Error::BadHuffman
        );
        assert_eq!(bad(&[0x00, 0x01, b'a', 0x81, 0x00]), Error::BadHuffman);
        assert_eq!(
            bad(&[0x00, 0x01, b'a', 0x82, 0x1f, 0xff]),
            Error::BadHuffman
        );
        assert_eq!(bad(&[0x00, 0x01, b'a', 0x81, 0x1e]), Error::BadHuffman);
    }

    /// A size update to 0 empties the table, and an entry bigger than the
    /// table is not kept; the table never exceeds its maximum.
    #[test]
    fn table_is_bounded() {
        let mut d = Decoder::new(4096);
        let mut block = Vec::new();
        for i in 0..200 {
            block.push(0x40);
            encode_int(8, 7, 0, &mut block);
            block.extend_from_slice(format!("name{i:04}").as_bytes());
            encode_int(20, 7, 0, &mut block);
            block.extend_from_slice(&[b'v'; 20]);
        }
        d.decode(&block, |_, _| {}).unwrap();
        assert!(d.table_size() <= 4096 && d.table_size() > 4000);
        d.decode(&[0x20], |_, _| {}).unwrap();
        assert_eq!(d.table_size(), 0);
        assert_eq!(d.table.len(), 0);
    }
}
