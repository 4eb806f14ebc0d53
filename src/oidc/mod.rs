//! OpenID Connect login for interactive registrations (cargo feature
//! `oidc`). With `oidc.issuer` set, a client's AuthURL (`/register/<id>`)
//! sends the browser to the provider (authorization code flow with state,
//! nonce and PKCE); `/oidc/callback` trades the code for an ID token,
//! verifies it (signature against the provider's keys, issuer, audience,
//! lifetime, nonce), applies the allow-lists and shows a confirmation page
//! naming the machine and the account. Only the click on it (`POST
//! /oidc/confirm`) finds or creates the user by its stable provider identity
//! (`<issuer>/<sub>`) and approves the pending registration through the same
//! path as `tinyscale auth register`, which releases the client's held
//! follow-up. The click exists because a provider that signs the user in
//! silently would otherwise let anyone who gets a victim to open their
//! AuthURL join the tailnet as the victim (Headscale added the same page).
//!
//! Every refusal answers an error page and changes nothing: the login
//! state is single-use, and the user and node are written in one batch only
//! after every check passed.

pub mod jwks;
pub mod jwt;
pub mod provider;

use crate::control::interactive::{self, Approval};
use crate::control::Server;
use crate::http::client::pct_decode;
use crate::state::{now, State, User};
use crate::wire::base64::encode_url;
use log::{info, warn};
use provider::Provider;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// How long a browser has between the redirect and the callback.
const FLOW_TTL: i64 = 10 * 60;
/// Upper bound on logins in progress (anyone can start one).
const MAX_FLOWS: usize = 1024;
/// A source's share of [`MAX_FLOWS`] (the IPv4 address or the IPv6 /64:
/// [`crate::http::admission::source_of`]): one host reloading
/// `/register/<id>` cannot fill the table and lock everyone else out for
/// [`FLOW_TTL`] (the same share as pending interactive registrations).
const MAX_FLOWS_PER_SOURCE: usize = 16;
/// Longest authorization code accepted.
const MAX_CODE: usize = 4096;
/// Prefix of the per-login cookie that binds the callback to the browser
/// that started it (login CSRF).
const COOKIE: &str = "ts_oidc_";

/// How long the confirmation page stays valid.
const CONFIRM_TTL: i64 = 5 * 60;
/// Prefix of the cookie that binds the confirmation to the browser.
const CONFIRM_COOKIE: &str = "ts_oidc_c_";

/// A verified login waiting for the user's click, keyed by a random token.
struct Confirm {
    reg_id: String,
    claims: jwt::Claims,
    /// The node's key expiry decided at login.
    expiry: i64,
    expires: i64,
}

/// A login in progress, keyed by its `state`.
struct Flow {
    reg_id: String,
    nonce: String,
    /// PKCE code verifier (None when PKCE is off).
    verifier: Option<String>,
    expires: i64,
    /// The browser's source (address or /64), for [`MAX_FLOWS_PER_SOURCE`].
    source: IpAddr,
}

pub struct Oidc {
    pub provider: Provider,
    flows: Mutex<HashMap<String, Flow>>,
    confirms: Mutex<HashMap<String, Confirm>>,
}

/// An HTTP answer for the front door.
pub struct Page {
    pub status: u16,
    /// Extra header lines, each ending in CRLF.
    pub headers: String,
    pub body: String,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A small HTML page; `msg` is plain text (escaped here).
fn page(status: u16, title: &str, msg: &str) -> Page {
    Page {
        status,
        headers: "Cache-Control: no-store\r\n".into(),
        body: format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>tinyscale: {t}</title></head><body><h1>{t}</h1>\n<p>{m}</p>\n</body></html>\n",
            t = esc(title),
            m = esc(msg)
        ),
    }
}

fn fail(status: u16, msg: &str) -> Page {
    // The message may quote the provider or the query: one log line only.
    let line: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    info!("oidc: login refused ({status}): {line}");
    page(status, "login failed", msg)
}

fn random_token() -> String {
    encode_url(&crate::keys::random32())
}

fn cookie_name(state: &str) -> String {
    cookie_name_with(COOKIE, state)
}

fn cookie_name_with(prefix: &str, token: &str) -> String {
    // By characters: the token comes from the query and may be any UTF-8.
    let head: String = token.chars().take(8).collect();
    format!("{prefix}{head}")
}

/// A query parameter, percent-decoded.
fn param(query: &str, k: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (pk, v) = kv.split_once('=').unwrap_or((kv, ""));
        (pk == k).then(|| pct_decode(v)).flatten()
    })
}

/// A state or confirmation token from the query, if it looks like ours
/// (43 base64url characters; refuse anything else early).
fn token_param(query: &str, k: &str) -> Option<String> {
    param(query, k).filter(|s| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn set_cookie(server: &Server, name: &str, value: &str, path: &str, max_age: i64) -> String {
    let secure = if server.cfg.server_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!(
        "Set-Cookie: {name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}\r\n"
    )
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

impl Oidc {
    pub fn new(cfg: crate::config::OidcConfig) -> Oidc {
        Oidc {
            provider: Provider::new(cfg),
            flows: Mutex::new(HashMap::new()),
            confirms: Mutex::new(HashMap::new()),
        }
    }

    fn flows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Flow>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the provider's discovery document and keys once; `serve`
    /// refuses to start on failure when `only_start_if_oidc_is_available`.
    pub async fn check_available(&self) -> Result<(), String> {
        self.provider.metadata().await?;
        self.provider.keys(false).await.map(|_| ())
    }

    fn redirect_uri(server: &Server) -> String {
        format!(
            "{}/oidc/callback",
            server.cfg.server_url.trim_end_matches('/')
        )
    }

    /// `GET /register/<id>` from `source`: start a login for pending
    /// registration `id`.
    pub async fn start(&self, server: &Server, id: &str, source: IpAddr) -> Page {
        let source = crate::http::admission::source_of(source);
        match server.pending.status(id) {
            None => {
                return fail(
                    404,
                    "This registration is unknown or has expired. Run `tailscale up` again.",
                )
            }
            Some((true, _)) => {
                return fail(
                    410,
                    "This registration has expired. Run `tailscale up` again.",
                )
            }
            Some((false, Some(_))) => {
                return page(
                    200,
                    "registered",
                    "This machine is registered. You can close this page.",
                )
            }
            Some((false, None)) => {}
        }
        let meta = match self.provider.metadata().await {
            Ok(m) => m,
            Err(e) => {
                warn!("oidc: provider unavailable: {e}");
                return fail(
                    503,
                    &format!(
                        "The identity provider cannot be reached; try again later, or ask an \
                         administrator to run: tinyscale auth register --auth-id {id} --user USERNAME"
                    ),
                );
            }
        };
        let cfg = &self.provider.cfg;
        let state = random_token();
        let nonce = random_token();
        let verifier = cfg.pkce.then(random_token);
        let mut q: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", cfg.client_id.clone()),
            ("redirect_uri", Self::redirect_uri(server)),
            ("scope", cfg.scope.join(" ")),
            ("state", state.clone()),
            ("nonce", nonce.clone()),
        ];
        if let Some(v) = verifier.as_deref() {
            if cfg.pkce_plain {
                q.push(("code_challenge", v.to_string()));
                q.push(("code_challenge_method", "plain".into()));
            } else {
                let d = ring::digest::digest(&ring::digest::SHA256, v.as_bytes());
                q.push(("code_challenge", encode_url(d.as_ref())));
                q.push(("code_challenge_method", "S256".into()));
            }
        }
        for (k, v) in &cfg.extra_params {
            if !q.iter().any(|(qk, _)| qk == k) {
                q.push((k.as_str(), v.clone()));
            }
        }
        let mut url = meta.authorization_endpoint.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        url.push_str(&crate::http::client::form(&pairs));
        {
            let t = now();
            let mut flows = self.flows();
            flows.retain(|_, f| f.expires > t);
            if flows.len() >= MAX_FLOWS {
                return fail(
                    503,
                    "Too many logins in progress; try again in a few minutes.",
                );
            }
            if flows.values().filter(|f| f.source == source).count() >= MAX_FLOWS_PER_SOURCE {
                return fail(
                    429,
                    "Too many logins in progress from this address; finish one or try again in a few minutes.",
                );
            }
            flows.insert(
                state.clone(),
                Flow {
                    reg_id: id.to_string(),
                    nonce,
                    verifier,
                    expires: t + FLOW_TTL,
                    source,
                },
            );
        }
        let mut p = page(302, "redirecting", "Redirecting to the identity provider.");
        p.headers.push_str(&format!("Location: {url}\r\n"));
        p.headers.push_str(&set_cookie(
            server,
            &cookie_name(&state),
            &state,
            "/oidc/callback",
            FLOW_TTL,
        ));
        p
    }

    /// `GET /oidc/callback?code=…&state=…` (or `?error=…`).
    pub async fn callback(&self, server: &Server, query: &str, cookies: &str) -> Page {
        let param = |k: &str| -> Option<String> {
            query.split('&').find_map(|kv| {
                let (pk, v) = kv.split_once('=').unwrap_or((kv, ""));
                (pk == k).then(|| pct_decode(v)).flatten()
            })
        };
        // Ours are 43 base64url characters; refuse anything else early.
        let Some(state) = param("state").filter(|s| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) else {
            return fail(400, "The callback has no valid login state.");
        };
        // Single use: a replayed or failed callback cannot try again.
        let Some(flow) = self.flows().remove(&state) else {
            return fail(
                400,
                "Unknown or already used login state. Start again from the link `tailscale up` printed.",
            );
        };
        if cookie(cookies, &cookie_name(&state)) != Some(state.as_str()) {
            return fail(
                403,
                "This login was not started in this browser. Start again from the link `tailscale up` printed.",
            );
        }
        if flow.expires <= now() {
            return fail(
                410,
                "This login took too long. Start again from the link `tailscale up` printed.",
            );
        }
        if let Some(err) = param("error") {
            let desc = param("error_description").unwrap_or_default();
            let msg = format!(
                "The identity provider refused the login: {} {}",
                err.chars().take(64).collect::<String>(),
                desc.chars().take(200).collect::<String>()
            );
            return fail(if err == "access_denied" { 403 } else { 400 }, &msg);
        }
        let Some(code) = param("code").filter(|c| !c.is_empty() && c.len() <= MAX_CODE) else {
            return fail(400, "The callback has no authorization code.");
        };
        match server.pending.status(&flow.reg_id) {
            Some((false, None)) => {}
            Some((false, Some(_))) => {
                return fail(409, "This machine is already registered.");
            }
            _ => {
                return fail(
                    410,
                    "The registration expired before the login finished. Run `tailscale up` again.",
                )
            }
        }
        let (raw, access) = match self
            .provider
            .exchange(&code, &Self::redirect_uri(server), flow.verifier.as_deref())
            .await
        {
            Ok(t) => t,
            Err(e) => return fail(502, &format!("Could not redeem the login code: {e}")),
        };
        let mut claims = match self.verify(&raw, &flow.nonce).await {
            Ok(c) => c,
            Err((status, e)) => return fail(status, &e),
        };
        self.add_userinfo(&mut claims, access.as_deref()).await;
        if let Err(e) = authorize(&self.provider.cfg, &claims) {
            return fail(403, &e);
        }
        let cfg = &self.provider.cfg;
        let expiry = if cfg.use_expiry_from_token {
            claims.exp
        } else if cfg.expiry.is_zero() {
            0
        } else {
            now().saturating_add(cfg.expiry.as_secs().min(i64::MAX as u64) as i64)
        };
        // Verified; now the user says whether this machine is theirs.
        let token = random_token();
        {
            let t = now();
            let mut m = self.confirms();
            m.retain(|_, c| c.expires > t);
            if m.len() >= MAX_FLOWS {
                return fail(
                    503,
                    "Too many logins in progress; try again in a few minutes.",
                );
            }
            m.insert(
                token.clone(),
                Confirm {
                    reg_id: flow.reg_id.clone(),
                    claims: claims.clone(),
                    expiry,
                    expires: t + CONFIRM_TTL,
                },
            );
        }
        let machine = server.pending.hostname(&flow.reg_id).unwrap_or_default();
        let account = [&claims.email, &claims.preferred_username, &claims.sub]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_default();
        let mut p = Page {
            status: 200,
            headers: "Cache-Control: no-store\r\n".into(),
            body: String::new(),
        };
        p.body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>tinyscale: register this machine?</title></head><body><h1>Register this machine?</h1>\n\
             <p>Signed in as <b>{}</b>. Register the machine <b>{}</b> to this account?</p>\n\
             <form method=\"post\" action=\"/oidc/confirm?t={token}\"><button type=\"submit\">Register this machine</button></form>\n\
             <p>If you did not just run <code>tailscale up</code> on that machine, close this page: someone may be trying to join your network as you.</p>\n\
             </body></html>\n",
            esc(&account),
            esc(&machine)
        );
        p.headers.push_str(&set_cookie(
            server,
            &cookie_name_with(CONFIRM_COOKIE, &token),
            &token,
            "/oidc/confirm",
            CONFIRM_TTL,
        ));
        p
    }

    fn confirms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Confirm>> {
        self.confirms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `POST /oidc/confirm?t=…`: the click on the confirmation page. Creates
    /// or updates the user and registers the machine.
    pub fn confirm(&self, server: &Server, query: &str, cookies: &str) -> Page {
        let Some(token) = token_param(query, "t") else {
            return fail(400, "The confirmation has no valid token.");
        };
        let Some(c) = self.confirms().remove(&token) else {
            return fail(
                400,
                "Unknown or already used confirmation. Start again from the link `tailscale up` printed.",
            );
        };
        if cookie(cookies, &cookie_name_with(CONFIRM_COOKIE, &token)) != Some(token.as_str()) {
            return fail(
                403,
                "This login was not confirmed in the browser that made it.",
            );
        }
        if c.expires <= now() {
            return fail(
                410,
                "The confirmation took too long. Start again from the link `tailscale up` printed.",
            );
        }
        let t = now();
        let claims = c.claims;
        let mut who = String::new();
        let r = interactive::approve_with(server, &c.reg_id, |st| {
            let (user, write_user) = resolve_user(st, &claims, t)?;
            who = write_user
                .as_ref()
                .or_else(|| st.users.get(&user))
                .map(|u| u.name.clone())
                .unwrap_or_default();
            Ok(Approval {
                user,
                write_user,
                expiry: Some(c.expiry),
                method: crate::state::RegisterMethod::Oidc,
            })
        });
        match r {
            Ok(node) => {
                info!(
                    "oidc: {who} ({}/{}) logged in; node {} {}",
                    claims.iss, claims.sub, node.id, node.given_name
                );
                page(
                    200,
                    "logged in",
                    &format!(
                        "Logged in as {who}; machine {} is registered. You can close this page.",
                        node.given_name
                    ),
                )
            }
            Err(e) if e.contains("expired") || e.contains("not found") => fail(410, &e),
            Err(e) if e.contains("already") => fail(409, &e),
            Err(e) => fail(500, &e),
        }
    }

    /// Completes the profile from the userinfo endpoint, as Headscale does
    /// (some providers send `groups` only there). Only a document about the
    /// same subject counts (OpenID Connect Core §5.3.2); failure is logged
    /// and the ID token's claims stand alone.
    async fn add_userinfo(&self, claims: &mut jwt::Claims, access: Option<&str>) {
        let Some(access) = access else { return };
        let Ok(meta) = self.provider.metadata().await else {
            return;
        };
        let Some(ep) = meta.userinfo_endpoint.as_deref() else {
            return;
        };
        match self.provider.userinfo(ep, access).await {
            Ok(v) if v.get("sub").and_then(|s| s.as_str()) == Some(claims.sub.as_str()) => {
                jwt::merge_profile(claims, &v)
            }
            Ok(_) => warn!("oidc: userinfo is about another subject; ignored"),
            Err(e) => info!("oidc: {e}; using the ID token's claims only"),
        }
    }

    /// Verifies the ID token; on an unknown key the key set is fetched
    /// again once.
    async fn verify(&self, raw: &str, nonce: &str) -> Result<jwt::Claims, (u16, String)> {
        let parts = jwt::split(raw).map_err(|e| (403, e.to_string()))?;
        let cfg = &self.provider.cfg;
        let expect = jwt::Expect {
            issuer: &cfg.issuer,
            client_id: &cfg.client_id,
            nonce,
            now: now(),
        };
        let keys = self
            .provider
            .keys(false)
            .await
            .map_err(|e| (502, format!("Could not read the provider's keys: {e}")))?;
        match parts.verify(&keys, &expect) {
            Err(jwt::Error::UnknownKey) => {}
            r => return r.map_err(|e| (403, e.to_string())),
        }
        let keys = self
            .provider
            .keys(true)
            .await
            .map_err(|e| (502, format!("Could not read the provider's keys: {e}")))?;
        parts
            .verify(&keys, &expect)
            .map_err(|e| (403, e.to_string()))
    }
}

/// The allow-lists, as Headscale applies them: groups always; email domain
/// and address only trusting a verified email (unless
/// `email_verified_required: false`).
pub fn authorize(cfg: &crate::config::OidcConfig, c: &jwt::Claims) -> Result<(), String> {
    if !cfg.allowed_groups.is_empty() && !cfg.allowed_groups.iter().any(|g| c.groups.contains(g)) {
        return Err("Your account is not in a group allowed to log in here.".into());
    }
    if cfg.allowed_domains.is_empty() && cfg.allowed_users.is_empty() {
        return Ok(());
    }
    if cfg.email_verified_required && !c.email_verified {
        return Err("Your email address is not verified by the identity provider.".into());
    }
    let email = c.email.to_ascii_lowercase();
    if !cfg.allowed_domains.is_empty() {
        let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !cfg.allowed_domains.iter().any(|d| d == domain) {
            return Err("Your email domain is not allowed to log in here.".into());
        }
    }
    if !cfg.allowed_users.is_empty() && !cfg.allowed_users.contains(&email) {
        return Err("Your account is not allowed to log in here.".into());
    }
    Ok(())
}

/// Finds the user for these claims by provider identity, refreshing its
/// profile from the token, or makes a new one (not yet stored). The name is
/// `preferred_username`, else the email, made unique with a numeric suffix:
/// an OIDC login never takes over a user it did not create.
fn resolve_user(st: &State, c: &jwt::Claims, t: i64) -> Result<(u64, Option<User>), String> {
    let provider_id = format!("{}/{}", c.iss.trim_end_matches('/'), c.sub);
    let email = if c.email.contains('@') {
        c.email.clone()
    } else {
        String::new()
    };
    if let Some(u) = st.users.values().find(|u| u.provider_id == provider_id) {
        let mut u2 = u.clone();
        u2.display_name = c.name.clone();
        u2.email = email;
        u2.profile_pic_url = c.picture.clone();
        return Ok((u.id, (u2 != *u).then_some(u2)));
    }
    let free = |n: &str| {
        crate::state::ops::validate_user_name(n).is_ok() && !st.users.values().any(|u| u.name == n)
    };
    let base = [c.preferred_username.as_str(), email.as_str()]
        .into_iter()
        .find(|n| crate::state::ops::validate_user_name(n).is_ok())
        .ok_or("The identity provider sent neither a usable preferred_username nor an email.")?;
    let name = if free(base) {
        base.to_string()
    } else {
        (2..1000)
            .map(|i| format!("{}-{i}", base.chars().take(56).collect::<String>()))
            .find(|n| free(n))
            .ok_or("No free user name for this account.")?
    };
    let u = User {
        id: st.next_user_id,
        name,
        display_name: c.name.clone(),
        email,
        created: t,
        provider_id,
        profile_pic_url: c.picture.clone(),
    };
    Ok((u.id, Some(u)))
}

/// Builds the OIDC side of the server from the config: None without
/// `oidc.issuer`. With `only_start_if_oidc_is_available` (the default) an
/// unreachable provider is a start-up error; otherwise it is retried on
/// each login.
pub fn from_config(cfg: &crate::config::Config) -> std::io::Result<Option<Oidc>> {
    let Some(o) = cfg.oidc.clone() else {
        return Ok(None);
    };
    let only = o.only_start_if_oidc_is_available;
    let oidc = Oidc::new(o);
    match async_io::block_on(oidc.check_available()) {
        Ok(()) => info!("oidc: provider {} ready", oidc.provider.cfg.issuer),
        Err(e) if only => {
            return Err(std::io::Error::other(format!(
                "oidc: provider unavailable ({e}); set oidc.only_start_if_oidc_is_available: false to start anyway"
            )))
        }
        Err(e) => warn!("oidc: provider unavailable, will retry on login: {e}"),
    }
    Ok(Some(oidc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> crate::config::OidcConfig {
        let (c, _) = crate::config::from_yaml_str(
            "oidc:\n  issuer: https://i\n  client_id: c\n  client_secret: s\n",
            std::path::Path::new("/"),
            std::path::Path::new("/d"),
        )
        .unwrap();
        c.oidc.unwrap()
    }

    #[test]
    fn allow_lists() {
        let mut c = cfg();
        let mut cl = jwt::Claims {
            email: "Amy@Example.com".into(),
            email_verified: true,
            groups: vec!["staff".into()],
            ..Default::default()
        };
        assert!(authorize(&c, &cl).is_ok());
        c.allowed_domains = vec!["example.com".into()];
        assert!(authorize(&c, &cl).is_ok());
        c.allowed_users = vec!["bob@example.com".into()];
        assert!(authorize(&c, &cl).is_err());
        c.allowed_users = vec!["amy@example.com".into()];
        assert!(authorize(&c, &cl).is_ok());
        cl.email_verified = false;
        assert!(authorize(&c, &cl).is_err());
        c.email_verified_required = false;
        assert!(authorize(&c, &cl).is_ok());
        c.allowed_groups = vec!["admins".into()];
        assert!(authorize(&c, &cl).is_err());
        cl.groups.push("admins".into());
        assert!(authorize(&c, &cl).is_ok());
        cl.email = "amy@evil.example.com".into();
        assert!(authorize(&c, &cl).is_err());
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie("a=1; ts_oidc_abc=xyz", "ts_oidc_abc"), Some("xyz"));
        assert_eq!(cookie("a=1", "ts_oidc_abc"), None);
        assert_eq!(cookie_name("abcdefghijk"), "ts_oidc_abcdefgh");
        // Multi-byte characters never split (a panic would end the server).
        assert_eq!(cookie_name("aéééééééé"), "ts_oidc_aééééééé");
    }
}
