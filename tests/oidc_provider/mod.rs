//! The OpenID provider and the browser of the OIDC tests (`tests/oidc.rs`, against a
//! protocol-level client; `tests/e2e_oidc.rs`, against a real Tailscale client), one copy for
//! both: a small provider on loopback (tiny_http): discovery, JWKS (an RSA test key from
//! tests/vectors and a P-256 key made per run), an authorization endpoint that "logs the user in"
//! at once and redirects back with a code, a token endpoint that checks the client secret (HTTP
//! Basic) and the PKCE verifier against the S256 challenge, and a userinfo endpoint; and a
//! browser reduced to what a login needs (GET, cookies, redirects, the confirmation POST).
//! Dropping the [`Provider`] stops its thread and closes its port.
#![allow(dead_code)]

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tinyscale::wire::base64::{decode, encode, encode_url};

pub const CLIENT_ID: &str = "tinyscale-test";
pub const CLIENT_SECRET: &str = "test-secret-Δ&=";

// ---------------------------------------------------------------- provider

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signer {
    Rsa,
    Ec,
    /// Another P-256 key, claiming the real EC key's `kid`.
    Forged,
    /// The key the provider rolls over to (`kid` ec2), published only once
    /// `Provider::rotated` is set.
    Rotated,
}

/// What the provider puts in the next login's ID token.
#[derive(Clone, Debug)]
pub struct Login {
    pub signer: Signer,
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub groups: Vec<String>,
    pub preferred_username: String,
    pub aud: String,
    pub iss: Option<String>,
    pub exp_in: i64,
    pub nonce: Option<String>,
    /// Redirect back with `error=` instead of a code.
    pub error: Option<String>,
    /// Leave `groups` out of the ID token; the userinfo endpoint has them.
    pub groups_only_in_userinfo: bool,
    /// The subject the userinfo endpoint claims (default: the token's).
    pub userinfo_sub: Option<String>,
}

impl Default for Login {
    fn default() -> Self {
        Login {
            signer: Signer::Rsa,
            sub: "sub-amy".into(),
            email: "amy@example.com".into(),
            email_verified: true,
            groups: vec!["vpn".into()],
            preferred_username: "amy".into(),
            aud: CLIENT_ID.into(),
            iss: None,
            exp_in: 3600,
            nonce: None,
            error: None,
            groups_only_in_userinfo: false,
            userinfo_sub: None,
        }
    }
}

pub struct Grant {
    login: Login,
    nonce: String,
    challenge: String,
    redirect_uri: String,
}

pub struct Provider {
    pub url: String,
    pub next: Arc<Mutex<Login>>,
    /// Token requests whose PKCE verifier matched the challenge.
    pub pkce_ok: Arc<AtomicUsize>,
    /// Token requests refused (bad secret, verifier, code or redirect).
    pub refused: Arc<AtomicUsize>,
    /// Publish the rotated key (ec2) in the JWKS.
    pub rotated: Arc<std::sync::atomic::AtomicBool>,
    /// JWKS downloads served.
    pub jwks_served: Arc<AtomicUsize>,
    /// The listener and its thread (None for a provider that is not running); dropping the
    /// provider stops both.
    pub running: Option<(Arc<tiny_http::Server>, std::thread::JoinHandle<()>)>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some((http, thread)) = self.running.take() {
            http.unblock();
            // The thread ends at its next wait for a request; its Arc goes, the port closes.
            let _ = thread.join();
        }
    }
}

pub fn rsa_key() -> RsaKeyPair {
    let pem = include_str!("../vectors/oidc_test_rsa2048.pem");
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .filter(|l| !l.starts_with("-----"))
        .collect();
    RsaKeyPair::from_pkcs8(&decode(&b64).unwrap()).unwrap()
}

pub fn ec_key(rng: &SystemRandom) -> EcdsaKeyPair {
    let pk8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, rng).unwrap();
    EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pk8.as_ref(),
        rng,
    )
    .unwrap()
}

pub fn form(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                tinyscale::http::client::pct_decode(v).unwrap(),
            )
        })
        .collect()
}

pub fn start_provider() -> Provider {
    let http = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let addr = http.server_addr().to_ip().unwrap();
    let url = format!("http://{addr}");
    let rng = SystemRandom::new();
    let rsa = rsa_key();
    let ec = ec_key(&rng);
    let forged = ec_key(&rng);
    let ec2 = ec_key(&rng);
    let comps = signature::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let ec_jwk = |kid: &str, k: &EcdsaKeyPair| {
        let point = k.public_key().as_ref();
        json!({"kty": "EC", "kid": kid, "crv": "P-256", "use": "sig",
               "x": encode_url(&point[1..33]), "y": encode_url(&point[33..65])})
    };
    let mut keys = vec![
        json!({"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256",
               "n": encode_url(&comps.n), "e": encode_url(&comps.e)}),
        ec_jwk("ec1", &ec),
    ];
    let jwks = json!({ "keys": keys }).to_string();
    keys.push(ec_jwk("ec2", &ec2));
    let jwks_rotated = json!({ "keys": keys }).to_string();
    let discovery = json!({
        "issuer": url,
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "jwks_uri": format!("{url}/jwks"),
        "userinfo_endpoint": format!("{url}/userinfo"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
    })
    .to_string();
    let next = Arc::new(Mutex::new(Login::default()));
    let pkce_ok = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let rotated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let jwks_served = Arc::new(AtomicUsize::new(0));
    let mut p = Provider {
        url: url.clone(),
        next: next.clone(),
        pkce_ok: pkce_ok.clone(),
        refused: refused.clone(),
        rotated: rotated.clone(),
        jwks_served: jwks_served.clone(),
        running: None,
    };
    let listener = http.clone();
    let thread = std::thread::spawn(move || {
        let mut grants: HashMap<String, Grant> = HashMap::new();
        // Access token -> the login it was issued for.
        let mut access: HashMap<String, Login> = HashMap::new();
        let sign = |login: &Login, nonce: &str| -> String {
            let now = tinyscale::state::now();
            let (alg, kid) = match login.signer {
                Signer::Rsa => ("RS256", "rsa1"),
                Signer::Rotated => ("ES256", "ec2"),
                _ => ("ES256", "ec1"),
            };
            let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
            let claims = json!({
                "iss": login.iss.clone().unwrap_or_else(|| url.clone()),
                "sub": login.sub, "aud": login.aud, "azp": login.aud,
                "iat": now, "exp": now + login.exp_in,
                "nonce": login.nonce.clone().unwrap_or_else(|| nonce.to_string()),
                "email": login.email, "email_verified": login.email_verified,
                "preferred_username": login.preferred_username,
                "name": "Amy Example", "picture": "https://pics.example.com/amy.png",
            });
            let mut claims = claims;
            if !login.groups_only_in_userinfo {
                claims["groups"] = json!(login.groups);
            }
            let input = format!(
                "{}.{}",
                encode_url(header.to_string().as_bytes()),
                encode_url(claims.to_string().as_bytes())
            );
            let rng = SystemRandom::new();
            let sig = match login.signer {
                Signer::Rsa => {
                    let mut s = vec![0; rsa.public().modulus_len()];
                    rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s)
                        .unwrap();
                    s
                }
                Signer::Ec => ec.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
                Signer::Forged => forged
                    .sign(&rng, input.as_bytes())
                    .unwrap()
                    .as_ref()
                    .to_vec(),
                Signer::Rotated => ec2.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            };
            format!("{input}.{}", encode_url(&sig))
        };
        for mut req in http.incoming_requests() {
            let target = req.url().to_string();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let mut body = String::new();
            let _ = req.as_reader().take(64 * 1024).read_to_string(&mut body);
            let json_resp = |status: u16, v: String| {
                tiny_http::Response::from_string(v)
                    .with_status_code(status)
                    .with_header(
                        tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap(),
                    )
            };
            let resp = match path {
                "/.well-known/openid-configuration" => json_resp(200, discovery.clone()),
                "/jwks" => {
                    jwks_served.fetch_add(1, Ordering::SeqCst);
                    if rotated.load(Ordering::SeqCst) {
                        json_resp(200, jwks_rotated.clone())
                    } else {
                        json_resp(200, jwks.clone())
                    }
                }
                "/authorize" => {
                    let q = form(query);
                    let login = next.lock().unwrap().clone();
                    assert_eq!(q["client_id"], CLIENT_ID);
                    assert_eq!(q["response_type"], "code");
                    assert_eq!(q["scope"], "openid profile email");
                    assert_eq!(q["code_challenge_method"], "S256");
                    let redirect = q["redirect_uri"].clone();
                    let state = tinyscale::http::client::pct_encode(&q["state"]);
                    let location = match &login.error {
                        Some(e) => format!(
                            "{redirect}?error={e}&error_description=user+said+no&state={state}"
                        ),
                        None => {
                            let code = encode_url(&tinyscale::keys::random32());
                            grants.insert(
                                code.clone(),
                                Grant {
                                    login,
                                    nonce: q["nonce"].clone(),
                                    challenge: q["code_challenge"].clone(),
                                    redirect_uri: redirect.clone(),
                                },
                            );
                            format!("{redirect}?code={code}&state={state}")
                        }
                    };
                    tiny_http::Response::from_string("")
                        .with_status_code(302)
                        .with_header(tiny_http::Header::from_bytes("Location", location).unwrap())
                }
                "/token" => {
                    let f = form(&body);
                    let want_auth = format!(
                        "Basic {}",
                        encode(
                            format!(
                                "{}:{}",
                                tinyscale::http::client::pct_encode(CLIENT_ID),
                                tinyscale::http::client::pct_encode(CLIENT_SECRET)
                            )
                            .as_bytes()
                        )
                    );
                    let auth_ok = req
                        .headers()
                        .iter()
                        .any(|h| h.field.equiv("Authorization") && h.value.as_str() == want_auth);
                    let grant = f.get("code").and_then(|c| grants.remove(c));
                    match grant {
                        Some(g)
                            if auth_ok
                                && f.get("grant_type").map(String::as_str)
                                    == Some("authorization_code")
                                && f.get("redirect_uri") == Some(&g.redirect_uri) =>
                        {
                            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                            let d =
                                ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
                            if encode_url(d.as_ref()) == g.challenge {
                                pkce_ok.fetch_add(1, Ordering::SeqCst);
                                let tok = sign(&g.login, &g.nonce);
                                let at = encode_url(&tinyscale::keys::random32());
                                access.insert(at.clone(), g.login.clone());
                                json_resp(
                                    200,
                                    json!({"access_token": at, "token_type": "Bearer", "id_token": tok}).to_string(),
                                )
                            } else {
                                refused.fetch_add(1, Ordering::SeqCst);
                                json_resp(400, json!({"error": "invalid_grant", "error_description": "PKCE verifier mismatch"}).to_string())
                            }
                        }
                        _ => {
                            refused.fetch_add(1, Ordering::SeqCst);
                            json_resp(400, json!({"error": "invalid_client"}).to_string())
                        }
                    }
                }
                "/userinfo" => {
                    let bearer = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
                        .map(str::to_string);
                    match bearer.and_then(|b| access.get(&b).cloned()) {
                        Some(l) => json_resp(
                            200,
                            json!({
                                "sub": l.userinfo_sub.clone().unwrap_or(l.sub.clone()),
                                "groups": l.groups,
                            })
                            .to_string(),
                        ),
                        None => json_resp(401, json!({"error": "invalid_token"}).to_string()),
                    }
                }
                _ => json_resp(404, "{}".into()),
            };
            let _ = req.respond(resp);
        }
    });
    p.running = Some((listener, thread));
    p
}

// ----------------------------------------------------------------- browser

pub struct Resp {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

/// A browser reduced to what a login needs: GET, cookies, redirects, and
/// only ever to loopback.
pub struct Browser {
    pub server_url: String,
    pub server_addr: SocketAddr,
    pub cookies: Vec<(String, String)>,
    /// The loopback address the browser connects from (None: the default,
    /// 127.0.0.1), so a test can be two hosts to the server.
    pub source: Option<std::net::IpAddr>,
}

impl Browser {
    /// A browser without cookies for the control server at `server_url`, reached at
    /// `server_addr` (the two differ when the server listens on an ephemeral port).
    pub fn new(server_url: &str, server_addr: SocketAddr) -> Browser {
        Browser {
            server_url: server_url.to_string(),
            server_addr,
            cookies: vec![],
            source: None,
        }
    }

    pub fn get(&mut self, url: &str) -> Resp {
        self.request("GET", url)
    }

    pub fn request(&mut self, method: &str, url: &str) -> Resp {
        // The control server listens on an ephemeral port; server_url names
        // the configured one, so its URLs are sent to the real address.
        let (addr, path) = if let Some(p) = url.strip_prefix(&self.server_url) {
            (self.server_addr, p.to_string())
        } else {
            let rest = url
                .strip_prefix("http://127.0.0.1:")
                .expect("loopback only");
            let (port, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            (
                SocketAddr::from(([127, 0, 0, 1], port.parse::<u16>().unwrap())),
                p.to_string(),
            )
        };
        let mut s = match self.source {
            None => TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap(),
            Some(from) => {
                let s = smol::block_on(tinyscale::client::dial(addr, Some(from)))
                    .unwrap()
                    .into_inner()
                    .unwrap();
                s.set_nonblocking(false).unwrap();
                s
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nCookie: {cookie}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).unwrap();
        let mut hdrs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hdrs);
        let n = r.parse(&buf).unwrap().unwrap();
        let header = |name: &str| {
            r.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_string())
                .collect::<Vec<_>>()
        };
        for c in header("set-cookie") {
            let kv = c.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax"), "{c}");
            self.cookies.retain(|(ck, _)| ck != k);
            self.cookies.push((k.to_string(), v.to_string()));
        }
        Resp {
            status: r.code.unwrap(),
            location: header("location").into_iter().next(),
            body: String::from_utf8_lossy(&buf[n..]).to_string(),
        }
    }

    /// GET /register/<id> and the provider's redirect: returns the callback
    /// URL the provider sent the browser to (not yet followed).
    pub fn until_callback(&mut self, auth_url: &str) -> String {
        let r = self.get(auth_url);
        assert_eq!(r.status, 302, "{}", r.body);
        let to_provider = r.location.unwrap();
        let r = self.get(&to_provider);
        assert_eq!(r.status, 302);
        let cb = r.location.unwrap();
        assert!(
            cb.starts_with(&format!("{}/oidc/callback?", self.server_url)),
            "{cb}"
        );
        cb
    }

    /// The whole login: AuthURL → provider → callback → the click on the
    /// confirmation page, if the callback showed one; the final page.
    pub fn login(&mut self, auth_url: &str) -> Resp {
        let cb = self.until_callback(auth_url);
        let r = self.get(&cb);
        match confirm_url(&r) {
            Some(action) => {
                assert_eq!(r.status, 200);
                self.request("POST", &format!("{}{action}", self.server_url))
            }
            None => r,
        }
    }
}

/// The confirmation form's action on a callback page.
pub fn confirm_url(r: &Resp) -> Option<String> {
    let i = r.body.find("action=\"/oidc/confirm?t=")?;
    let rest = &r.body[i + "action=\"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}
