//! The REST API on the main listener, pinned against the shapes Headscale
//! v0.29's grpc-gateway writes (read from its proto/headscale/v1/*.proto and
//! hscontrol/app.go): every endpoint's status, field names and JSON types,
//! errors and authentication, against a live server with protocol-level
//! nodes (one advertising a route, one tagged).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tinyscale::client::Node;

struct Resp {
    status: u16,
    ctype: String,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {:?}", self.text))
    }
}

/// One HTTP/1.1 request on a fresh connection.
fn http(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, text) = raw.split_once("\r\n\r\n").expect("response head");
    let status = head[9..12].parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    Resp {
        status,
        ctype,
        text: text.to_string(),
    }
}

/// Asserts grpc-gateway's error shape and returns the message.
fn grpc_error(r: &Resp, status: u16, code: u64) -> String {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["details"], json!([]), "{v}");
    v["message"].as_str().unwrap().to_string()
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| tinyscale::timefmt::parse_rfc3339(s).is_some())
}

fn assert_keys(v: &Value, keys: &[&str]) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut got: Vec<&str> = o.keys().map(String::as_str).collect();
    let mut want = keys.to_vec();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{v}");
}

const USER_FIELDS: &[&str] = &[
    "id",
    "name",
    "createdAt",
    "displayName",
    "email",
    "providerId",
    "provider",
    "profilePicUrl",
];
const KEY_FIELDS: &[&str] = &[
    "user",
    "id",
    "key",
    "reusable",
    "ephemeral",
    "used",
    "expiration",
    "createdAt",
    "aclTags",
];
const NODE_FIELDS: &[&str] = &[
    "id",
    "machineKey",
    "nodeKey",
    "discoKey",
    "ipAddresses",
    "name",
    "user",
    "lastSeen",
    "expiry",
    "preAuthKey",
    "createdAt",
    "registerMethod",
    "givenName",
    "online",
    "approvedRoutes",
    "availableRoutes",
    "subnetRoutes",
    "tags",
    // tinyscale's one addition (Hostinfo.IPNVersion); both UIs ignore unknown fields.
    "clientVersion",
];

fn start_db_policy() -> TestServer {
    let dir = tempdir("api-contract");
    let mut cfg = config(&dir);
    cfg.policy_mode = "database".into();
    start_with(cfg, dir)
}

/// An API key made through the in-process API (as `tinyscale apikeys create` does).
fn api_key(ts: &TestServer) -> String {
    let r = tinyscale::api::handle(&ts.server, "POST", "/api/v1/apikey", b"{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["apiKey"].as_str().unwrap().to_string()
}

#[test]
fn authentication_and_public_endpoints() {
    let ts = start_db_policy();
    let a = ts.addr;
    // No key, a malformed header, a well-formed unknown key: 401 "Unauthorized".
    let fake = format!("hskey-api-{}-{}", "a".repeat(12), "b".repeat(64));
    for key in [None, Some("nonsense"), Some(fake.as_str())] {
        let r = http(a, "GET", "/api/v1/user", key, None);
        assert_eq!(
            (r.status, r.text.as_str()),
            (401, "Unauthorized"),
            "{key:?}"
        );
    }
    let r = http(a, "GET", "/api/v1/user", None, None);
    assert!(r.ctype.starts_with("text/plain"), "{}", r.ctype);
    // Unauthenticated writes change nothing.
    let r = http(
        a,
        "POST",
        "/api/v1/user",
        None,
        Some(r#"{"name":"mallory"}"#),
    );
    assert_eq!(r.status, 401);
    assert!(ts.server.state().find_user("mallory").is_none());

    // Public: /health (health+json, checks the database) and /version.
    let r = http(a, "GET", "/health", None, None);
    assert_eq!(r.status, 200);
    assert!(
        r.ctype.starts_with("application/health+json"),
        "{}",
        r.ctype
    );
    assert_eq!(r.json(), json!({"status": "pass"}));
    let r = http(a, "GET", "/version", None, None);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["version"], "v0.29.2");
    assert!(v["commit"].as_str().unwrap().starts_with("tinyscale-"));

    // A valid key works; after `expire` it is refused; listings mask it.
    let key = api_key(&ts);
    let r = http(a, "GET", "/api/v1/apikey", Some(&key), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let keys = v["apiKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_keys(
        &keys[0],
        &["id", "prefix", "expiration", "createdAt", "lastSeen"],
    );
    let masked = keys[0]["prefix"].as_str().unwrap().to_string();
    assert!(
        masked.starts_with("hskey-api-") && masked.ends_with("-***"),
        "{masked}"
    );
    assert_eq!(
        &key[..22],
        &masked[..22],
        "Headplane matches the key by this prefix"
    );
    assert!(is_rfc3339(&keys[0]["expiration"]) && is_rfc3339(&keys[0]["createdAt"]));
    assert!(keys[0]["id"].is_string());

    // A second key through the REST API, with an expiration; expire the first by its masked prefix.
    let r = http(
        a,
        "POST",
        "/api/v1/apikey",
        Some(&key),
        Some(r#"{"expiration":"2099-01-01T00:00:00Z"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let key2 = r.json()["apiKey"].as_str().unwrap().to_string();
    assert_eq!(key2.len(), "hskey-api-".len() + 12 + 1 + 64);
    let body = json!({ "prefix": masked }).to_string();
    let r = http(a, "POST", "/api/v1/apikey/expire", Some(&key2), Some(&body));
    assert_eq!((r.status, r.json()), (200, json!({})));
    assert_eq!(http(a, "GET", "/api/v1/user", Some(&key), None).status, 401);
    let r = http(a, "GET", "/api/v1/apikey", Some(&key2), None);
    let v = r.json();
    let listed: Vec<&str> = v["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["expiration"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"2099-01-01T00:00:00Z"), "{listed:?}");
    // Delete by masked prefix in the path; an unknown one is NOT_FOUND.
    let path = format!("/api/v1/apikey/{}", masked);
    let r = http(a, "DELETE", &path, Some(&key2), None);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = http(a, "DELETE", &path, Some(&key2), None);
    grpc_error(&r, 404, 5);
    assert_eq!(
        http(a, "GET", "/api/v1/apikey", Some(&key2), None).json()["apiKeys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = http(a, "GET", "/api/v1/health", Some(&key2), None);
    assert_eq!(r.json(), json!({"databaseConnectivity": true}));
}

#[test]
fn users_keys_nodes_policy() {
    let ts = start_db_policy();
    let a = ts.addr;
    let k = api_key(&ts);
    let k = Some(k.as_str());

    // ----- users: camelCase and snake_case input, unknown fields ignored.
    let r = http(
        a,
        "POST",
        "/api/v1/user",
        k,
        Some(r#"{"name":"alice","displayName":"Alice A","email":"a@example.com","bogus":1}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let alice = r.json()["user"].clone();
    assert_keys(&alice, USER_FIELDS);
    assert!(alice["id"].is_string() && is_rfc3339(&alice["createdAt"]));
    assert_eq!(alice["displayName"], "Alice A");
    assert_eq!(alice["provider"], "");
    let r = http(
        a,
        "POST",
        "/api/v1/user",
        k,
        Some(r#"{"name":"bob","display_name":"Bob B"}"#),
    );
    assert_eq!(r.json()["user"]["displayName"], "Bob B");
    let msg = grpc_error(
        &http(a, "POST", "/api/v1/user", k, Some(r#"{"name":"bob"}"#)),
        409,
        6,
    );
    assert!(msg.contains("bob"), "{msg}");
    let r = http(a, "GET", "/api/v1/user?name=alice", k, None);
    assert_eq!(r.json()["users"].as_array().unwrap().len(), 1);
    let r = http(a, "GET", "/api/v1/user?email=nobody%40x", k, None);
    assert_eq!(r.json(), json!({"users": []}));
    let bob_id = http(a, "GET", "/api/v1/user?name=bob", k, None).json()["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http(a, "GET", &format!("/api/v1/user?id={bob_id}"), k, None);
    assert_eq!(r.json()["users"][0]["name"], "bob");
    let r = http(
        a,
        "POST",
        &format!("/api/v1/user/{bob_id}/rename/robert"),
        k,
        None,
    );
    assert_eq!(r.json()["user"]["name"], "robert");
    let r = http(a, "DELETE", &format!("/api/v1/user/{bob_id}"), k, None);
    assert_eq!((r.status, r.json()), (200, json!({})));
    grpc_error(&http(a, "DELETE", "/api/v1/user/999", k, None), 404, 5);

    // ----- pre-auth keys: user as a number or a string; no expiration = null.
    let alice_id: u64 = alice["id"].as_str().unwrap().parse().unwrap();
    let body = json!({"user": alice_id, "reusable": true, "ephemeral": false}).to_string();
    let r = http(a, "POST", "/api/v1/preauthkey", k, Some(&body));
    assert_eq!(r.status, 200, "{}", r.text);
    let pak = r.json()["preAuthKey"].clone();
    assert_keys(&pak, KEY_FIELDS);
    assert!(pak["key"].as_str().unwrap().starts_with("hskey-auth-"));
    assert_eq!(pak["expiration"], Value::Null);
    assert_eq!(pak["aclTags"], json!([]));
    assert_keys(&pak["user"], USER_FIELDS);
    let full_key = pak["key"].as_str().unwrap().to_string();
    let body = json!({"user": alice_id.to_string(), "expiration": "2099-01-01T00:00:00Z",
                      "acl_tags": []})
    .to_string();
    let r = http(a, "POST", "/api/v1/preauthkey", k, Some(&body));
    let pak2 = r.json()["preAuthKey"].clone();
    assert_eq!(pak2["expiration"], "2099-01-01T00:00:00Z");
    let r = http(a, "GET", "/api/v1/preauthkey", k, None);
    let keys = r.json()["preAuthKeys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    for key in &keys {
        assert_keys(key, KEY_FIELDS);
        assert!(key["key"].as_str().unwrap().ends_with("-***"), "{key}");
    }
    // Expire by {id} (a number, as 0.29's CLI sends), delete by ?id=.
    let id2: u64 = pak2["id"].as_str().unwrap().parse().unwrap();
    let body = json!({ "id": id2 }).to_string();
    assert_eq!(
        http(a, "POST", "/api/v1/preauthkey/expire", k, Some(&body)).json(),
        json!({})
    );
    let r = http(
        a,
        "DELETE",
        &format!("/api/v1/preauthkey?id={id2}"),
        k,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        http(a, "GET", "/api/v1/preauthkey", k, None).json()["preAuthKeys"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // ----- nodes from protocol-level clients: one with a route, one tagged.
    let tag_key = ts.key("ops", false, false, &["tag:server"]);
    block_on_timeout(60, async {
        let (_c1, _s1, _) =
            join_with(&ts, &Node::new("router"), &full_key, &["10.7.0.0/24"], &[]).await;
        let (_c2, _s2, _) = join(&ts, &Node::new("tagged"), &tag_key).await;

        let r = http(a, "GET", "/api/v1/node", k, None);
        assert_eq!(r.status, 200, "{}", r.text);
        let nodes = r.json()["nodes"].as_array().unwrap().clone();
        assert_eq!(nodes.len(), 2);
        for n in &nodes {
            assert_keys(n, NODE_FIELDS);
            assert!(n["id"].is_string());
            assert!(n["ipAddresses"].as_array().unwrap().len() == 2);
            assert!(is_rfc3339(&n["createdAt"]) && is_rfc3339(&n["lastSeen"]));
            assert_eq!(n["registerMethod"], "REGISTER_METHOD_AUTH_KEY");
            assert!(n["machineKey"].as_str().unwrap().starts_with("mkey:"));
            assert!(n["nodeKey"].as_str().unwrap().starts_with("nodekey:"));
        }
        let router = nodes
            .iter()
            .find(|n| n["name"] == "router")
            .unwrap()
            .clone();
        let tagged = nodes
            .iter()
            .find(|n| n["name"] == "tagged")
            .unwrap()
            .clone();
        assert_eq!(router["user"]["name"], "alice");
        assert_eq!(router["availableRoutes"], json!(["10.7.0.0/24"]));
        assert_eq!(router["approvedRoutes"], json!([]));
        assert_keys(&router["preAuthKey"], KEY_FIELDS);
        // A tagged node's user is Headscale's tagged-devices.
        assert_eq!(tagged["user"]["name"], "tagged-devices");
        assert_eq!(tagged["user"]["id"], "2147455555");
        assert_eq!(tagged["tags"], json!(["tag:server"]));
        // ?user= lists that user's nodes (not the tagged one).
        let r = http(a, "GET", "/api/v1/node?user=alice", k, None);
        assert_eq!(r.json()["nodes"].as_array().unwrap().len(), 1);

        let rid = router["id"].as_str().unwrap().to_string();
        let r = http(a, "GET", &format!("/api/v1/node/{rid}"), k, None);
        assert_eq!(r.json()["node"]["name"], "router");
        grpc_error(&http(a, "GET", "/api/v1/node/4242", k, None), 404, 5);
        grpc_error(&http(a, "GET", "/api/v1/node/x", k, None), 400, 3);

        // approve_routes: the node now serves the route.
        let r = http(
            a,
            "POST",
            &format!("/api/v1/node/{rid}/approve_routes"),
            k,
            Some(r#"{"routes":["10.7.0.0/24"]}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["node"]["approvedRoutes"], json!(["10.7.0.0/24"]));
        assert_eq!(r.json()["node"]["subnetRoutes"], json!(["10.7.0.0/24"]));
        // rename, tags, expire (with and without disableExpiry).
        let r = http(a, "POST", &format!("/api/v1/node/{rid}/rename/gw"), k, None);
        assert_eq!(r.json()["node"]["givenName"], "gw");
        let msg = grpc_error(
            &http(
                a,
                "POST",
                &format!("/api/v1/node/{rid}/tags"),
                k,
                Some(r#"{"tags":["bad tag"]}"#),
            ),
            400,
            3,
        );
        assert!(!msg.is_empty());
        let r = http(
            a,
            "POST",
            &format!("/api/v1/node/{rid}/expire?disableExpiry=true"),
            k,
            Some(r#"{"disable_expiry":true}"#),
        );
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["node"]["expiry"], Value::Null);
        let r = http(a, "POST", &format!("/api/v1/node/{rid}/expire"), k, None);
        assert!(is_rfc3339(&r.json()["node"]["expiry"]));
        let r = http(
            a,
            "POST",
            "/api/v1/node/backfillips?confirmed=true",
            k,
            None,
        );
        assert_eq!(r.json(), json!({"changes": []}));
        let tid = tagged["id"].as_str().unwrap();
        let r = http(a, "DELETE", &format!("/api/v1/node/{tid}"), k, None);
        assert_eq!((r.status, r.json()), (200, json!({})));
        assert_eq!(
            http(a, "GET", "/api/v1/node", k, None).json()["nodes"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    });

    // ----- interactive logins: unknown ids are NOT_FOUND.
    let r = http(
        a,
        "POST",
        "/api/v1/auth/register",
        k,
        Some(r#"{"user":"alice","authId":"nope"}"#),
    );
    grpc_error(&r, 404, 5);
    for verb in ["approve", "reject"] {
        let r = http(
            a,
            "POST",
            &format!("/api/v1/auth/{verb}"),
            k,
            Some(r#"{"auth_id":"nope"}"#),
        );
        grpc_error(&r, 404, 5);
    }

    // ----- policy: get, check, put (and a rejected one's message).
    let good = r#"{"acls":[{"action":"accept","src":["alice@"],"dst":["*:*"]}]}"#;
    let body = json!({ "policy": good }).to_string();
    assert_eq!(
        http(a, "POST", "/api/v1/policy/check", k, Some(&body)).json(),
        json!({})
    );
    let r = http(a, "PUT", "/api/v1/policy", k, Some(&body));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["policy"], good);
    assert!(is_rfc3339(&r.json()["updatedAt"]));
    let r = http(a, "GET", "/api/v1/policy", k, None);
    assert_keys(&r.json(), &["policy", "updatedAt"]);
    assert_eq!(r.json()["policy"], good);
    let bad = json!({ "policy": r#"{"acls":[{"action":"accept","src":["group:nobody"],"dst":["*:*"]}]}"# }).to_string();
    let msg = grpc_error(&http(a, "PUT", "/api/v1/policy", k, Some(&bad)), 400, 3);
    assert!(msg.contains("nobody"), "{msg}");
    // A syntax error says `parsing HuJSON:` as Headscale's does: Headplane's ACL editor shows
    // the text after that marker as its notice, anything else sends it to its error page.
    let broken = json!({ "policy": "{\"acls\": [\n  {\"action\": \"accept\"}\n  {\"x\": 1}\n]}" });
    let msg = grpc_error(
        &http(a, "PUT", "/api/v1/policy", k, Some(&broken.to_string())),
        400,
        3,
    );
    let after = msg.split_once("parsing HuJSON: ").map(|(_, m)| m);
    assert!(after.is_some_and(|m| m.contains("3:")), "{msg}");
    grpc_error(
        &http(a, "POST", "/api/v1/policy/check", k, Some(&bad)),
        400,
        3,
    );
    assert_eq!(
        http(a, "GET", "/api/v1/policy", k, None).json()["policy"],
        good
    );

    // ----- malformed and unknown requests.
    grpc_error(&http(a, "POST", "/api/v1/user", k, Some("{")), 400, 3);
    grpc_error(&http(a, "GET", "/api/v1/nothing", k, None), 404, 5);
    grpc_error(&http(a, "PATCH", "/api/v1/user", k, None), 405, 12);
}

/// The server writes a backup file itself, so `POST /api/v1/backup` is the
/// admin socket's alone: with a valid API key on the main listener it is
/// refused (403) and nothing is written.
#[test]
fn backup_is_refused_on_the_main_listener() {
    let ts = start_db_policy();
    let key = api_key(&ts);
    let dest = ts.dir.join("stolen.redb");
    let body = format!(r#"{{"path":"{}","withKeys":true}}"#, dest.display());
    let r = http(ts.addr, "POST", "/api/v1/backup", Some(&key), Some(&body));
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(!dest.exists(), "a backup was written for a network caller");
    // The key itself works: the refusal is about the endpoint.
    assert_eq!(
        http(ts.addr, "GET", "/api/v1/user", Some(&key), None).status,
        200
    );
}
