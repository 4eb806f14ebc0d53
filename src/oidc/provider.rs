//! The identity provider as seen from here: its discovery document
//! (`<issuer>/.well-known/openid-configuration`), its key set and its token
//! endpoint. Documents are cached: discovery for a day, keys for an hour
//! and again at once (at most every 10 s) when a token names a key we do not
//! have, which is how providers roll their keys.

use super::jwks::{self, Jwk};
use crate::config::OidcConfig;
use crate::http::client::{self, Request};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds on what the provider may send.
const MAX_DISCOVERY: usize = 64 * 1024;
const MAX_JWKS: usize = 256 * 1024;
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Bound on each exchange with the provider.
pub const TIMEOUT: Duration = Duration::from_secs(15);
const DISCOVERY_TTL: Duration = Duration::from_secs(24 * 3600);
const JWKS_TTL: Duration = Duration::from_secs(3600);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(10);

/// The parts of the discovery document used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    /// Where the profile can be read with the access token (optional).
    pub userinfo_endpoint: Option<String>,
    /// Send the client secret as HTTP Basic (the spec's default) rather than
    /// in the form body (`client_secret_post`).
    pub basic_auth: bool,
}

pub struct Provider {
    pub cfg: OidcConfig,
    meta: Mutex<Option<(Metadata, Instant)>>,
    keys: Mutex<Option<(Arc<Vec<Jwk>>, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Parses and checks a discovery document for `issuer`.
pub fn parse_discovery(doc: &[u8], issuer: &str) -> Result<Metadata, String> {
    let v: Value =
        serde_json::from_slice(doc).map_err(|e| format!("discovery document is not JSON: {e}"))?;
    let field = |k: &str| -> Result<String, String> {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= 2048)
            .map(str::to_string)
            .ok_or_else(|| format!("discovery document has no {k}"))
    };
    let doc_issuer = field("issuer")?;
    // OpenID Connect Discovery §4.3: the document must name the issuer it
    // was fetched for, or someone else's tokens would pass as ours.
    if doc_issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(format!(
            "discovery document names issuer {doc_issuer:?}, expected {issuer:?}"
        ));
    }
    let tls_only = issuer.starts_with("https://");
    let mut m = Metadata {
        issuer: doc_issuer,
        authorization_endpoint: field("authorization_endpoint")?,
        token_endpoint: field("token_endpoint")?,
        jwks_uri: field("jwks_uri")?,
        userinfo_endpoint: field("userinfo_endpoint").ok(),
        basic_auth: true,
    };
    for u in [&m.authorization_endpoint, &m.token_endpoint, &m.jwks_uri]
        .into_iter()
        .chain(m.userinfo_endpoint.as_ref())
    {
        let ok = u.starts_with("https://") || (!tls_only && u.starts_with("http://"));
        if !ok || u.bytes().any(|b| b <= b' ' || b == b'#') {
            return Err(format!("discovery document has an unusable endpoint {u:?}"));
        }
    }
    if let Some(methods) = v
        .get("token_endpoint_auth_methods_supported")
        .and_then(Value::as_array)
    {
        let has = |m: &str| methods.iter().any(|x| x.as_str() == Some(m));
        m.basic_auth = has("client_secret_basic") || !has("client_secret_post");
    }
    Ok(m)
}

impl Provider {
    pub fn new(cfg: OidcConfig) -> Provider {
        Provider {
            cfg,
            meta: Mutex::new(None),
            keys: Mutex::new(None),
        }
    }

    async fn get(&self, url: &str, max: usize) -> Result<Vec<u8>, String> {
        let r = client::send(&Request {
            ca_file: self.cfg.ca_cert_path.as_deref(),
            ..Request::get(url, max, TIMEOUT)
        })
        .await
        .map_err(|e| format!("{url}: {e}"))?;
        if r.status != 200 {
            return Err(format!("{url}: HTTP {}", r.status));
        }
        Ok(r.body)
    }

    /// The discovery document, from cache while fresh.
    pub async fn metadata(&self) -> Result<Metadata, String> {
        if let Some((m, t)) = lock(&self.meta).as_ref() {
            if t.elapsed() < DISCOVERY_TTL {
                return Ok(m.clone());
            }
        }
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer);
        let m = parse_discovery(&self.get(&url, MAX_DISCOVERY).await?, &self.cfg.issuer)?;
        *lock(&self.meta) = Some((m.clone(), Instant::now()));
        Ok(m)
    }

    /// The key set; `refresh` asks for a new copy unless the cached one is
    /// only seconds old (a token naming an unknown key cannot make us hammer
    /// the provider).
    pub async fn keys(&self, refresh: bool) -> Result<Arc<Vec<Jwk>>, String> {
        if let Some((k, t)) = lock(&self.keys).as_ref() {
            let age = t.elapsed();
            if age < JWKS_MIN_REFRESH || (!refresh && age < JWKS_TTL) {
                return Ok(k.clone());
            }
        }
        let m = self.metadata().await?;
        let keys = Arc::new(jwks::parse(&self.get(&m.jwks_uri, MAX_JWKS).await?)?);
        *lock(&self.keys) = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }

    /// Trades an authorization code for the raw ID token and the access
    /// token (if any, for the userinfo endpoint).
    pub async fn exchange(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<(String, Option<String>), String> {
        let m = self.metadata().await?;
        let secret = self.cfg.client_secret.0.as_str();
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
        ];
        if let Some(v) = verifier {
            pairs.push(("code_verifier", v));
        }
        let basic;
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        if m.basic_auth {
            // RFC 6749 §2.3.1: both parts form-encoded before base64.
            basic = format!(
                "Basic {}",
                crate::wire::base64::encode(
                    format!(
                        "{}:{}",
                        client::pct_encode(&self.cfg.client_id),
                        client::pct_encode(secret)
                    )
                    .as_bytes()
                )
            );
            headers.push(("Authorization", basic.as_str()));
        } else {
            pairs.push(("client_id", &self.cfg.client_id));
            pairs.push(("client_secret", secret));
        }
        let body = client::form(&pairs);
        let r = client::send(&Request {
            method: "POST",
            url: &m.token_endpoint,
            headers: &headers,
            body: body.as_bytes(),
            max_body: MAX_TOKEN_RESPONSE,
            timeout: TIMEOUT,
            ca_file: self.cfg.ca_cert_path.as_deref(),
        })
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if r.status != 200 {
            // The error code is safe to show; the description is bounded.
            let code = v.get("error").and_then(Value::as_str).unwrap_or("");
            let desc = v
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(format!(
                "token endpoint answered HTTP {}: {} {}",
                r.status,
                code.chars().take(64).collect::<String>(),
                desc.chars().take(200).collect::<String>()
            ));
        }
        let id_token = v
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "token endpoint sent no id_token".to_string())?;
        let access = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty() && a.len() <= 8192 && a.bytes().all(|b| b > b' ' && b < 0x7f))
            .map(str::to_string);
        Ok((id_token, access))
    }

    /// The userinfo document (a JSON object), read with the access token.
    pub async fn userinfo(&self, endpoint: &str, access_token: &str) -> Result<Value, String> {
        let auth = format!("Bearer {access_token}");
        let r = client::send(&Request {
            headers: &[("Authorization", auth.as_str())],
            ca_file: self.cfg.ca_cert_path.as_deref(),
            ..Request::get(endpoint, MAX_DISCOVERY, TIMEOUT)
        })
        .await
        .map_err(|e| format!("userinfo: {e}"))?;
        if r.status != 200 {
            return Err(format!("userinfo: HTTP {}", r.status));
        }
        serde_json::from_slice::<Value>(&r.body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| "userinfo: not a JSON object".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_rules() {
        let doc = |iss: &str, extra: &str| {
            format!(
                r#"{{"issuer":"{iss}","authorization_endpoint":"https://i/a","token_endpoint":"https://i/t","jwks_uri":"https://i/k"{extra}}}"#
            )
        };
        let m = parse_discovery(doc("https://i/", "").as_bytes(), "https://i").unwrap();
        assert!(m.basic_auth);
        assert_eq!(m.userinfo_endpoint, None);
        let m = parse_discovery(
            doc(
                "https://i",
                r#","token_endpoint_auth_methods_supported":["client_secret_post"]"#,
            )
            .as_bytes(),
            "https://i",
        )
        .unwrap();
        assert!(!m.basic_auth);
        assert!(parse_discovery(doc("https://evil", "").as_bytes(), "https://i").is_err());
        let plain = doc("https://i", "").replace("https://i/t", "http://i/t");
        assert!(parse_discovery(plain.as_bytes(), "https://i").is_err());
        assert!(parse_discovery(b"{}", "https://i").is_err());
        assert!(parse_discovery(b"<html>", "https://i").is_err());
    }
}
