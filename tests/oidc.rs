//! OIDC login end to end, against a small OpenID provider this test runs
//! itself on loopback (tiny_http): discovery, JWKS (an RSA test key from
//! tests/vectors and a P-256 key made per run), an authorization endpoint
//! that "logs the user in" at once and redirects back with a code, and a
//! token endpoint that checks the client secret (HTTP Basic) and the PKCE
//! verifier against the S256 challenge. A protocol-level client starts an
//! interactive registration; a plain-HTTP "browser" follows the AuthURL
//! through the redirects. Every refusal is checked to change nothing.
//! All traffic stays on 127.0.0.1; every wait is bounded.

mod common;

use common::*;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tinyscale::client::{self, Node};
use tinyscale::config::{OidcConfig, Secret};
use tinyscale::control::interactive;
use tinyscale::wire::base64::{decode, encode, encode_url};

const CLIENT_ID: &str = "tinyscale-test";
const CLIENT_SECRET: &str = "test-secret-Δ&=";

// ---------------------------------------------------------------- provider

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Signer {
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
struct Login {
    signer: Signer,
    sub: String,
    email: String,
    email_verified: bool,
    groups: Vec<String>,
    preferred_username: String,
    aud: String,
    iss: Option<String>,
    exp_in: i64,
    nonce: Option<String>,
    /// Redirect back with `error=` instead of a code.
    error: Option<String>,
    /// Leave `groups` out of the ID token; the userinfo endpoint has them.
    groups_only_in_userinfo: bool,
    /// The subject the userinfo endpoint claims (default: the token's).
    userinfo_sub: Option<String>,
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

struct Grant {
    login: Login,
    nonce: String,
    challenge: String,
    redirect_uri: String,
}

struct Provider {
    url: String,
    next: Arc<Mutex<Login>>,
    /// Token requests whose PKCE verifier matched the challenge.
    pkce_ok: Arc<AtomicUsize>,
    /// Token requests refused (bad secret, verifier, code or redirect).
    refused: Arc<AtomicUsize>,
    /// Publish the rotated key (ec2) in the JWKS.
    rotated: Arc<std::sync::atomic::AtomicBool>,
    /// JWKS downloads served.
    jwks_served: Arc<AtomicUsize>,
}

fn rsa_key() -> RsaKeyPair {
    let pem = include_str!("vectors/oidc_test_rsa2048.pem");
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .filter(|l| !l.starts_with("-----"))
        .collect();
    RsaKeyPair::from_pkcs8(&decode(&b64).unwrap()).unwrap()
}

fn ec_key(rng: &SystemRandom) -> EcdsaKeyPair {
    let pk8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, rng).unwrap();
    EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pk8.as_ref(),
        rng,
    )
    .unwrap()
}

fn form(s: &str) -> HashMap<String, String> {
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

fn start_provider() -> Provider {
    let http = tiny_http::Server::http("127.0.0.1:0").unwrap();
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
    let p = Provider {
        url: url.clone(),
        next: next.clone(),
        pkce_ok: pkce_ok.clone(),
        refused: refused.clone(),
        rotated: rotated.clone(),
        jwks_served: jwks_served.clone(),
    };
    std::thread::spawn(move || {
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
    p
}

// ----------------------------------------------------------------- browser

struct Resp {
    status: u16,
    location: Option<String>,
    body: String,
}

/// A browser reduced to what a login needs: GET, cookies, redirects, and
/// only ever to loopback.
struct Browser {
    server_url: String,
    server_addr: SocketAddr,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(ts: &TestServer) -> Browser {
        Browser {
            server_url: ts.server.cfg.server_url.clone(),
            server_addr: ts.addr,
            cookies: vec![],
        }
    }

    fn get(&mut self, url: &str) -> Resp {
        self.request("GET", url)
    }

    fn request(&mut self, method: &str, url: &str) -> Resp {
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
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
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
    fn until_callback(&mut self, auth_url: &str) -> String {
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
    fn login(&mut self, auth_url: &str) -> Resp {
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
fn confirm_url(r: &Resp) -> Option<String> {
    let i = r.body.find("action=\"/oidc/confirm?t=")?;
    let rest = &r.body[i + "action=\"".len()..];
    Some(rest[..rest.find('"')?].to_string())
}

// ------------------------------------------------------------------ server

fn oidc_config(p: &Provider) -> OidcConfig {
    OidcConfig {
        issuer: p.url.clone(),
        client_id: CLIENT_ID.into(),
        client_secret: Secret(CLIENT_SECRET.into()),
        scope: vec!["openid".into(), "profile".into(), "email".into()],
        extra_params: vec![],
        allowed_domains: vec!["example.com".into()],
        allowed_users: vec!["amy@example.com".into(), "bob@example.com".into()],
        allowed_groups: vec!["vpn".into()],
        expiry: Duration::from_secs(30 * 86400),
        use_expiry_from_token: false,
        pkce: true,
        pkce_plain: false,
        only_start_if_oidc_is_available: true,
        email_verified_required: true,
        ca_cert_path: None,
    }
}

fn start_oidc(tag: &str, o: OidcConfig) -> TestServer {
    let dir = tempdir(tag);
    let mut cfg = config(&dir);
    cfg.oidc = Some(o);
    start_with(cfg, dir)
}

/// Users and nodes, to compare before and after a refused login.
fn snapshot(ts: &TestServer) -> (Vec<tinyscale::state::User>, Vec<tinyscale::state::Node>) {
    let st = ts.server.state();
    (
        st.users.values().cloned().collect(),
        st.nodes.values().cloned().collect(),
    )
}

/// Starts an interactive registration for `n`; returns the AuthURL.
async fn pending(ts: &TestServer, conn: &mut client::Conn, n: &Node) -> String {
    let r = conn.register(&n.register_request(None)).await.unwrap();
    assert_eq!(r.error, "");
    assert!(!r.machine_authorized && !r.auth_url.is_empty());
    assert!(r.auth_url.starts_with(&ts.server.cfg.server_url));
    r.auth_url
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    smol::unblock(f).await
}

// ------------------------------------------------------------------- tests

#[test]
fn login_creates_user_and_registers_node() {
    let p = start_provider();
    let ts = start_oidc("oidc-ok", oidc_config(&p));
    assert!(ts.server.state().users.is_empty());
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("laptop");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let id = interactive::id_from_url(&url).unwrap().to_string();

        // The client's follow-up is held while the browser logs in.
        let mut follow = n.register_request(None);
        follow.followup = url.clone();
        let held = smol::spawn(async move {
            let r = c.register(&follow).await.unwrap();
            (c, r)
        });
        async_io::Timer::after(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "follow-up answered before login");

        // The callback shows the confirmation page; nothing is registered
        // until the click, which only counts from this browser, once.
        let mut b = Browser::new(&ts);
        let t0 = tinyscale::state::now();
        let srv = ts.server.cfg.server_url.clone();
        let addr = ts.addr;
        let url_again = url.clone();
        let (ask, b) = blocking(move || {
            let cb = b.until_callback(&url);
            (b.get(&cb), b)
        })
        .await;
        assert_eq!(ask.status, 200, "{}", ask.body);
        assert!(
            ask.body.contains("Register the machine <b>laptop</b>"),
            "{}",
            ask.body
        );
        assert!(ask.body.contains("amy@example.com"), "{}", ask.body);
        assert!(
            ts.server.state().users.is_empty(),
            "user made before the click"
        );
        assert_eq!(ts.server.pending.status(&id), Some((false, None)));
        let action = format!("{srv}{}", confirm_url(&ask).unwrap());
        let (stranger, late) = blocking(move || {
            let mut b = b;
            let mut stranger = Browser {
                server_url: srv,
                server_addr: addr,
                cookies: vec![],
            };
            let s = stranger.request("POST", &action);
            // The stranger's attempt used the token up, even for the
            // browser that owned it: it has to start over.
            (s, b.request("POST", &action))
        })
        .await;
        assert_eq!(stranger.status, 403, "{}", stranger.body);
        assert_eq!(late.status, 400, "{}", late.body);
        assert!(ts.server.state().users.is_empty());
        assert_eq!(ts.server.pending.status(&id), Some((false, None)));
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.login(&url_again)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Logged in as amy"), "{}", page.body);
        assert_eq!(p.pkce_ok.load(Ordering::SeqCst), 2);

        let (mut c, r) = held.await;
        assert_eq!(r.error, "");
        assert!(r.machine_authorized && r.auth_url.is_empty());
        assert_eq!(r.login.login_name, "amy@example.com");
        assert_eq!(r.login.profile_pic_url, "https://pics.example.com/amy.png");

        let (user, node) = {
            let st = ts.server.state();
            assert_eq!(st.users.len(), 1);
            let u = st.users.values().next().unwrap().clone();
            let n = st.node_by_node_key(&n.node_key().0).unwrap().clone();
            (u, n)
        };
        assert_eq!(user.name, "amy");
        assert_eq!(user.email, "amy@example.com");
        assert_eq!(user.display_name, "Amy Example");
        assert_eq!(user.provider_id, format!("{}/sub-amy", p.url));
        assert_eq!(node.user, user.id);
        let want = t0 + 30 * 86400;
        assert!(
            (want..=want + 5).contains(&node.expiry),
            "expiry {} not ~{want}",
            node.expiry
        );
        // The registration is done; its page says so, a second login is refused.
        assert_eq!(
            ts.server.pending.status(&id).map(|s| s.1),
            Some(Some(node.id))
        );

        let mut s = c.map(&n.map_request(true, &[])).await.unwrap();
        let m = s.next().await.unwrap().unwrap();
        assert_eq!(m["Node"]["MachineAuthorized"], true);
        assert_eq!(m["Node"]["User"], json!(user.id));
        drop(s);

        // Its key expires; the client rotates to a new node key and logs in
        // again through the provider: same node, addresses and user.
        ts.server.state().expire_node(node.id).unwrap();
        let mut n = n;
        let old_key = n.node_key();
        n.node_private = tinyscale::keys::random32();
        let mut rotate = n.register_request(None);
        rotate.old_node_key = old_key;
        let r = c.register(&rotate).await.unwrap();
        assert!(!r.auth_url.is_empty() && !r.machine_authorized, "{r:?}");
        rotate.followup = r.auth_url.clone();
        let held = smol::spawn(async move { c.register(&rotate).await.unwrap() });
        let mut b = Browser::new(&ts);
        let u = r.auth_url.clone();
        let t1 = tinyscale::state::now();
        let page = blocking(move || b.login(&u)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(held.await.machine_authorized);
        {
            let st = ts.server.state();
            let again = st.node_by_node_key(&n.node_key().0).unwrap();
            assert_eq!(again.id, node.id);
            assert_eq!((again.ipv4, again.ipv6), (node.ipv4, node.ipv6));
            assert_eq!(again.old_node_key, old_key.0);
            assert_eq!(again.user, user.id);
            assert!(again.expiry >= t1 + 30 * 86400, "{}", again.expiry);
            assert_eq!(st.users.len(), 1);
        }

        // Same account, second machine, ES256 this time: the user is reused.
        p.next.lock().unwrap().signer = Signer::Ec;
        let n2 = Node::new("phone");
        let mut c2 = client::connect(ts.addr, &server_pub, &n2.machine_private)
            .await
            .unwrap();
        let url2 = pending(&ts, &mut c2, &n2).await;
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.login(&url2)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let st = ts.server.state();
        assert_eq!(st.users.len(), 1, "second login made another user");
        assert_eq!(st.node_by_node_key(&n2.node_key().0).unwrap().user, user.id);
    });
}

#[test]
fn groups_from_userinfo() {
    let p = start_provider();
    let ts = start_oidc("oidc-ui", oidc_config(&p));
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("ui");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let before = snapshot(&ts);
        // Userinfo about someone else is ignored: no groups, refused.
        *p.next.lock().unwrap() = Login {
            groups_only_in_userinfo: true,
            userinfo_sub: Some("sub-mallory".into()),
            ..Default::default()
        };
        let mut b = Browser::new(&ts);
        let u = url.clone();
        let page = blocking(move || b.login(&u)).await;
        assert_eq!(page.status, 403, "{}", page.body);
        assert!(page.body.contains("group"), "{}", page.body);
        assert_eq!(snapshot(&ts), before);
        // The same subject's userinfo supplies the groups the token lacks.
        p.next.lock().unwrap().userinfo_sub = None;
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(ts.server.state().users.len(), 1);
    });
}

#[test]
fn provider_key_rotation() {
    let p = start_provider();
    let ts = start_oidc("oidc-rot", oidc_config(&p));
    // Start-up read the key set once.
    assert_eq!(p.jwks_served.load(Ordering::SeqCst), 1);
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("rot");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        // The provider rolls over to a new key. A token naming it within
        // seconds of the last download is refused without another download
        // (a stream of unknown `kid`s cannot make us hammer the provider)...
        p.rotated.store(true, Ordering::SeqCst);
        p.next.lock().unwrap().signer = Signer::Rotated;
        let mut b = Browser::new(&ts);
        let u = url.clone();
        let page = blocking(move || b.login(&u)).await;
        assert_eq!(page.status, 403, "{}", page.body);
        assert!(page.body.contains("does not publish"), "{}", page.body);
        assert_eq!(p.jwks_served.load(Ordering::SeqCst), 1);
        assert!(ts.server.state().users.is_empty());
        // ...and once the cached set is 10 s old, the unknown key makes us
        // fetch the set again, and the login passes.
        async_io::Timer::after(Duration::from_millis(10_500)).await;
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(p.jwks_served.load(Ordering::SeqCst), 2);
        assert_eq!(ts.server.state().users.len(), 1);
    });
}

#[test]
fn expiry_from_token_and_name_clash() {
    let p = start_provider();
    let mut o = oidc_config(&p);
    o.use_expiry_from_token = true;
    let ts = start_oidc("oidc-exp", o);
    // A local user already named "amy": the OIDC account must not become it.
    let local = ts.server.state().create_user("amy", "", "").unwrap();
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("box");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        p.next.lock().unwrap().exp_in = 7200;
        let t0 = tinyscale::state::now();
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let st = ts.server.state();
        let node = st.node_by_node_key(&n.node_key().0).unwrap();
        assert_ne!(node.user, local.id);
        assert_eq!(st.users[&node.user].name, "amy-2");
        assert!(
            (t0 + 7200..=t0 + 7205).contains(&node.expiry),
            "{}",
            node.expiry
        );
    });
}

#[test]
fn refusals_change_nothing() {
    let p = start_provider();
    let ts = start_oidc("oidc-bad", oidc_config(&p));
    let bad: Vec<(&str, Login, u16, &str)> = vec![
        (
            "forged signature",
            Login {
                signer: Signer::Forged,
                ..Default::default()
            },
            403,
            "signature",
        ),
        (
            "expired token",
            Login {
                exp_in: -3600,
                ..Default::default()
            },
            403,
            "expired",
        ),
        (
            "wrong audience",
            Login {
                aud: "another-client".into(),
                ..Default::default()
            },
            403,
            "aud",
        ),
        (
            "wrong issuer",
            Login {
                iss: Some("http://127.0.0.1:1".into()),
                ..Default::default()
            },
            403,
            "iss",
        ),
        (
            "wrong nonce",
            Login {
                nonce: Some("not-the-nonce".into()),
                ..Default::default()
            },
            403,
            "nonce",
        ),
        (
            "disallowed domain",
            Login {
                email: "amy@evil.example".into(),
                ..Default::default()
            },
            403,
            "domain",
        ),
        (
            "disallowed user",
            Login {
                email: "carol@example.com".into(),
                ..Default::default()
            },
            403,
            "not allowed",
        ),
        (
            "disallowed group",
            Login {
                groups: vec!["staff".into()],
                ..Default::default()
            },
            403,
            "group",
        ),
        (
            "unverified email",
            Login {
                email_verified: false,
                ..Default::default()
            },
            403,
            "verified",
        ),
        (
            "provider error",
            Login {
                error: Some("access_denied".into()),
                ..Default::default()
            },
            403,
            "refused",
        ),
    ];
    block_on_timeout(120, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("victim");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let id = interactive::id_from_url(&url).unwrap().to_string();
        let before = snapshot(&ts);
        let unchanged = |what: &str| {
            assert_eq!(snapshot(&ts), before, "{what} changed state");
            assert_eq!(
                ts.server.pending.status(&id),
                Some((false, None)),
                "{what} touched the registration"
            );
        };

        for (what, login, status, says) in bad {
            *p.next.lock().unwrap() = login;
            let mut b = Browser::new(&ts);
            let u = url.clone();
            let page = blocking(move || b.login(&u)).await;
            assert_eq!(page.status, status, "{what}: {}", page.body);
            assert!(page.body.contains(says), "{what}: {}", page.body);
            unchanged(what);
        }
        *p.next.lock().unwrap() = Login::default();

        // Tampered state: unknown, refused before any provider call.
        let mut b = Browser::new(&ts);
        let u = url.clone();
        let page = blocking(move || {
            let cb = b.until_callback(&u);
            let tampered = cb.replacen("state=", "state=x", 1);
            b.get(&tampered)
        })
        .await;
        assert_eq!(page.status, 400, "{}", page.body);
        assert!(page.body.contains("Unknown"), "{}", page.body);
        unchanged("tampered state");
        // A state that is not even ours in shape (multi-byte UTF-8).
        let mut b = Browser::new(&ts);
        let srv = ts.server.cfg.server_url.clone();
        let page = blocking(move || {
            b.get(&format!(
                "{srv}/oidc/callback?code=c&state=a%C3%A9%C3%A9%C3%A9%C3%A9%C3%A9"
            ))
        })
        .await;
        assert_eq!(page.status, 400, "{}", page.body);
        unchanged("garbage state");

        // The callback in a browser that did not start the login (no
        // cookie), then replayed in the right one: both refused.
        let mut b = Browser::new(&ts);
        let u = url.clone();
        let srv = ts.server.cfg.server_url.clone();
        let addr = ts.addr;
        let (other, replay) = blocking(move || {
            let cb = b.until_callback(&u);
            let mut stranger = Browser {
                server_url: srv,
                server_addr: addr,
                cookies: vec![],
            };
            let other = stranger.get(&cb);
            (other, b.get(&cb))
        })
        .await;
        assert_eq!(other.status, 403, "{}", other.body);
        assert!(other.body.contains("not started in this browser"));
        assert_eq!(replay.status, 400, "{}", replay.body);
        unchanged("foreign browser / replay");

        // Unknown registration ID: no redirect to the provider.
        let mut b = Browser::new(&ts);
        let srv = ts.server.cfg.server_url.clone();
        let page = blocking(move || b.get(&format!("{srv}/register/0000deadbeef"))).await;
        assert_eq!(page.status, 404);
        assert!(page.location.is_none());
        unchanged("unknown registration");

        // A registration that expires while the user is at the provider.
        let short = ts
            .server
            .pending
            .start_with_ttl(
                interactive::Request {
                    machine_key: [7; 32],
                    node_key: [8; 32],
                    old_node_key: [0; 32],
                    hostinfo: json!({"Hostname": "late"}),
                    ephemeral: false,
                    version: 130,
                },
                Duration::from_secs(2),
            )
            .unwrap();
        let mut b = Browser::new(&ts);
        let short_url = format!("{}/register/{short}", ts.server.cfg.server_url);
        let srv = ts.server.cfg.server_url.clone();
        let (page, confirm, again) = blocking(move || {
            // One login still at the provider, one at the confirmation page.
            let cb = b.until_callback(&short_url);
            let cb2 = b.until_callback(&short_url);
            let ask = b.get(&cb2);
            let action = confirm_url(&ask).expect("confirmation page");
            std::thread::sleep(Duration::from_millis(3100));
            let confirm = b.request("POST", &format!("{srv}{action}"));
            (b.get(&cb), confirm, b.get(&short_url))
        })
        .await;
        assert_eq!(page.status, 410, "{}", page.body);
        assert!(page.body.contains("expired"), "{}", page.body);
        assert_eq!(confirm.status, 410, "{}", confirm.body);
        assert!(confirm.body.contains("expired"), "{}", confirm.body);
        assert_eq!(again.status, 410, "{}", again.body);
        assert_eq!(snapshot(&ts), before, "expired registration changed state");

        // Nothing above reached a token endpoint with a wrong secret or
        // verifier, and the pending registration still completes.
        assert_eq!(p.refused.load(Ordering::SeqCst), 0);
        let mut follow = n.register_request(None);
        follow.followup = url.clone();
        let held = smol::spawn(async move { c.register(&follow).await.unwrap() });
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(held.await.machine_authorized);
        assert_eq!(ts.server.state().users.len(), 1);
    });
}

#[test]
fn wrong_client_secret_is_refused_by_the_provider() {
    let p = start_provider();
    let mut o = oidc_config(&p);
    o.client_secret = Secret("not-the-secret".into());
    let ts = start_oidc("oidc-secret", o);
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("x");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let before = snapshot(&ts);
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.login(&url)).await;
        assert_eq!(page.status, 502, "{}", page.body);
        assert!(page.body.contains("invalid_client"), "{}", page.body);
        assert!(!page.body.contains("not-the-secret"));
        assert_eq!(p.refused.load(Ordering::SeqCst), 1);
        assert_eq!(snapshot(&ts), before);
    });
}

#[test]
fn unreachable_provider_stops_start_unless_allowed() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Provider {
        url: format!("http://127.0.0.1:{port}"),
        next: Default::default(),
        pkce_ok: Default::default(),
        refused: Default::default(),
        rotated: Default::default(),
        jwks_served: Default::default(),
    };
    let dir = tempdir("oidc-down");
    let mut cfg = config(&dir);
    cfg.oidc = Some(oidc_config(&p));
    let e = tinyscale::control::build_server(cfg.clone())
        .err()
        .expect("must refuse to start");
    assert!(
        e.to_string().contains("only_start_if_oidc_is_available"),
        "{e}"
    );
    if let Some(o) = cfg.oidc.as_mut() {
        o.only_start_if_oidc_is_available = false;
    }
    let ts = start_with(cfg, dir);
    block_on_timeout(60, async {
        let server_pub = client::fetch_key(ts.addr).await.unwrap();
        let n = Node::new("y");
        let mut c = client::connect(ts.addr, &server_pub, &n.machine_private)
            .await
            .unwrap();
        let url = pending(&ts, &mut c, &n).await;
        let id = interactive::id_from_url(&url).unwrap().to_string();
        let mut b = Browser::new(&ts);
        let page = blocking(move || b.get(&url)).await;
        assert_eq!(page.status, 503, "{}", page.body);
        assert!(page.body.contains(&format!("auth register --auth-id {id}")));
    });
}
