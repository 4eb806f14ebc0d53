//! The REST API (Headscale's v1 paths and JSON shapes), independent of the
//! transport: `handle` takes a method, a path with query and a body and
//! returns a status and a JSON body.
//!
//! | method | path | body / query | answer |
//! | --- | --- | --- | --- |
//! | GET | /api/v1/user | ?id= ?name= ?email= | `{users}` |
//! | POST | /api/v1/user | `{name, displayName, email}` | `{user}` |
//! | POST | /api/v1/user/{id}/rename/{newName} | | `{user}` |
//! | DELETE | /api/v1/user/{id} | | `{}` |
//! | GET | /api/v1/preauthkey | ?user= | `{preAuthKeys}` |
//! | POST | /api/v1/preauthkey | `{user, reusable, ephemeral, expiration, aclTags}` | `{preAuthKey}` (with the full `key`) |
//! | POST | /api/v1/preauthkey/expire | `{id}` | `{}` |
//! | DELETE | /api/v1/preauthkey | ?id= | `{}` |
//! | GET | /api/v1/node | ?user= | `{nodes}` |
//! | GET | /api/v1/node/{id} | | `{node}` |
//! | DELETE | /api/v1/node/{id} | | `{}` |
//! | POST | /api/v1/node/{id}/expire | `{expiry, disableExpiry}` (optional) | `{node}` |
//! | POST | /api/v1/node/{id}/rename/{newName} | | `{node}` |
//! | POST | /api/v1/node/{id}/tags | `{tags}` | `{node}` |
//! | POST | /api/v1/node/{id}/approve_routes | `{routes}` | `{node}` |
//! | POST | /api/v1/auth/register | `{authId, user}` | `{node}` (approves an interactive login) |
//! | POST | /api/v1/node/register | ?user= &key= (older Headscale shape) | `{node}` |
//! | GET | /api/v1/policy | | `{policy, updatedAt}` |
//! | PUT | /api/v1/policy | `{policy}` (only with `policy.mode: database`) | `{policy, updatedAt}` |
//!
//! | GET | /api/v1/apikey | | `{apiKeys}` (prefixes masked) |
//! | POST | /api/v1/apikey | `{expiration}` | `{apiKey}` (the full key, once) |
//! | POST | /api/v1/apikey/expire | `{prefix}` or `{id}` | `{}` |
//! | DELETE | /api/v1/apikey/{prefix} | ?id= | `{}` |
//! | POST | /api/v1/auth/approve, /auth/reject | `{authId}` | `{}` |
//! | POST | /api/v1/node/backfillips | ?confirmed= | `{changes}` |
//! | POST | /api/v1/debug/node | | 501 (no fake nodes here) |
//! | POST | /api/v1/policy/check | `{policy}` | `{}` or 400 with the error |
//! | GET | /api/v1/health | | `{databaseConnectivity}` |
//!
//! Users are named by ID or name wherever an id is expected. Errors are
//! grpc-gateway's `{code, message, details}`. Who may call is decided by
//! the transport ([`super::http1`]): the admin socket by peer uid, the
//! main listener by API key.

use super::apikey;
use super::types::*;
use crate::control::{Change, Server};
use crate::state::{now, OpError, State};
use serde::de::DeserializeOwned;
use serde_json::json;

pub struct Reply {
    pub status: u16,
    pub body: String,
}

fn ok(v: serde_json::Value) -> Reply {
    Reply {
        status: 200,
        body: v.to_string(),
    }
}

/// An error as grpc-gateway answers it: the HTTP status of the gRPC code
/// and `{code, message, details}`.
pub fn error(status: u16, message: impl Into<String>) -> Reply {
    // gRPC codes for the statuses we send (grpc-gateway's mapping, inverted).
    let code = match status {
        400 => 3,        // INVALID_ARGUMENT
        401 => 16,       // UNAUTHENTICATED
        403 => 7,        // PERMISSION_DENIED
        404 => 5,        // NOT_FOUND
        409 => 6,        // ALREADY_EXISTS
        412 => 9,        // FAILED_PRECONDITION
        413 => 8,        // RESOURCE_EXHAUSTED
        405 | 501 => 12, // UNIMPLEMENTED
        503 => 14,       // UNAVAILABLE
        _ => 13,         // INTERNAL
    };
    let e = ApiError {
        code,
        message: message.into(),
        details: Vec::new(),
    };
    Reply {
        status,
        body: serde_json::to_string(&e).unwrap_or_default(),
    }
}

fn op_err(e: OpError) -> Reply {
    let status = match &e {
        OpError::NotFound(_) => 404,
        OpError::Invalid(_) => 400,
        OpError::Conflict(_) => 409,
        OpError::Storage(_) => 500,
    };
    error(status, e.to_string())
}

fn body<T: DeserializeOwned + Default>(b: &[u8]) -> Result<T, Reply> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| error(400, format!("invalid JSON body: {e}")))
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| pct_decode(v))
    })
}

/// Percent-decoding for path segments and query values (`+` is a space).
pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| (b.get(j)?.to_ascii_lowercase() as char).to_digit(16);
        match b[i] {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn key_json(st: &State, k: &crate::state::PreAuthKey, full: Option<&str>) -> ApiPreAuthKey {
    ApiPreAuthKey::new(k, st.users.get(&k.user), full)
}

fn node_json(server: &Server, st: &State, n: &crate::state::Node) -> ApiNode {
    let online = server.hub.is_online(n.id);
    let mut a = ApiNode::new(n, st.users.get(&n.user), st.keys.get(&n.auth_key), online);
    // Serving = what peers are given: approved exit routes, and subnet routes only where this
    // node is the elected primary (Headscale's subnetRoutes); a standby serves nothing.
    a.subnet_routes = server.routes_in_effect(n);
    if n.is_tagged() {
        // Tags are the identity: Headscale shows its special user here.
        a.user = Some(tagged_devices());
    }
    a
}

/// Headscale's stand-in owner of tagged nodes (its id and names).
pub fn tagged_devices() -> ApiUser {
    ApiUser {
        id: "2147455555".into(),
        name: "tagged-devices".into(),
        display_name: "Tagged Devices".into(),
        created_at: "0001-01-01T00:00:00Z".into(),
        ..ApiUser::default()
    }
}

fn parse_id(s: &str, what: &str) -> Result<u64, Reply> {
    s.parse()
        .map_err(|_| error(400, format!("invalid {what} id {s:?}")))
}

/// Routes one request. Hub notifications are sent after the state lock is
/// released.
pub fn handle(server: &Server, method: &str, url: &str, body_bytes: &[u8]) -> Reply {
    // Changes are acknowledged once durable: wait for the group commit of
    // whatever this request queued, with the state lock released.
    let commits = server.state().store.committer();
    let before = commits.queued();
    let reply = handle_inner(server, method, url, body_bytes);
    let after = commits.queued();
    if after > before {
        if let Err(e) = commits.wait(after) {
            return error(500, e.to_string());
        }
    }
    reply
}

fn handle_inner(server: &Server, method: &str, url: &str, body_bytes: &[u8]) -> Reply {
    let (path, q) = url.split_once('?').unwrap_or((url, ""));
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(pct_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let mut changes = Vec::new();
    let r = route(server, method, &segs, q, body_bytes, &mut changes);
    for c in changes {
        server.hub.notify(c);
    }
    r.unwrap_or_else(|e| e)
}

fn route(
    server: &Server,
    method: &str,
    segs: &[&str],
    q: &str,
    b: &[u8],
    changes: &mut Vec<Change>,
) -> Result<Reply, Reply> {
    match (method, segs) {
        ("GET", ["health"]) => Ok(ok(json!({"status": "pass"}))),

        // ----- users
        ("GET", ["api", "v1", "user"]) => {
            let st = server.state();
            let id = query(q, "id").filter(|s| !s.is_empty());
            let name = query(q, "name").filter(|s| !s.is_empty());
            let email = query(q, "email").filter(|s| !s.is_empty());
            let users: Vec<ApiUser> = st
                .users
                .values()
                .filter(|u| filter_ok(&id, &u.id.to_string()))
                .filter(|u| filter_ok(&name, &u.name))
                .filter(|u| filter_ok(&email, &u.email))
                .map(ApiUser::from)
                .collect();
            Ok(ok(json!({ "users": users })))
        }
        ("POST", ["api", "v1", "user"]) => {
            let r: CreateUserRequest = body(b)?;
            let u = server
                .state()
                .create_user(&r.name, &r.display_name, &r.email)
                .map_err(op_err)?;
            changes.push(Change::UserChanged(u.id));
            Ok(ok(json!({ "user": ApiUser::from(&u) })))
        }
        ("POST", ["api", "v1", "user", who, "rename", new]) => {
            let u = server.state().rename_user(who, new).map_err(op_err)?;
            changes.push(Change::UserChanged(u.id));
            Ok(ok(json!({ "user": ApiUser::from(&u) })))
        }
        ("DELETE", ["api", "v1", "user", who]) => {
            let u = server.state().destroy_user(who).map_err(op_err)?;
            changes.push(Change::UserChanged(u.id));
            Ok(ok(json!({})))
        }

        // ----- pre-auth keys
        ("GET", ["api", "v1", "preauthkey"]) => {
            let st = server.state();
            let user = query(q, "user");
            let keys = st.list_preauth_keys(user.as_deref()).map_err(op_err)?;
            let keys: Vec<ApiPreAuthKey> = keys.iter().map(|k| key_json(&st, k, None)).collect();
            Ok(ok(json!({ "preAuthKeys": keys })))
        }
        ("POST", ["api", "v1", "preauthkey"]) => {
            let r: CreatePreAuthKeyRequest = body(b)?;
            let secs = match r.expiration.as_deref().filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => match crate::timefmt::parse_rfc3339(s) {
                    Some(0) => None,
                    Some(t) => Some(t.saturating_sub(now()).max(0) as u64),
                    None => return Err(error(400, format!("invalid expiration {s:?}"))),
                },
            };
            let mut st = server.state();
            let user = Some(r.user.as_str()).filter(|u| !u.is_empty() && *u != "0");
            let (k, full) = st
                .create_preauth_key(user, r.reusable, r.ephemeral, secs, r.acl_tags)
                .map_err(op_err)?;
            Ok(ok(json!({ "preAuthKey": key_json(&st, &k, Some(&full)) })))
        }
        ("POST", ["api", "v1", "preauthkey", "expire"]) => {
            let r: ExpirePreAuthKeyRequest = body(b)?;
            let which = if r.id.is_empty() { &r.key } else { &r.id };
            if which.is_empty() {
                return Err(error(400, "missing key id"));
            }
            let user = Some(r.user.as_str()).filter(|u| !u.is_empty());
            server
                .state()
                .expire_preauth_key(user, which)
                .map_err(op_err)?;
            Ok(ok(json!({})))
        }
        ("DELETE", ["api", "v1", "preauthkey"]) => {
            let id = query(q, "id").unwrap_or_default();
            let mut st = server.state();
            let id = st.find_preauth_key(None, &id).map_err(op_err)?;
            st.delete_preauth_key(id).map_err(op_err)?;
            Ok(ok(json!({})))
        }

        // ----- nodes
        ("GET", ["api", "v1", "node"]) => {
            let st = server.state();
            let uid = match query(q, "user").filter(|u| !u.is_empty()) {
                Some(u) => Some(
                    st.find_user(&u)
                        .map(|u| u.id)
                        .ok_or_else(|| error(404, format!("user {u:?} not found")))?,
                ),
                None => None,
            };
            let nodes: Vec<ApiNode> = st
                .nodes
                .values()
                .filter(|n| uid.is_none() || (Some(n.user) == uid && !n.is_tagged()))
                .map(|n| node_json(server, &st, n))
                .collect();
            Ok(ok(json!({ "nodes": nodes })))
        }
        ("GET", ["api", "v1", "node", id]) => {
            let id = parse_id(id, "node")?;
            let st = server.state();
            let n = st
                .nodes
                .get(&id)
                .ok_or_else(|| error(404, format!("node {id} not found")))?;
            Ok(ok(json!({ "node": node_json(server, &st, n) })))
        }
        ("DELETE", ["api", "v1", "node", id]) => {
            let id = parse_id(id, "node")?;
            server.state().delete_node(id).map_err(op_err)?;
            changes.push(Change::NodeRemoved(id));
            Ok(ok(json!({})))
        }
        ("POST", ["api", "v1", "node", id, "expire"]) => {
            let id = parse_id(id, "node")?;
            let r: ExpireNodeRequest = body(b)?;
            let mut st = server.state();
            let n = if r.disable_expiry {
                st.set_node_expiry(id, 0)
            } else {
                match r.expiry.as_deref().filter(|s| !s.is_empty()) {
                    None => st.expire_node(id),
                    Some(s) => match crate::timefmt::parse_rfc3339(s) {
                        Some(0) | None => return Err(error(400, format!("invalid expiry {s:?}"))),
                        Some(t) => st.set_node_expiry(id, t),
                    },
                }
            }
            .map_err(op_err)?;
            if n.is_expired(crate::state::now()) {
                server.mark_expiry_announced(id);
            }
            changes.push(Change::NodeUpsert(id));
            Ok(ok(json!({ "node": node_json(server, &st, &n) })))
        }
        ("POST", ["api", "v1", "node", id, "rename", new]) => {
            let id = parse_id(id, "node")?;
            let mut st = server.state();
            let n = st.rename_node(id, new).map_err(op_err)?;
            changes.push(Change::NodeUpsert(id));
            Ok(ok(json!({ "node": node_json(server, &st, &n) })))
        }

        ("POST", ["api", "v1", "node", id, "tags"]) => {
            let id = parse_id(id, "node")?;
            let r: SetTagsRequest = body(b)?;
            let mut st = server.state();
            let n = st.set_node_tags(id, r.tags).map_err(op_err)?;
            changes.push(Change::NodeUpsert(id));
            Ok(ok(json!({ "node": node_json(server, &st, &n) })))
        }
        ("POST", ["api", "v1", "node", id, "approve_routes"]) => {
            let id = parse_id(id, "node")?;
            let r: SetApprovedRoutesRequest = body(b)?;
            let n = server
                .state()
                .set_approved_routes(id, r.routes)
                .map_err(op_err)?;
            changes.push(Change::NodeUpsert(id));
            // Elect now (not at the next map), so the answer says what the node serves.
            changes.extend(server.reelect().into_iter().map(Change::NodeUpsert));
            let st = server.state();
            Ok(ok(json!({ "node": node_json(server, &st, &n) })))
        }

        // ----- interactive registrations
        ("POST", ["api", "v1", "auth", "register"]) => {
            let r: AuthRegisterRequest = body(b)?;
            let id = if r.auth_id.is_empty() {
                r.key
            } else {
                r.auth_id
            };
            approve(server, &id, &r.user)
        }
        ("POST", ["api", "v1", "node", "register"]) => {
            let user = query(q, "user").unwrap_or_default();
            let key = query(q, "key").unwrap_or_default();
            approve(server, &key, &user)
        }

        // ----- policy
        ("GET", ["api", "v1", "policy"]) => {
            let text = server.policy_text().unwrap_or_default();
            let mut v = json!({ "policy": text, "updatedAt": policy_updated(server) });
            if let Some(e) = server.policy_error() {
                v["error"] = json!(e);
            }
            Ok(ok(v))
        }
        ("PUT", ["api", "v1", "policy"]) => {
            let r: SetPolicyRequest = body(b)?;
            if server.cfg.policy_mode != "database" {
                return Err(error(
                    400,
                    "policy.mode is \"file\": edit the policy file instead \
                     (set policy.mode: database to manage it through the API)",
                ));
            }
            // Check and compile, persist, then activate (store before memory).
            use crate::control::policy::SetPolicyError;
            let updated =
                crate::state::Op::PutMeta(META_POLICY_UPDATED, now().to_le_bytes().to_vec());
            server
                .set_policy_stored(&r.policy, vec![updated])
                .map_err(|e| match e {
                    SetPolicyError::Invalid(e) => error(400, invalid_policy(&e)),
                    SetPolicyError::Storage(e) => error(500, e),
                })?;
            Ok(ok(
                json!({ "policy": r.policy, "updatedAt": policy_updated(server) }),
            ))
        }

        ("GET", ["api", "v1", "health"]) => {
            Ok(ok(json!({ "databaseConnectivity": db_healthy(server) })))
        }
        ("POST", ["api", "v1", "policy", "check"]) => {
            let r: SetPolicyRequest = body(b)?;
            let topo = crate::control::policy::topology(&server.state());
            crate::policy::parse_and_check(&r.policy, &topo)
                .map_err(|e| error(400, invalid_policy(&e.to_string())))?;
            Ok(ok(json!({})))
        }

        // ----- API keys
        ("GET", ["api", "v1", "apikey"]) => {
            let st = server.state();
            let keys = apikey::list(&st.store).map_err(op_err)?;
            let keys: Vec<ApiApiKey> = keys.iter().map(api_key_json).collect();
            Ok(ok(json!({ "apiKeys": keys })))
        }
        ("POST", ["api", "v1", "apikey"]) => {
            let r: CreateApiKeyRequest = body(b)?;
            let exp = match r.expiration.as_deref().filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(
                    crate::timefmt::parse_rfc3339(s)
                        .ok_or_else(|| error(400, format!("invalid expiration {s:?}")))?,
                ),
            };
            let st = server.state();
            let (_, full) = apikey::create(&st.store, exp).map_err(op_err)?;
            Ok(ok(json!({ "apiKey": full })))
        }
        ("POST", ["api", "v1", "apikey", "expire"]) => {
            let r: ApiKeyRef = body(b)?;
            let which = if r.prefix.is_empty() {
                &r.id
            } else {
                &r.prefix
            };
            apikey::expire(&server.state().store, which).map_err(op_err)?;
            Ok(ok(json!({})))
        }
        ("DELETE", ["api", "v1", "apikey", prefix]) => {
            apikey::delete(&server.state().store, prefix).map_err(op_err)?;
            Ok(ok(json!({})))
        }
        ("DELETE", ["api", "v1", "apikey"]) => {
            let id = query(q, "id").unwrap_or_default();
            apikey::delete(&server.state().store, &id).map_err(op_err)?;
            Ok(ok(json!({})))
        }

        // ----- interactive logins without naming a user
        ("POST", ["api", "v1", "auth", verb @ ("approve" | "reject")]) => {
            let r: AuthRegisterRequest = body(b)?;
            let id = if r.auth_id.is_empty() {
                r.key
            } else {
                r.auth_id
            };
            if *verb == "reject" {
                return if server.pending.reject(&id) {
                    Ok(ok(json!({})))
                } else {
                    Err(error(
                        404,
                        format!("no pending auth session for auth_id {id}"),
                    ))
                };
            }
            // Approve = re-authenticate the machine's node for its owner.
            let owner = match server.pending.machine_key(&id) {
                None => {
                    return Err(error(
                        404,
                        format!("no pending auth session for auth_id {id}"),
                    ))
                }
                Some(mk) => server
                    .state()
                    .node_by_machine_key(&mk)
                    .map(|n| n.user.to_string()),
            };
            let Some(owner) = owner else {
                return Err(error(
                    400,
                    "this login is for a new machine: name its owner with auth register --user",
                ));
            };
            approve(server, &id, &owner)?;
            Ok(ok(json!({})))
        }
        ("POST", ["api", "v1", "node", "backfillips"]) => {
            // Every node gets both families when it registers and addresses
            // are never dropped: there is nothing to backfill.
            let _ = query(q, "confirmed");
            Ok(ok(json!({ "changes": [] })))
        }
        ("POST", ["api", "v1", "debug", "node"]) => Err(error(
            501,
            "debug nodes are not supported: join a real client instead",
        )),

        (_, ["api", ..]) | (_, ["health"]) => Err(error(
            if known_path(segs) { 405 } else { 404 },
            format!("no such endpoint: {method} /{}", segs.join("/")),
        )),
        _ => Err(error(404, format!("no such endpoint: /{}", segs.join("/")))),
    }
}

/// Approves a pending interactive registration (the control plane creates
/// or re-authenticates the node and notifies peers).
fn approve(server: &Server, id: &str, user: &str) -> Result<Reply, Reply> {
    if id.is_empty() || user.is_empty() {
        return Err(error(
            400,
            "both the registration ID and the user are required",
        ));
    }
    // Check the user first so a typo does not use up the registration.
    if server.state().find_user(user).is_none() {
        return Err(error(404, format!("user {user:?} not found")));
    }
    let n = crate::control::interactive::approve(server, id, user).map_err(|e| {
        let status = if e.contains("not found") || e.contains("unknown") || e.contains("expired") {
            404
        } else {
            400
        };
        error(status, e)
    })?;
    let st = server.state();
    Ok(ok(json!({ "node": node_json(server, &st, &n) })))
}

fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["health"]
            | [
                "api",
                "v1",
                "user" | "preauthkey" | "node" | "policy" | "auth" | "apikey" | "debug" | "health",
                ..
            ]
    )
}

/// Meta key: when the policy was last set through the API (i64 LE seconds).
pub const META_POLICY_UPDATED: &str = "policy_updated_at";

/// The message of a rejected policy. A syntax error also says `parsing HuJSON:`, as Headscale's
/// does: Headplane's ACL editor shows what follows that marker as a notice above the editor, and
/// without it lands on its error page instead.
fn invalid_policy(e: &str) -> String {
    if e.starts_with("syntax error") {
        format!("invalid policy: parsing HuJSON: {e}")
    } else {
        format!("invalid policy: {e}")
    }
}

fn policy_updated(server: &Server) -> String {
    let t = server
        .state()
        .store
        .get_meta(META_POLICY_UPDATED)
        .ok()
        .flatten()
        .and_then(|b| b.as_slice().try_into().ok().map(i64::from_le_bytes))
        .unwrap_or(0);
    crate::timefmt::rfc3339(t)
}

/// True when the filter is unset or equals `v`.
fn filter_ok(f: &Option<String>, v: &str) -> bool {
    f.as_deref().map_or(true, |f| f == v)
}

fn api_key_json(k: &apikey::ApiKey) -> ApiApiKey {
    ApiApiKey {
        id: k.id.to_string(),
        prefix: k.masked(),
        expiration: (k.expiration != 0).then(|| crate::timefmt::rfc3339(k.expiration)),
        created_at: Some(crate::timefmt::rfc3339(k.created)),
        last_seen: None,
    }
}

/// The database answers: a read transaction works and the file on disk can
/// still be read (a check of the page cache alone passes with the file
/// gone or unreadable). Used by `/health` and `tinyscale health`.
pub fn db_healthy(server: &Server) -> bool {
    if server.state().store.get_meta(META_POLICY_UPDATED).is_err() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(&server.cfg.database_path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| &magic == b"redb")
}
