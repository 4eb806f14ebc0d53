//! The ACME account key and JWS signing (RFC 8555 §6.2, RFC 7515): ES256
//! (ECDSA P-256 with SHA-256, signature as r‖s) through ring, the JWK of
//! the public key and its RFC 7638 thumbprint for key authorizations.

use crate::wire::base64::encode_url as b64u;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as ALG};
use std::io;

pub struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl AccountKey {
    /// A new key; returns it and its PKCS#8 document (to store).
    pub fn generate() -> io::Result<(AccountKey, Vec<u8>)> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ALG, &rng)
            .map_err(|_| io::Error::other("generating the ACME account key"))?;
        let key = Self::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    pub fn from_pkcs8(der: &[u8]) -> io::Result<AccountKey> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ALG, der, &rng).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("ACME account key: {e}"))
        })?;
        Ok(AccountKey { pair, rng })
    }

    /// The public key as a JWK, members in the lexicographic order RFC 7638
    /// requires for the thumbprint.
    pub fn jwk(&self) -> String {
        // Uncompressed point: 0x04 ‖ X (32) ‖ Y (32).
        let p = self.pair.public_key().as_ref();
        format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64u(&p[1..33]),
            b64u(&p[33..65])
        )
    }

    /// RFC 7638 thumbprint: base64url(SHA-256(canonical JWK)).
    pub fn thumbprint(&self) -> String {
        b64u(ring::digest::digest(&ring::digest::SHA256, self.jwk().as_bytes()).as_ref())
    }

    /// A flattened JWS over `payload` ("" = POST-as-GET). `kid` is the
    /// account URL once there is one; before, the JWK itself is sent.
    pub fn sign(
        &self,
        url: &str,
        nonce: &str,
        kid: Option<&str>,
        payload: &str,
    ) -> io::Result<String> {
        let who = match kid {
            Some(k) => format!(r#""kid":{}"#, json_str(k)),
            None => format!(r#""jwk":{}"#, self.jwk()),
        };
        let protected = format!(
            r#"{{"alg":"ES256",{who},"nonce":{},"url":{}}}"#,
            json_str(nonce),
            json_str(url)
        );
        let p64 = b64u(protected.as_bytes());
        let b64 = b64u(payload.as_bytes());
        let input = format!("{p64}.{b64}");
        let sig = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| io::Error::other("signing a JWS"))?;
        Ok(format!(
            r#"{{"protected":"{p64}","payload":"{b64}","signature":"{}"}}"#,
            b64u(sig.as_ref())
        ))
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn jws_verifies_and_thumbprint_is_stable() {
        let (k, doc) = AccountKey::generate().unwrap();
        let k2 = AccountKey::from_pkcs8(&doc).unwrap();
        assert_eq!(k.thumbprint(), k2.thumbprint());
        assert_eq!(k.thumbprint().len(), 43);
        let jws = k
            .sign("https://ca/new-acct", "n1", None, r#"{"a":1}"#)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&jws).unwrap();
        let prot = crate::wire::base64::decode_url(v["protected"].as_str().unwrap()).unwrap();
        let prot: serde_json::Value = serde_json::from_slice(&prot).unwrap();
        assert_eq!(prot["alg"], "ES256");
        assert_eq!(prot["nonce"], "n1");
        assert_eq!(prot["jwk"]["kty"], "EC");
        let sig = crate::wire::base64::decode_url(v["signature"].as_str().unwrap()).unwrap();
        assert_eq!(sig.len(), 64);
        let msg = format!(
            "{}.{}",
            v["protected"].as_str().unwrap(),
            v["payload"].as_str().unwrap()
        );
        let pubkey = UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_FIXED,
            k.pair.public_key().as_ref().to_vec(),
        );
        pubkey.verify(msg.as_bytes(), &sig).unwrap();
        // With an account URL the key is named, not sent.
        let jws = k.sign("u", "n2", Some("https://ca/acct/1"), "").unwrap();
        let v: serde_json::Value = serde_json::from_str(&jws).unwrap();
        assert_eq!(v["payload"], "");
        let prot = crate::wire::base64::decode_url(v["protected"].as_str().unwrap()).unwrap();
        let prot: serde_json::Value = serde_json::from_slice(&prot).unwrap();
        assert_eq!(prot["kid"], "https://ca/acct/1");
        assert!(prot.get("jwk").is_none());
    }
}
