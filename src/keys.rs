//! Typed key strings as the client spells them (`mkey:`, `nodekey:`,
//! `discokey:` + 64 lowercase hex). An empty string is never a key: Go's
//! parsers reject it and a whole MapResponse would fail to decode.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Parses exactly `N` bytes of hex (either case).
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

macro_rules! key_type {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            pub fn is_zero(&self) -> bool {
                self.0 == [0u8; 32]
            }
            pub fn parse(s: &str) -> Option<Self> {
                let hex = s.strip_prefix($prefix)?;
                from_hex::<32>(hex).map($name)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($prefix)?;
                f.write_str(&to_hex(&self.0))
            }
        }
        impl fmt::Debug for $name {
            // Short form only: keys are not secrets, but logs need not carry them whole.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "[{}{}]", $prefix, &to_hex(&self.0[..4]))
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                if s.is_empty() {
                    // Go encodes nothing as empty; treat as zero like a missing field.
                    return Ok($name([0; 32]));
                }
                $name::parse(&s)
                    .ok_or_else(|| de::Error::custom(concat!("invalid ", $prefix, " key")))
            }
        }
    };
}

key_type!(MachineKey, "mkey:");
key_type!(NodeKey, "nodekey:");
key_type!(DiscoKey, "discokey:");

/// X25519 public key of a private key (clamped as usual).
pub fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// 32 random bytes from the OS.
pub fn random32() -> [u8; 32] {
    let mut b = [0u8; 32];
    // The OS RNG failing is unrecoverable for a key server.
    getrandom::fill(&mut b).expect("OS random number generator failed");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let k = NodeKey([0xab; 32]);
        let s = k.to_string();
        assert!(s.starts_with("nodekey:abab"));
        assert_eq!(NodeKey::parse(&s), Some(k));
        assert_eq!(
            NodeKey::parse(&s.to_uppercase().replace("NODEKEY:", "nodekey:")),
            Some(k)
        );
        assert_eq!(NodeKey::parse("mkey:00"), None);
        assert_eq!(NodeKey::parse(&s[..s.len() - 1]), None);
        let j: Result<MachineKey, _> = serde_json::from_str("\"nodekey:00\"");
        assert!(j.is_err());
        let z: DiscoKey = serde_json::from_str("\"\"").unwrap();
        assert!(z.is_zero());
    }

    #[test]
    fn public_key_vector() {
        // protocol/noise.md §8: server static key.
        let private =
            from_hex::<32>("0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20")
                .unwrap();
        assert_eq!(
            to_hex(&x25519_public(&private)),
            "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"
        );
    }
}
