//! Just enough DER to read a certificate's validity (RFC 5280 §4.1):
//! renewal is scheduled from notBefore/notAfter. A bounded walk over a
//! borrowed buffer; anything unexpected is None.

/// One TLV: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        l0 as usize
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) as Unix
/// seconds.
fn time(tag: u8, v: &[u8]) -> Option<u64> {
    // ASCII digits only, so the byte slicing below cannot split a character.
    if !v.is_ascii() {
        return None;
    }
    let s = std::str::from_utf8(v).ok()?.strip_suffix('Z')?;
    let (y, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let y: u64 = s[..2].parse().ok()?;
            (if y < 50 { 2000 + y } else { 1900 + y }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |i: usize| rest[i..i + 2].parse::<u64>().ok();
    let (mo, d, h, mi, se) = (n(0)?, n(2)?, n(4)?, n(6)?, n(8)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || y < 1970 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2 / 400;
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600 + mi * 60 + se)
}

/// (notBefore, notAfter) of a DER certificate, Unix seconds.
pub fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (0x30, c, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(c)? else { return None };
    let mut t = tbs;
    let (tag, _, rest) = tlv(t)?;
    if tag == 0xa0 {
        t = rest; // explicit version
    }
    let (_, _, t) = tlv(t)?; // serialNumber
    let (_, _, t) = tlv(t)?; // signature AlgorithmIdentifier
    let (_, _, t) = tlv(t)?; // issuer
    let (0x30, v, _) = tlv(t)? else { return None };
    let (t1, nb, v) = tlv(v)?;
    let (t2, na, _) = tlv(v)?;
    Some((time(t1, nb)?, time(t2, na)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_rcgen_validity() {
        let mut p = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2026, 12, 3);
        p.not_after = rcgen::date_time_ymd(2051, 3, 1);
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        let (nb, na) = super::validity(c.der()).unwrap();
        assert_eq!(nb, 1796256000); // 2026-12-03T00:00:00Z
        assert_eq!(na, 2561241600); // 2051-03-01 (GeneralizedTime after 2049)
        assert!(super::validity(&c.der()[..40]).is_none());
        assert!(super::validity(b"").is_none());
        assert_eq!(super::time(0x17, "2612031058\u{e9}Z".as_bytes()), None);
        assert_eq!(super::time(0x17, b"261203105823Z"), Some(1796295503));
    }
}
