//! The routes the admin page needs that the REST API does not have, under
//! `/api/v1/web/`; authorised by the same transport code as every other
//! `/api/v1/*` route ([`crate::api::http1`]), with the browser's session
//! cookie ([`authorise`]) as the one way in besides the socket and API keys.
//! They live in the API room, beside the REST API, so that the page
//! (`crate::web`) only serves its files and the login link.
//!
//! | method | path | who | answer |
//! | --- | --- | --- | --- |
//! | POST | /api/v1/web/login-link | admin socket or API key | `{url, expiresInSeconds}` (one-time) |
//! | GET | /api/v1/web/session | session | `{csrf, expiresAt}` |
//! | POST | /api/v1/web/logout | session | `{}` (this session ends) |
//! | POST | /api/v1/web/sessions/revoke | any | `{revoked}` (every session ends) |
//! | GET | /api/v1/web/pending | any | `{pending: [{authId, hostname, os, expiresInSeconds}]}` |
//! | GET | /api/v1/web/status | any | version, uptime, database, nodes, DERP, STUN, health, memory |

use super::{error, Reply};
use crate::control::Server;
use crate::http::head::Head;
use crate::session;
use crate::state::now;
use serde_json::json;

/// Who is calling, as the transport decided.
pub enum Who {
    /// The admin socket (owner uid checked).
    Local,
    /// The main listener with an API key.
    ApiKey,
    /// A browser session (its cookie token).
    Session(String),
}

fn ok(v: serde_json::Value) -> Reply {
    Reply {
        status: 200,
        body: v.to_string(),
    }
}

/// True for the paths this module answers.
pub fn is_web_api_path(path: &str) -> bool {
    path.starts_with("/api/v1/web/")
}

pub fn handle(server: &Server, who: &Who, method: &str, path: &str) -> Reply {
    if !server.cfg.web_enabled {
        return error(404, "the web page is turned off (web.enabled: false)");
    }
    let sub = path.trim_start_matches("/api/v1/web/");
    match (method, sub) {
        ("POST", "login-link") => match who {
            Who::Session(_) => error(403, "a browser session cannot mint login links"),
            _ => {
                let t = server.web.sessions.new_link();
                let base = server.cfg.server_url.trim_end_matches('/');
                ok(json!({
                    "url": format!("{base}/admin/login?t={t}"),
                    "expiresInSeconds": session::LINK_TTL,
                }))
            }
        },
        ("GET", "session") => match who {
            Who::Session(c) => match server.web.sessions.get(c) {
                Some(s) => ok(json!({
                    "csrf": s.csrf,
                    "expiresAt": crate::timefmt::rfc3339(s.expires),
                })),
                None => error(401, "session expired"),
            },
            _ => error(400, "not a browser session"),
        },
        ("POST", "logout") => match who {
            Who::Session(c) => {
                server.web.sessions.revoke(c);
                ok(json!({}))
            }
            _ => error(400, "not a browser session"),
        },
        ("POST", "sessions/revoke") => {
            let n = server.web.sessions.revoke_all();
            log::info!("web: {n} session(s) revoked");
            ok(json!({ "revoked": n }))
        }
        ("GET", "pending") => {
            let t = now();
            let list: Vec<_> = server
                .pending
                .list()
                .into_iter()
                .map(|(id, hostinfo, expires)| {
                    json!({
                        "authId": id,
                        "hostname": hostinfo.hostname,
                        "os": hostinfo.os,
                        "expiresInSeconds": (expires - t).max(0),
                    })
                })
                .collect();
            ok(json!({ "pending": list }))
        }
        ("GET", "status") => ok(status(server)),
        _ => error(404, format!("no route {method} {path}")),
    }
}

fn status(server: &Server) -> serde_json::Value {
    let (nodes, online) = server.node_counts();
    let derp = server.derp.as_ref().map(|d| {
        let st = d.stats();
        let n = |a: &crate::atomic64::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "clients": d.connected_keys().len(),
            "served": server.derp_served().is_some(),
            "packetsRelayed": n(&st.packets_forwarded),
            "packetsDropped": n(&st.packets_dropped_unknown_dst) + n(&st.packets_dropped_queue_full),
        })
    });
    let regions: Vec<serde_json::Value> = server
        .derp_map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m.0.get()).ok())
        .and_then(|v| v.get("Regions").and_then(|r| r.as_object()).cloned())
        .map(|r| {
            r.values()
                .map(|g| {
                    json!({
                        "id": g.get("RegionID"),
                        "code": g.get("RegionCode"),
                        "name": g.get("RegionName"),
                        "nodes": g.get("Nodes").and_then(|n| n.as_array()).map_or(0, Vec::len),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let db_bytes = std::fs::metadata(&server.cfg.database_path)
        .map(|m| m.len())
        .unwrap_or(0);
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptimeSeconds": server.web.started.elapsed().as_secs(),
        "serverUrl": server.cfg.server_url,
        "databaseBytes": db_bytes,
        "databaseHealthy": super::routes::db_healthy(server),
        "nodes": nodes,
        "online": online,
        "derp": derp,
        "derpRegions": regions,
        "stun": server.cfg.stun_listen_addr.map(|a| a.to_string()),
        "policyMode": server.cfg.policy_mode,
        "sessions": server.web.sessions.live(),
        "residentBytes": crate::procfs::rss_bytes(std::process::id()).ok(),
        "openFiles": std::fs::read_dir("/proc/self/fd").map(|d| d.count()).ok(),
    })
}

/// What a request's cookie says about the browser behind it.
pub enum Browser {
    /// No session cookie at all: not a browser request.
    NoCookie,
    /// A live session; its cookie token (for log-out).
    Session(String),
    /// Refused: the status and a message for the page.
    Refused(u16, &'static str),
}

/// Decides a request that carries no API key: a live session cookie, and on
/// anything but GET/HEAD the session's CSRF token in `X-CSRF-Token`.
pub fn authorise(server: &Server, h: &Head) -> Browser {
    if !server.cfg.web_enabled {
        return Browser::NoCookie;
    }
    let header = crate::http::cookies(h);
    let Some(cookie) = session::cookie(&header, session::COOKIE) else {
        return Browser::NoCookie;
    };
    let Some(s) = server.web.sessions.get(cookie) else {
        return Browser::Refused(
            401,
            "the session has expired or was revoked: run `tinyscale web login` on the server for a new link",
        );
    };
    let safe = matches!(h.method.to_ascii_uppercase().as_str(), "GET" | "HEAD");
    if !safe {
        let ok = h
            .header("x-csrf-token")
            .is_some_and(|t| session::same(t, &s.csrf));
        if !ok {
            return Browser::Refused(
                403,
                "missing or wrong X-CSRF-Token: reload the page (nothing was changed)",
            );
        }
    }
    Browser::Session(cookie.to_string())
}
