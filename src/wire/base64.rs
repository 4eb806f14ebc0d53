//! Standard base64 (with padding), enough for the X-Tailscale-Handshake
//! header; a crate would cost more bytes than these lines.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; padding optional; None on any invalid input.
pub fn decode(input: &str) -> Option<Vec<u8>> {
    let s = input.trim_end_matches('=').as_bytes();
    if input.len() - s.len() > 2 || s.len() % 4 == 1 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.chunks(4) {
        let mut n = 0u32;
        for (i, &b) in c.iter().enumerate() {
            n |= val(b)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if c.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if c.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// Unpadded base64url (RFC 4648 §5), as JWTs and PKCE use it.
pub fn encode_url(input: &[u8]) -> String {
    encode(input)
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// Decodes unpadded base64url; None on padding, standard-alphabet `+`/`/`
/// or any other invalid input.
pub fn decode_url(input: &str) -> Option<Vec<u8>> {
    if input.bytes().any(|b| matches!(b, b'+' | b'/' | b'=')) {
        return None;
    }
    let std: String = input
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    decode(&std)
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_alphabet() {
        assert_eq!(super::encode_url(&[0xfb, 0xff]), "-_8");
        assert_eq!(super::decode_url("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(super::decode_url("+/8"), None);
        assert_eq!(super::decode_url("AA=="), None);
        assert_eq!(super::decode_url("A"), None);
    }

    #[test]
    fn round_trip() {
        for n in 0..20usize {
            let v: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(super::decode(&super::encode(&v)).unwrap(), v);
        }
        assert_eq!(super::encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::encode(b"fo"), "Zm8=");
        assert!(super::decode("Zm9v!mFy").is_none());
        assert!(super::decode("Z").is_none());
    }
}
