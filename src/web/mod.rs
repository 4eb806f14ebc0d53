//! The built-in admin page under `/admin` on `listen_addr` (`web.enabled`).
//!
//! The page is static: one HTML shell, a stylesheet and a script compiled
//! into the binary ([`assets`]), served with a strict Content-Security-Policy.
//! Its script calls the same `/api/v1/*` routes as the REST API and the CLI
//! ([`crate::api`]): the only server-side differences are how the browser
//! proves who it is (a session cookie from a one-time login link, plus a
//! CSRF token header on every state-changing request, instead of a bearer
//! key; [`session`]) and a few read-mostly routes the REST API lacks
//! (pending logins, status figures; [`api`]).

pub mod assets;
pub use crate::api::web as api;
pub use crate::session;

use crate::control::Server;
use crate::http::head::Head;

/// Headers on every page answer: nothing but our own files may run or
/// load, nothing may frame us, and nothing is cached or leaks a referrer.
pub const SECURITY_HEADERS: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-store\r\n";

/// A page answer for the front door.
pub struct Page {
    pub status: &'static str,
    pub ctype: &'static str,
    /// Extra header lines (each ending in CRLF), security headers included.
    pub headers: String,
    pub body: Vec<u8>,
}

fn page(status: &'static str, ctype: &'static str, body: Vec<u8>) -> Page {
    Page {
        status,
        ctype,
        headers: SECURITY_HEADERS.to_string(),
        body,
    }
}

/// A plain, self-contained HTML page that says why something was refused.
pub fn refusal(status: &'static str, title: &str, text: &str) -> Page {
    page(
        status,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>tinyscale: {title}</title><link rel=\"stylesheet\" href=\"/admin/app.css\"></head><body><main><h1>{title}</h1><p>{text}</p><p>On the server, <code>tinyscale web login</code> prints a new link.</p></main></body></html>\n"
        )
        .into_bytes(),
    )
}

/// True for paths the page serves on the front door.
pub fn is_page_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Serves `GET /admin…`. `tls`: the request came over HTTPS (the cookie is
/// then marked Secure).
pub fn serve_page(server: &Server, h: &Head, tls: bool) -> Page {
    if !matches!(h.method.as_str(), "GET" | "HEAD") {
        return refusal("405 Method Not Allowed", "Not allowed", "Only GET here.");
    }
    match h.path.as_str() {
        "/admin" => {
            let mut p = page("302 Found", "text/plain", Vec::new());
            p.headers.push_str("Location: /admin/\r\n");
            p
        }
        "/admin/login" => login(server, h, tls),
        path => match assets::find(path) {
            Some((ctype, body)) => page("200 OK", ctype, body.to_vec()),
            None => refusal("404 Not Found", "Not found", "There is no such page."),
        },
    }
}

/// `GET /admin/login?t=TOKEN`: spends the link, sets the cookie and
/// redirects to the page, so the token is not left in the address bar or
/// the history.
fn login(server: &Server, h: &Head, tls: bool) -> Page {
    let token = h.query_param("t").unwrap_or("");
    match server.web.sessions.redeem(token) {
        Some((cookie, _)) => {
            let mut p = page("303 See Other", "text/plain", Vec::new());
            p.headers.push_str(&format!(
                "Location: /admin/\r\nSet-Cookie: {}={cookie}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}\r\n",
                session::COOKIE,
                session::SESSION_TTL,
                if tls { "; Secure" } else { "" }
            ));
            log::info!("web: a login link was used; session opened");
            p
        }
        None => {
            log::warn!("web: refused a login link that is unknown, used or expired");
            refusal(
                "403 Forbidden",
                "This login link does not work",
                "It was already used, has expired (links last 5 minutes) or was never issued. Each link logs in once.",
            )
        }
    }
}
