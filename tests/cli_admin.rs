//! The CLI against an in-process admin plane: users, pre-auth keys and nodes
//! through the real binary and the unix socket; error cases, durability and
//! that no plaintext key reaches the database file.

mod common;

use common::AdminPlane;
use std::path::Path;
use std::process::Command;
use tinyscale::state::{ipalloc, Node, State, Store};

type Env = AdminPlane;

fn setup(name: &str) -> Env {
    setup_with(name, "")
}

fn setup_with(name: &str, extra: &str) -> Env {
    common::admin_plane(
        &format!("cli-{name}"),
        &format!("database:\n  path: db/db.redb\nlisten_addr: 127.0.0.1:18080\n{extra}"),
    )
}

/// The checks these tests share, on top of [`AdminPlane::cli`].
impl AdminPlane {
    fn ok_json(&self, args: &[&str]) -> serde_json::Value {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    fn fails(&self, args: &[&str], needle: &str) {
        let (code, out, err) = self.cli(args);
        // 1: refused by the server or the CLI; 2: refused by argh's parser.
        assert!(code == 1 || code == 2, "{args:?} should fail: {out}");
        assert!(!err.trim().is_empty(), "{args:?}: no error message");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    }

    fn add_node(&self, user: u64, host: &str, tags: &[&str]) -> u64 {
        let mut st = self.server.state();
        let (v4, v6) =
            ipalloc::allocate(&st, self.server.cfg.prefix_v4, self.server.cfg.prefix_v6).unwrap();
        let id = st.alloc_node_id();
        let name = st.unique_given_name(host, 0);
        st.put_node(Node {
            id,
            machine_key: [id as u8; 32],
            node_key: [id as u8 + 100; 32],
            disco_key: [7; 32],
            user,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ipv4: Some(v4),
            ipv6: Some(v6),
            hostname: host.into(),
            given_name: name,
            hostinfo: r#"{"IPNVersion":"1.90.9-test"}"#.into(),
            cap: 100,
            created: tinyscale::state::now(),
            ..Default::default()
        })
        .unwrap();
        id
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn users_keys_nodes() {
    let env = setup("all");

    // Socket is owner-only.
    {
        use std::os::unix::fs::PermissionsExt;
        let sock = &env.server.cfg.unix_socket;
        let m = std::fs::metadata(sock).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600);
        let m = std::fs::metadata(sock.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o700);
    }

    // ---- users
    let u = env.ok_json(&[
        "users",
        "create",
        "alice",
        "--display-name",
        "Alice A",
        "--email",
        "alice@example.com",
        "-o",
        "json",
    ]);
    assert_eq!(u["id"], 1);
    assert_eq!(u["name"], "alice");
    assert_eq!(u["display_name"], "Alice A");
    assert_eq!(u["email"], "alice@example.com");
    assert!(u["created_at"]["seconds"].as_i64().unwrap() > 0, "{u}");
    let (code, out, _) = env.cli(&["users", "create", "bob"]);
    assert_eq!((code, out.trim()), (0, "User created"));
    env.fails(&["users", "create", "alice"], "already exists");
    env.fails(&["users", "create", "bad name"], "invalid user name");

    let list = env.ok_json(&["users", "list", "-o", "json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (code, line, _) = env.cli(&["user", "ls", "-o", "json-line"]);
    assert_eq!(code, 0);
    assert_eq!(line.lines().count(), 1);
    let (_, table, _) = env.cli(&["users", "list"]);
    assert!(table.starts_with("ID") && table.contains("alice") && table.contains("bob"));
    let one = env.ok_json(&["users", "list", "--name", "bob", "-o", "json"]);
    assert_eq!(one[0]["id"], 2);

    let r = env.ok_json(&[
        "users",
        "rename",
        "--identifier",
        "2",
        "--new-name",
        "robert",
        "-o",
        "json",
    ]);
    assert_eq!(r["name"], "robert");
    let r = env.ok_json(&["users", "rename", "-i", "2", "rob", "-o", "json"]);
    assert_eq!(r["name"], "rob");
    env.fails(&["users", "rename", "--name", "nobody", "x"], "not found");

    // ---- pre-auth keys
    let k = env.ok_json(&[
        "preauthkeys",
        "create",
        "--user",
        "alice",
        "--expiration",
        "24h",
        "-o",
        "json",
    ]);
    let key = k["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("hskey-auth-") && !key.contains("--TL"));
    assert_eq!(k["user"]["name"], "alice");
    // Go's omitempty: false flags and empty lists are left out.
    assert_eq!(k["reusable"], serde_json::Value::Null);
    assert_eq!(k["used"], serde_json::Value::Null);
    assert_eq!(k["acl_tags"], serde_json::Value::Null);
    assert_eq!(k["id"], 1);
    assert!(k["expiration"]["seconds"].as_i64().unwrap() > 0);
    // Plain output is the key alone.
    let (code, plain, _) = env.cli(&["preauthkeys", "create", "--user", "1", "--reusable"]);
    assert_eq!(code, 0);
    let key2 = plain.trim().to_string();
    assert!(key2.starts_with("hskey-auth-"));
    let tagged = env.ok_json(&[
        "preauthkeys",
        "create",
        "--tags",
        "tag:web,tag:db",
        "--ephemeral",
        "-o",
        "json",
    ]);
    assert_eq!(tagged["user"], serde_json::Value::Null);
    assert_eq!(tagged["acl_tags"], serde_json::json!(["tag:db", "tag:web"]));
    env.fails(&["preauthkeys", "create", "--user", "nobody"], "not found");
    env.fails(&["preauthkeys", "create", "--tags", "web"], "invalid tag");
    env.fails(
        &[
            "preauthkeys",
            "create",
            "--user",
            "alice",
            "--expiration",
            "1 day",
        ],
        "--expiration",
    );
    // Headscale's units: d, w, y.
    let (code, _, err) = env.cli(&["preauthkeys", "create", "--user", "alice", "-e", "2w"]);
    assert_eq!(code, 0, "{err}");

    // The register path: valid, then spent (single use), expired.
    {
        let mut st = env.server.state();
        let id = st.validate_preauth_key(&key).unwrap().id;
        st.mark_preauth_key_used(id).unwrap();
        assert_eq!(
            st.validate_preauth_key(&key).unwrap_err().to_string(),
            "authkey already used"
        );
        assert_eq!(
            st.validate_preauth_key("hskey-auth-000000000000-00")
                .unwrap_err()
                .to_string(),
            "invalid key"
        );
        assert!(st.validate_preauth_key(&key2).is_ok());
    }
    let listed = env.ok_json(&["preauthkeys", "list", "-o", "json"]);
    assert_eq!(listed.as_array().unwrap().len(), 4);
    assert_eq!(listed[0]["used"], true);
    // Listings never show the secret.
    let (_, table, _) = env.cli(&["preauthkeys", "list"]);
    assert!(!table.contains(&key) && !table.contains(&key2));
    assert!(table.contains("-***"));
    let mine = env.ok_json(&["preauthkeys", "list", "--user", "alice", "-o", "json"]);
    assert_eq!(mine.as_array().unwrap().len(), 3);

    let prefix2 = &key2["hskey-auth-".len().."hskey-auth-".len() + 12];
    env.fails(
        &["preauthkeys", "expire", "--user", "rob", prefix2],
        "not found",
    );
    let (code, out, err) = env.cli(&["preauthkeys", "expire", "--user", "alice", prefix2]);
    assert_eq!((code, out.trim()), (0, "Key expired"), "{err}");
    assert_eq!(
        env.server
            .state()
            .validate_preauth_key(&key2)
            .unwrap_err()
            .to_string(),
        "authkey expired"
    );
    env.ok_json(&["preauthkeys", "expire", "--id", "3", "-o", "json"]);

    // ---- nodes
    let n1 = env.add_node(1, "laptop", &[]);
    let n2 = env.add_node(1, "Laptop", &[]);
    let n3 = env.add_node(0, "server", &["tag:web"]);
    let nodes = env.ok_json(&["nodes", "list", "-o", "json"]);
    let arr = nodes.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(
        arr[0]["ip_addresses"],
        serde_json::json!(["100.64.0.1", "fd7a:115c:a1e0::1"])
    );
    assert_eq!(arr[1]["given_name"], "laptop-1");
    assert!(arr[0]["machine_key"].as_str().unwrap().starts_with("mkey:"));
    assert!(arr[0]["node_key"].as_str().unwrap().starts_with("nodekey:"));
    assert_eq!(arr[0]["online"], serde_json::Value::Null);
    assert_eq!(arr[0]["id"], 1);
    // Not a field of Headscale's Node (the table shows it).
    assert_eq!(arr[0]["client_version"], serde_json::Value::Null);
    assert_eq!(arr[2]["user"]["name"], "tagged-devices");
    assert_eq!(arr[0]["user"]["name"], "alice");
    assert_eq!(arr[2]["tags"], serde_json::json!(["tag:web"]));
    let alices = env.ok_json(&["nodes", "list", "--user", "alice", "-o", "json"]);
    assert_eq!(alices.as_array().unwrap().len(), 2);
    let (_, table, _) = env.cli(&["nodes", "list"]);
    assert!(table.contains("laptop-1") && table.contains("tag:web"));
    assert!(
        table.contains("Version") && table.contains("1.90.9-test"),
        "{table}"
    );

    let r = env.ok_json(&[
        "nodes",
        "rename",
        "--identifier",
        &n2.to_string(),
        "desk",
        "-o",
        "json",
    ]);
    assert_eq!(r["given_name"], "desk");
    env.fails(
        &["nodes", "rename", "-i", &n1.to_string(), "desk"],
        "already in use",
    );
    env.fails(
        &["nodes", "rename", "-i", &n1.to_string(), "bad_name"],
        "invalid node name",
    );
    let e = env.ok_json(&[
        "nodes",
        "expire",
        "--identifier",
        &n1.to_string(),
        "-o",
        "json",
    ]);
    assert!(e["expiry"]["seconds"].is_i64(), "{e}");
    assert!(env.server.state().nodes[&n1].is_expired(tinyscale::state::now() + 1));
    env.fails(&["nodes", "expire", "-i", "999"], "not found");

    // Tags and routes.
    let n3s = n3.to_string();
    let t = env.ok_json(&[
        "nodes",
        "tag",
        "-i",
        &n3s,
        "-t",
        "tag:db,tag:web",
        "-o",
        "json",
    ]);
    assert_eq!(t["tags"], serde_json::json!(["tag:db", "tag:web"]));
    env.fails(&["nodes", "tag", "-i", &n3s, "-t", "db"], "invalid tag");
    {
        let mut st = env.server.state();
        let mut n = st.nodes[&n3].clone();
        n.advertised_routes = vec!["10.0.0.0/24".into(), "0.0.0.0/0".into(), "::/0".into()];
        st.put_node(n).unwrap();
    }
    let r = env.ok_json(&[
        "nodes",
        "approve-routes",
        "-i",
        &n3s,
        "-r",
        "10.0.0.0/24,0.0.0.0/0",
        "-o",
        "json",
    ]);
    assert_eq!(
        r["approved_routes"],
        serde_json::json!(["0.0.0.0/0", "10.0.0.0/24", "::/0"])
    );
    // Serving: node 3 has no map stream, so it is nobody's primary for 10.0.0.0/24; approved exit
    // routes are served regardless (Headscale's subnetRoutes).
    assert_eq!(
        r["subnet_routes"],
        serde_json::json!(["0.0.0.0/0", "::/0"]),
        "{r}"
    );
    let routes = env.ok_json(&["nodes", "list-routes", "-o", "json"]);
    assert_eq!(routes.as_array().unwrap().len(), 1);
    let (_, table, _) = env.cli(&["nodes", "routes"]);
    assert!(table.contains("10.0.0.0/24"), "{table}");
    env.fails(
        &["nodes", "approve-routes", "-i", &n3s, "-r", "10.0.0.300/24"],
        "invalid route",
    );

    // A user owning nodes cannot be destroyed.
    env.fails(
        &["users", "destroy", "--name", "alice", "--force"],
        "still has",
    );
    let (code, out, err) = env.cli(&[
        "nodes",
        "delete",
        "--identifier",
        &n1.to_string(),
        "--force",
    ]);
    assert_eq!((code, out.trim()), (0, "Node deleted"), "{err}");
    env.ok_json(&[
        "nodes",
        "delete",
        "-i",
        &n2.to_string(),
        "--force",
        "-o",
        "json",
    ]);
    env.fails(&["nodes", "delete", "-i", &n1.to_string()], "not found");
    let (code, _, err) = env.cli(&["users", "destroy", "--identifier", "1", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        env.ok_json(&["users", "list", "-o", "json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(env.server.state().nodes.contains_key(&n3));

    // ---- durability: a copy of the database file holds everything.
    let db = env.server.cfg.database_path.clone();
    let copy = env.dir.join("copy.redb");
    std::fs::copy(&db, &copy).unwrap();
    let snap = Store::open(&copy).unwrap().load().unwrap();
    assert_eq!(snap.users.len(), 1);
    assert_eq!(snap.users[0].name, "rob");
    assert_eq!(snap.keys.len(), 1, "alice's keys went with her");
    assert_eq!(snap.nodes.len(), 1);
    assert!(snap.next_user_id >= 3 && snap.next_key_id >= 4 && snap.next_node_id >= 4);

    // ---- secrets: the database never holds a plaintext key.
    let bytes = std::fs::read(&db).unwrap();
    for k in [&key, &key2, tagged["key"].as_str().unwrap()] {
        let secret = k.rsplit('-').next().unwrap();
        assert!(!contains(&bytes, k.as_bytes()));
        assert!(!contains(&bytes, secret.as_bytes()));
    }
}

#[test]
fn reopen_keeps_data() {
    let dir = std::env::temp_dir().join(format!("tinyscale-cli-reopen-{}", std::process::id()));
    let path = dir.join("db.redb");
    let full;
    {
        let mut st = State::load(Store::open(&path).unwrap()).unwrap();
        st.create_user("carol", "", "").unwrap();
        full = st
            .create_preauth_key(Some("carol"), false, false, Some(3600), vec![])
            .unwrap()
            .1;
    }
    let st = State::load(Store::open(&path).unwrap()).unwrap();
    assert!(st.find_user("carol").is_some());
    assert!(st.validate_preauth_key(&full).is_ok());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn server_not_running() {
    let dir = std::env::temp_dir().join(format!("tinyscale-cli-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.yaml");
    std::fs::write(&cfg, format!("unix_socket: {}/none.sock\n", dir.display())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(["-c", cfg.to_str().unwrap(), "users", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "cannot reach tinyscale at {}: is 'tinyscale serve' running?",
        Path::new(&dir).join("none.sock").display()
    );
    assert!(err.contains(&want), "{err}");
    // configtest needs no server; a bad value names its key.
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(["configtest", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("config OK: "));
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "listen_addr: x\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(["configtest", "-c", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("config: listen_addr: invalid socket address \"x\""));
    // Version needs no server.
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tinyscale "));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn policy_through_the_api() {
    use tinyscale::cli::client::{call, ClientError};
    let pol = r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#;
    let body = serde_json::json!({ "policy": pol });

    // File mode: the API refuses to change the policy.
    let env = setup("polfile");
    let sock = env.server.cfg.unix_socket.clone();
    let e = call(&sock, "PUT", "/api/v1/policy", Some(&body)).unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 400, .. }), "{e}");
    let got = call(&sock, "GET", "/api/v1/policy", None).unwrap();
    assert_eq!(got["policy"], "");
    let e = call(&sock, "GET", "/api/v1/nope", None).unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 404, .. }));

    // Database mode: validated, stored, served back.
    let env = setup_with("poldb", "policy:\n  mode: database\n");
    let sock = env.server.cfg.unix_socket.clone();
    let bad = serde_json::json!({ "policy": "{\"acls\": 5}" });
    let e = call(&sock, "PUT", "/api/v1/policy", Some(&bad)).unwrap_err();
    assert!(e.to_string().starts_with("invalid policy"), "{e}");
    let r = call(&sock, "PUT", "/api/v1/policy", Some(&body)).unwrap();
    assert_eq!(r["policy"], pol);
    assert!(!r["updatedAt"].as_str().unwrap().starts_with("0001"));
    assert_eq!(
        call(&sock, "GET", "/api/v1/policy", None).unwrap()["policy"],
        pol
    );
    assert_eq!(env.server.policy_text().as_deref(), Some(pol));
    let stored = env
        .server
        .state()
        .store
        .get_meta("policy")
        .unwrap()
        .unwrap();
    assert_eq!(stored, pol.as_bytes());
}

#[test]
fn oversized_body_is_refused() {
    use std::io::{Read, Write};
    let env = setup("big");
    let mut s = std::os::unix::net::UnixStream::connect(&env.server.cfg.unix_socket).unwrap();
    write!(
        s,
        "POST /api/v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[test]
fn approve_interactive_login() {
    use tinyscale::control::interactive::Request;
    let env = setup("auth");
    env.cli(&["users", "create", "dave"]);
    let start = |mk: u8| {
        env.server
            .pending
            .start(Request {
                machine_key: [mk; 32],
                node_key: [mk + 1; 32],
                old_node_key: [0; 32],
                hostinfo: tinyscale::tailcfg::Hostinfo {
                    hostname: "Desk Top".into(),
                    ..Default::default()
                },
                source: None,
                ephemeral: false,
                version: 100,
            })
            .unwrap()
    };
    let id = start(1);
    env.fails(
        &["auth", "register", "--auth-id", &id, "--user", "nobody"],
        "not found",
    );
    // The typo did not use up the registration.
    let url = format!("{}/register/{id}", env.server.cfg.server_url);
    let n = env.ok_json(&[
        "auth",
        "register",
        "--auth-id",
        &url,
        "--user",
        "dave",
        "-o",
        "json",
    ]);
    assert_eq!(n["given_name"], "desk-top");
    assert_eq!(n["user"]["name"], "dave");
    assert_eq!(n["register_method"], 2);
    env.fails(
        &[
            "auth",
            "register",
            "--auth-id",
            "ffffffffffffffffffffffff",
            "--user",
            "dave",
        ],
        "",
    );
    // Older spelling.
    let id2 = start(9);
    let (code, out, err) = env.cli(&["nodes", "register", "--user", "dave", "--key", &id2]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Node desk-top-1 registered"), "{out}");
    assert_eq!(env.server.state().nodes.len(), 2);
}

#[test]
fn socket_path_safety() {
    let env = setup("sock");
    // A second server on the same socket is refused.
    let e = tinyscale::api::spawn(env.server.clone()).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    // A regular file at the socket path is never replaced.
    let mut cfg = env.server.cfg.clone();
    cfg.unix_socket = env.dir.join("not-a-socket");
    std::fs::write(&cfg.unix_socket, b"precious").unwrap();
    cfg.database_path = env.dir.join("db2/db.redb");
    let other = tinyscale::app::build(cfg).unwrap().server.clone();
    let e = tinyscale::api::spawn(other.clone()).unwrap_err();
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(
        std::fs::read(env.dir.join("not-a-socket")).unwrap(),
        b"precious"
    );
}

/// Every refused admin request leaves the database exactly as it was: the
/// users, keys and nodes listed before and after a battery of bad commands
/// are identical, and each refusal names what was wrong.
#[test]
fn bad_input_changes_nothing() {
    use tinyscale::control::interactive::Request;
    let env = setup("bad");
    env.cli(&["users", "create", "alice"]);
    env.cli(&["users", "create", "bob"]);
    let n1 = env.add_node(1, "laptop", &[]);
    let n2 = env.add_node(1, "desk", &[]);
    {
        let mut st = env.server.state();
        let mut n = st.nodes[&n2].clone();
        n.advertised_routes = vec!["10.0.0.0/24".into()];
        st.put_node(n).unwrap();
    }
    env.ok_json(&["preauthkeys", "create", "--user", "alice", "-o", "json"]);
    let snapshot = |env: &Env| {
        (
            env.ok_json(&["users", "list", "-o", "json"]),
            env.ok_json(&["preauthkeys", "list", "-o", "json"]),
            env.ok_json(&["nodes", "list", "-o", "json"]),
        )
    };
    let before = snapshot(&env);
    let (s1, s2) = (n1.to_string(), n2.to_string());

    // Unknown user.
    env.fails(&["preauthkeys", "create", "--user", "nobody"], "not found");
    env.fails(
        &["users", "rename", "--name", "nobody", "-r", "x"],
        "not found",
    );
    env.fails(
        &["users", "destroy", "--name", "nobody", "--force"],
        "not found",
    );
    env.fails(&["nodes", "list", "--user", "nobody"], "not found");
    // Unknown node.
    for verb in [
        &["nodes", "delete", "-i", "999", "--force"][..],
        &["nodes", "expire", "-i", "999"],
        &["nodes", "rename", "-i", "999", "fine-name"],
        &["nodes", "tag", "-i", "999", "-t", "tag:web"],
        &["nodes", "approve-routes", "-i", "999", "-r", "10.0.0.0/24"],
        &["nodes", "rename", "-i", "not-a-number", "fine-name"],
    ] {
        env.fails(verb, "");
    }
    // Invalid prefixes: malformed, host bits set, out of range, garbage.
    for bad in [
        "10.0.0.300/24",
        "10.0.0.0/33",
        "banana",
        "10.0.0.1/24",
        "fd00::/129",
    ] {
        env.fails(
            &["nodes", "approve-routes", "-i", &s2, "-r", bad],
            "invalid route",
        );
    }
    // Duplicate or invalid names.
    env.fails(&["nodes", "rename", "-i", &s1, "desk"], "already in use");
    let long = "a".repeat(64);
    for bad in ["bad_name", "-lead", "trail-", "Has Space", "a.b", "", &long] {
        env.fails(&["nodes", "rename", "-i", &s1, bad], "");
    }
    env.fails(&["users", "rename", "--name", "alice", "-r", "bob"], "");
    env.fails(&["users", "create", "alice"], "");
    // Invalid tags and times.
    env.fails(&["nodes", "tag", "-i", &s1, "-t", "web"], "invalid tag");
    env.fails(
        &["nodes", "expire", "-i", &s1, "--expiry", "tomorrow"],
        "invalid time",
    );
    // Expired and unknown registration IDs.
    let req = Request {
        machine_key: [42; 32],
        node_key: [43; 32],
        old_node_key: [0; 32],
        hostinfo: tinyscale::tailcfg::Hostinfo {
            hostname: "late".into(),
            ..Default::default()
        },
        source: None,
        ephemeral: false,
        version: 113,
    };
    let id = env
        .server
        .pending
        .start_with_ttl(req, std::time::Duration::ZERO)
        .unwrap();
    env.fails(
        &["auth", "register", "--auth-id", &id, "--user", "alice"],
        "expired",
    );
    env.fails(
        &[
            "auth",
            "register",
            "--auth-id",
            "0123456789abcdef01234567",
            "--user",
            "alice",
        ],
        "not found",
    );
    env.fails(
        &[
            "auth",
            "register",
            "--auth-id",
            "<script>",
            "--user",
            "alice",
        ],
        "",
    );

    assert_eq!(
        snapshot(&env),
        before,
        "a refused command changed something"
    );
}

/// `apikeys` as Headscale's CLI: create prints the key once, list shows
/// only masked prefixes, expire/delete take the masked prefix or the id;
/// the key authenticates on the REST API until it is expired.
#[test]
fn api_keys() {
    let env = setup("apikeys");
    let (code, key, err) = env.cli(&["apikeys", "create", "-e", "90d"]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    assert!(
        key.starts_with("hskey-api-") && key.len() == 10 + 12 + 1 + 64,
        "{key}"
    );
    assert!(tinyscale::api::apikey::validate(
        &env.server.state().store,
        &key
    ));
    let v = env.ok_json(&["apikey", "ls", "-o", "json"]);
    let listed = v.as_array().unwrap();
    assert_eq!(listed.len(), 1);
    let masked = listed[0]["prefix"].as_str().unwrap().to_string();
    assert_eq!(masked, format!("{}-***", &key[..22]));
    let (_, table, _) = env.cli(&["apikeys", "list"]);
    assert!(table.contains(&masked) && !table.contains(&key), "{table}");
    // The database holds no key text.
    let db = std::fs::read(env.dir.join("db/db.redb")).unwrap();
    assert!(!db.windows(64).any(|w| w == &key.as_bytes()[23..]));

    let (code, out, err) = env.cli(&["apikeys", "expire", "--prefix", &masked]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Key expired"), "{out}");
    assert!(!tinyscale::api::apikey::validate(
        &env.server.state().store,
        &key
    ));
    // -e 0 is already expired, as Headscale's; a second key is deleted by id.
    let (code, key2, _) = env.cli(&["api", "c", "-e", "0"]);
    assert_eq!(code, 0);
    assert!(!tinyscale::api::apikey::validate(
        &env.server.state().store,
        key2.trim()
    ));
    let id = env.ok_json(&["apikeys", "list", "-o", "json"])[1]["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let (code, out, err) = env.cli(&["apikeys", "delete", "--id", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Key deleted"));
    env.fails(&["apikeys", "delete", "--id", &id], "not found");
    env.fails(&["apikeys", "expire"], "which key");
    assert_eq!(
        env.ok_json(&["apikeys", "list", "-o", "json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
