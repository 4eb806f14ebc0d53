//! JSON Web Key Sets (RFC 7517): the provider's public signing keys, kept
//! in the form ring verifies with. Only the two algorithms ID tokens are
//! accepted in: RS256 (RSA PKCS#1 v1.5, SHA-256) and ES256 (ECDSA P-256,
//! SHA-256). Keys of other types, curves or uses are skipped, not errors:
//! providers publish encryption keys and future algorithms side by side.

use crate::wire::base64::decode_url;
use serde_json::Value;

/// Largest number of keys kept from one set.
pub const MAX_KEYS: usize = 64;

/// A JWS algorithm we verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub fn from_name(s: &str) -> Option<Alg> {
        match s {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Material {
    /// Modulus and exponent, big-endian, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point: 0x04 ‖ x ‖ y.
    P256(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    pub material: Material,
}

impl Jwk {
    /// Whether this key can check a signature made with `alg`.
    pub fn fits(&self, alg: Alg) -> bool {
        matches!(
            (&self.material, alg),
            (Material::Rsa { .. }, Alg::Rs256) | (Material::P256(_), Alg::Es256)
        )
    }

    /// Verifies `sig` over `msg`. RSA moduli must be 2048–8192 bits (ring's
    /// bounds); ES256 signatures are the JWS fixed-width r ‖ s form.
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        use ring::signature;
        match (&self.material, alg) {
            (Material::Rsa { n, e }, Alg::Rs256) => signature::RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
            .is_ok(),
            (Material::P256(point), Alg::Es256) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

fn b64_field(k: &Value, name: &str, max: usize) -> Option<Vec<u8>> {
    let s = k.get(name)?.as_str()?;
    if s.len() > max.div_ceil(3) * 4 {
        return None;
    }
    decode_url(s)
}

/// One key, or None if it is not a signing key we can use.
fn parse_key(k: &Value) -> Option<Jwk> {
    if k.get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return None;
    }
    if let Some(alg) = k.get("alg").and_then(Value::as_str) {
        Alg::from_name(alg)?;
    }
    let material = match k.get("kty")?.as_str()? {
        "RSA" => {
            let mut n = b64_field(k, "n", 1024)?;
            let mut e = b64_field(k, "e", 8)?;
            for v in [&mut n, &mut e] {
                let z = v.iter().take_while(|b| **b == 0).count();
                v.drain(..z);
            }
            if n.is_empty() || e.is_empty() {
                return None;
            }
            Material::Rsa { n, e }
        }
        "EC" => {
            if k.get("crv")?.as_str()? != "P-256" {
                return None;
            }
            let x = b64_field(k, "x", 32)?;
            let y = b64_field(k, "y", 32)?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::P256(point)
        }
        _ => return None,
    };
    let kid = k
        .get("kid")
        .and_then(Value::as_str)
        .filter(|s| s.len() <= 256)
        .map(str::to_string);
    Some(Jwk { kid, material })
}

/// Parses a JWKS document (`{"keys": [...]}`); an error if it is not one or
/// holds no usable key.
pub fn parse(doc: &[u8]) -> Result<Vec<Jwk>, String> {
    let v: Value = serde_json::from_slice(doc).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" list")?;
    let out: Vec<Jwk> = keys
        .iter()
        .take(MAX_KEYS * 4)
        .filter_map(parse_key)
        .take(MAX_KEYS)
        .collect();
    if out.is_empty() {
        return Err("JWKS holds no RS256 or ES256 signing key".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_usable_signing_keys() {
        let doc = br#"{"keys":[
            {"kty":"RSA","kid":"r","n":"AAEC","e":"AQAB","alg":"RS256","use":"sig"},
            {"kty":"RSA","kid":"enc","n":"AQID","e":"AQAB","use":"enc"},
            {"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"AA"},
            {"kty":"EC","kid":"short","crv":"P-256","x":"AA","y":"AA"},
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"hs","n":"AQID","e":"AQAB","alg":"HS256"}
        ]}"#;
        let keys = parse(doc).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("r"));
        // Leading zero stripped from the modulus.
        assert_eq!(
            keys[0].material,
            Material::Rsa {
                n: vec![1, 2],
                e: vec![1, 0, 1]
            }
        );
        assert!(keys[0].fits(Alg::Rs256) && !keys[0].fits(Alg::Es256));
        // A key that cannot verify anything says no, it does not panic.
        assert!(!keys[0].verify(Alg::Rs256, b"m", b"s"));
        assert!(parse(br#"{"keys":[]}"#).is_err());
        assert!(parse(b"[]").is_err());
        assert!(parse(b"not json").is_err());
    }
}
