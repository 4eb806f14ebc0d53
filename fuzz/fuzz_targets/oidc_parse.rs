//! Fuzz everything the OIDC login parses from a provider or a browser: the
//! ID token (compact JWS split, header, signature check against fixed keys,
//! claim rules), the JWKS and discovery documents, HTTP responses from the
//! outbound client (Content-Length, chunked) and percent-decoding. Nothing
//! may panic: with panic=abort a panic would end the server. The first byte
//! picks the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyscale::http::client;
use tinyscale::oidc::{jwks, jwt, provider};

const KEYS: &[u8] = br#"{"keys":[
 {"kty":"EC","kid":"ec1","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
 {"kty":"RSA","kid":"rsa1","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}
]}"#;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let expect = jwt::Expect {
        issuer: "https://id.example.com",
        client_id: "tinyscale",
        nonce: "n",
        now: 1_700_000_000,
    };
    match sel % 6 {
        0 => {
            let keys = jwks::parse(KEYS).expect("fixed keys parse");
            if let Ok(p) = jwt::split(&text) {
                // Random bytes never carry a valid signature by these keys.
                assert!(p.verify(&keys, &expect).is_err());
            }
        }
        1 => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) {
                if let Ok(c) = jwt::check_claims(&v, &expect) {
                    assert!(!c.sub.is_empty() && c.sub.len() <= 255);
                    assert!(c.exp.saturating_add(jwt::LEEWAY) > expect.now);
                }
            }
        }
        2 => {
            if let Ok(keys) = jwks::parse(rest) {
                assert!(!keys.is_empty() && keys.len() <= jwks::MAX_KEYS);
                for k in &keys {
                    let _ = k.verify(jwks::Alg::Rs256, b"m", rest);
                    let _ = k.verify(jwks::Alg::Es256, b"m", rest);
                }
            }
        }
        3 => {
            let _ = provider::parse_discovery(rest, "https://id.example.com");
        }
        4 => {
            if let Ok(r) = client::parse_response(rest.to_vec(), 4096) {
                assert!(r.body.len() <= 4096);
            }
        }
        _ => {
            let _ = client::pct_decode(&text);
        }
    }
});
