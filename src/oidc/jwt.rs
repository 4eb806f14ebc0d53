//! ID token verification (OpenID Connect Core §3.1.3.7): a compact JWS
//! whose signature must check against one of the provider's keys, whose
//! `iss`, `aud`, `exp`, `iat`, `nbf` and `nonce` must be what this login
//! expects. Split in two steps so the caller can fetch the key set again
//! when a token names a key it has not seen (key rotation).

use super::jwks::{Alg, Jwk};
use crate::wire::base64::decode_url;
use serde_json::Value;

/// Largest ID token accepted.
pub const MAX_TOKEN: usize = 16 * 1024;
/// Clock skew tolerated between us and the provider, in seconds.
pub const LEEWAY: i64 = 60;

/// Why a token was refused. Displayed on the error page, so no token
/// content beyond claim names goes in here.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    Malformed(&'static str),
    Algorithm(String),
    /// No key in the set fits the token's `kid`/algorithm.
    UnknownKey,
    BadSignature,
    Claim(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Malformed(m) => write!(f, "the ID token is malformed ({m})"),
            Error::Algorithm(a) => write!(
                f,
                "the ID token is signed with {a:?}; only RS256 and ES256 are accepted"
            ),
            Error::UnknownKey => {
                f.write_str("the ID token is signed by a key the provider does not publish")
            }
            Error::BadSignature => f.write_str("the ID token's signature is invalid"),
            Error::Claim(m) => write!(f, "the ID token is not valid for this login: {m}"),
        }
    }
}

/// A token taken apart but not yet trusted.
pub struct Parts<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    signing_input: &'a [u8],
    sig: Vec<u8>,
    claims: Value,
}

/// What this login expects of the token.
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub nonce: &'a str,
    pub now: i64,
}

/// The claims tinyscale uses, from a verified token.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub exp: i64,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    pub preferred_username: String,
    pub picture: String,
    pub groups: Vec<String>,
}

fn json_part(s: &str) -> Result<Value, Error> {
    let bytes = decode_url(s).ok_or(Error::Malformed("bad base64url"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| Error::Malformed("bad JSON"))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(Error::Malformed("not a JSON object"))
    }
}

/// Splits a compact JWS and reads its header. Refuses `none`, HMAC and
/// anything else but RS256/ES256, and any `crit` extension.
pub fn split(token: &str) -> Result<Parts<'_>, Error> {
    if token.len() > MAX_TOKEN {
        return Err(Error::Malformed("too long"));
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(Error::Malformed("not three parts"));
    };
    let header = json_part(h)?;
    if header.get("crit").is_some() {
        return Err(Error::Malformed("unsupported critical header"));
    }
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = Alg::from_name(alg_name).ok_or_else(|| Error::Algorithm(alg_name.to_string()))?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let sig = decode_url(s).ok_or(Error::Malformed("bad signature encoding"))?;
    Ok(Parts {
        alg,
        kid,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        sig,
        claims: json_part(p)?,
    })
}

/// A numeric date claim (seconds; fractions allowed, as the JWT spec does).
fn date(v: &Value, name: &'static str) -> Result<Option<i64>, Error> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(Error::Claim("a date claim is not a number")),
        Some(_) => Err(Error::Claim("a date claim is not a number")),
    }
}

fn string(v: &Value, name: &str, max: usize) -> String {
    v.get(name)
        .and_then(Value::as_str)
        .filter(|s| s.len() <= max)
        .unwrap_or("")
        .to_string()
}

impl Parts<'_> {
    /// Checks the signature with the first key that fits (by `kid` when the
    /// token names one), then the claims.
    pub fn verify(&self, keys: &[Jwk], expect: &Expect<'_>) -> Result<Claims, Error> {
        let key = keys
            .iter()
            .filter(|k| k.fits(self.alg))
            .find(|k| match (&self.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            })
            .ok_or(Error::UnknownKey)?;
        if !key.verify(self.alg, self.signing_input, &self.sig) {
            return Err(Error::BadSignature);
        }
        check_claims(&self.claims, expect)
    }
}

/// The claim rules alone (public for the fuzz target; callers use [`Parts::verify`]).
pub fn check_claims(c: &Value, expect: &Expect<'_>) -> Result<Claims, Error> {
    let iss = string(c, "iss", 1024);
    if iss.trim_end_matches('/') != expect.issuer.trim_end_matches('/') {
        return Err(Error::Claim("issued by another issuer (iss)"));
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => a == expect.client_id,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(expect.client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(Error::Claim("issued for another client (aud)"));
    }
    if let Some(azp) = c.get("azp").and_then(Value::as_str) {
        if azp != expect.client_id {
            return Err(Error::Claim("authorized party is another client (azp)"));
        }
    }
    let exp = date(c, "exp")?.ok_or(Error::Claim("no expiry (exp)"))?;
    if exp.saturating_add(LEEWAY) <= expect.now {
        return Err(Error::Claim("the token has expired (exp)"));
    }
    if date(c, "iat")?.is_some_and(|t| t > expect.now.saturating_add(LEEWAY)) {
        return Err(Error::Claim("issued in the future (iat)"));
    }
    if date(c, "nbf")?.is_some_and(|t| t > expect.now.saturating_add(LEEWAY)) {
        return Err(Error::Claim("not valid yet (nbf)"));
    }
    if c.get("nonce").and_then(Value::as_str) != Some(expect.nonce) {
        return Err(Error::Claim("nonce does not match this login"));
    }
    let sub = string(c, "sub", 255);
    if sub.is_empty() {
        return Err(Error::Claim("no subject (sub)"));
    }
    let mut claims = Claims {
        iss,
        sub,
        exp,
        ..Default::default()
    };
    merge_profile(&mut claims, c);
    Ok(claims)
}

/// Reads the profile claims (email, name, groups, …) from `v` over what
/// `c` already has: a claim present in `v` wins, an absent one keeps the
/// old value. Used for the ID token, then for the userinfo response (as
/// Headscale does, since some providers send `groups` only there).
pub fn merge_profile(c: &mut Claims, v: &Value) {
    let set = |dst: &mut String, name: &str, max: usize| {
        let s = string(v, name, max);
        if !s.is_empty() {
            *dst = s;
        }
    };
    set(&mut c.email, "email", 320);
    set(&mut c.name, "name", 256);
    set(&mut c.preferred_username, "preferred_username", 256);
    set(&mut c.picture, "picture", 2048);
    c.email_verified |= match v.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        // Some providers (Cognito, older Azure) send a string.
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    match v.get("groups") {
        Some(Value::Array(a)) => {
            c.groups = a
                .iter()
                .filter_map(Value::as_str)
                .filter(|g| g.len() <= 256)
                .take(1024)
                .map(str::to_string)
                .collect()
        }
        Some(Value::String(g)) if g.len() <= 256 => c.groups = vec![g.clone()],
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::base64::encode_url;

    fn tok(header: &str, claims: &str, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            encode_url(header.as_bytes()),
            encode_url(claims.as_bytes()),
            encode_url(sig)
        )
    }

    #[test]
    fn refuses_unsigned_and_hmac_and_garbage() {
        let c = r#"{"iss":"https://i","aud":"c","exp":9999999999,"nonce":"n","sub":"s"}"#;
        for alg in ["none", "HS256", "PS256", ""] {
            let t = tok(&format!(r#"{{"alg":"{alg}"}}"#), c, b"");
            assert!(matches!(split(&t), Err(Error::Algorithm(_))), "{alg}");
        }
        assert!(split("a.b").is_err());
        assert!(split("a.b.c.d").is_err());
        assert!(split(&"a".repeat(MAX_TOKEN + 1)).is_err());
        assert!(split(&tok(r#"{"alg":"RS256","crit":["x"]}"#, c, b"")).is_err());
        assert!(split(&tok(r#"{"alg":"RS256"}"#, "[1]", b"")).is_err());
        // No key of the right type: unknown key, not a panic.
        let t = tok(r#"{"alg":"ES256","kid":"k"}"#, c, b"sig");
        let p = split(&t).unwrap();
        let e = Expect {
            issuer: "https://i",
            client_id: "c",
            nonce: "n",
            now: 0,
        };
        assert_eq!(p.verify(&[], &e).unwrap_err(), Error::UnknownKey);
    }

    #[test]
    fn claim_rules() {
        let e = Expect {
            issuer: "https://i",
            client_id: "c",
            nonce: "n",
            now: 1_000_000,
        };
        let ok = |s: &str| check_claims(&serde_json::from_str(s).unwrap(), &e);
        let c = ok(r#"{"iss":"https://i/","aud":["x","c"],"exp":1000001,"iat":999999,"nonce":"n","sub":"s","email":"a@b","email_verified":"true","groups":"g"}"#).unwrap();
        assert_eq!((c.sub.as_str(), c.email_verified), ("s", true));
        assert_eq!(c.groups, ["g"]);
        let mut c2 = c.clone();
        merge_profile(
            &mut c2,
            &serde_json::json!({"groups": ["a", "b"], "email_verified": false, "name": "N"}),
        );
        assert_eq!(c2.groups, ["a", "b"]);
        assert_eq!((c2.email.as_str(), c2.name.as_str()), ("a@b", "N"));
        assert!(c2.email_verified, "a verified email stays verified");
        let bad = [
            r#"{"iss":"https://j","aud":"c","exp":1000001,"nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"d","exp":1000001,"nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":["c"],"azp":"d","exp":1000001,"nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","exp":999900,"nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","exp":"1000001","nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","exp":1000001,"iat":1000100,"nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","exp":1000001,"nbf":1000100,"nonce":"n","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","exp":1000001,"nonce":"m","sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","exp":1000001,"sub":"s"}"#,
            r#"{"iss":"https://i","aud":"c","exp":1000001,"nonce":"n"}"#,
        ];
        for b in bad {
            assert!(ok(b).is_err(), "{b}");
        }
        // Found by fuzz/oidc_parse: dates at the ends of the range must not
        // overflow the leeway arithmetic.
        let far = r#"{"iss":"https://i","aud":"c","exp":8.8e30,"iat":-9.3e18,"nbf":9.3e18,"nonce":"n","sub":"s"}"#;
        assert!(ok(far).is_err());
        let far =
            r#"{"iss":"https://i","aud":"c","exp":18446744073709551615,"nonce":"n","sub":"s"}"#;
        assert_eq!(ok(far).unwrap().exp, i64::MAX);
    }
}
