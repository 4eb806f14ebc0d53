//! Scripts written for Headscale's CLI (`headscale nodes list -o json | jq …`)
//! read Go's encoding/json of its protobuf structs (v0.29.2:
//! cmd/headscale/cli/utils.go formatOutput, gen/go/headscale/v1/*.pb.go
//! json tags): snake_case proto names in proto order, numeric ids, enums as
//! numbers, timestamps as {"seconds":N}, empty/false/zero fields omitted, a
//! nil list printed as null, tab indents; errors as {"error":"…"}. These
//! tests pin those shapes against the real binary.

mod common;

use common::AdminPlane;
use serde_json::{json, Value};
use std::process::Command;

fn setup(tag: &str) -> AdminPlane {
    common::admin_plane(
        &format!("clicompat-{tag}"),
        "listen_addr: 127.0.0.1:18099\n",
    )
}

impl AdminPlane {
    /// Stdout and its JSON; the command must succeed.
    fn json(&self, args: &[&str]) -> (String, Value) {
        let (code, out, err) = self.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        (out, v)
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn json_shapes_are_headscales() {
    let env = setup("shapes");
    // Empty lists are Go nil slices: `null`.
    for what in ["nodes", "users", "preauthkeys", "apikeys"] {
        let (out, v) = env.json(&[what, "list", "-o", "json"]);
        assert_eq!((out.trim(), v), ("null", Value::Null), "{what}");
    }
    // -o before the command, as a persistent flag.
    let (out, u) = env.json(&["-o", "json", "users", "create", "alice", "-e", "a@x"]);
    assert!(
        out.starts_with(
            "{\n\t\"id\": 1,\n\t\"name\": \"alice\",\n\t\"created_at\": {\n\t\t\"seconds\": "
        ),
        "{out}"
    );
    // Proto order, and the empty fields (display_name, provider…) left out.
    assert_eq!(keys(&u), ["created_at", "email", "id", "name"]);
    assert!(out.find("\"created_at\"").unwrap() < out.find("\"email\"").unwrap());
    assert_eq!(
        u["created_at"].as_object().unwrap().len(),
        1,
        "nanos 0 is omitted"
    );

    let (_, k) = env.json(&[
        "preauthkeys",
        "create",
        "--user",
        "1",
        "--reusable",
        "-o",
        "json",
    ]);
    assert_eq!(k["id"], 1);
    assert_eq!(k["reusable"], true);
    assert!(k.get("ephemeral").is_none() && k.get("used").is_none() && k.get("acl_tags").is_none());
    assert!(k["expiration"]["seconds"].as_i64().unwrap() > 0);
    assert_eq!(k["user"]["name"], "alice");
    let (_, l) = env.json(&["preauthkeys", "list", "-o", "json-line"]);
    assert!(l[0]["key"].as_str().unwrap().ends_with("-***"));

    // A node, as `headscale nodes list -o json` shows it.
    let mut st = env.server.state();
    let id = st.alloc_node_id();
    let mut n = tinyscale::state::Node {
        id,
        machine_key: [1; 32],
        node_key: [2; 32],
        user: 1,
        hostname: "laptop".into(),
        given_name: "laptop".into(),
        ipv4: Some("100.64.0.1".parse().unwrap()),
        ipv6: Some("fd7a:115c:a1e0::1".parse().unwrap()),
        created: 1_700_000_000,
        register_method: tinyscale::state::RegisterMethod::AuthKey,
        advertised_routes: vec!["10.0.0.0/24".into()],
        ..Default::default()
    };
    n.auth_key = 1;
    st.put_node(n).unwrap();
    drop(st);
    let (out, nodes) = env.json(&["nodes", "list", "-o", "json"]);
    let node = &nodes[0];
    assert_eq!(
        keys(node),
        [
            "available_routes",
            "created_at",
            "disco_key",
            "given_name",
            "id",
            "ip_addresses",
            "machine_key",
            "name",
            "node_key",
            "pre_auth_key",
            "register_method",
            "user"
        ]
    );
    assert_eq!(node["id"], id);
    assert_eq!(node["register_method"], 1, "REGISTER_METHOD_AUTH_KEY");
    assert_eq!(node["created_at"], json!({"seconds": 1_700_000_000}));
    assert_eq!(
        node["ip_addresses"],
        json!(["100.64.0.1", "fd7a:115c:a1e0::1"])
    );
    assert!(node.get("online").is_none() && node.get("last_seen").is_none());
    let order: Vec<usize> = [
        "\"id\"",
        "\"machine_key\"",
        "\"ip_addresses\"",
        "\"user\"",
        "\"created_at\": {\n\t\t\t\"seconds\": 1700000000",
        "\"register_method\"",
        "\"given_name\"",
        "\"available_routes\"",
    ]
    .iter()
    .map(|k| out.find(k).unwrap_or_else(|| panic!("{k} in {out}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "proto order: {out}");

    // YAML: every field, Go's lowercased names.
    let (code, y, _) = env.cli(&["nodes", "list", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(
        y.starts_with(&format!("- id: {id}\n  machinekey: mkey:")),
        "{y}"
    );
    assert!(
        y.contains("  online: false\n") && y.contains("  lastseen: null\n"),
        "{y}"
    );

    // nodes delete prints Go's map; apikeys create a bare JSON string.
    let (_, r) = env.json(&[
        "nodes",
        "delete",
        "--identifier",
        &id.to_string(),
        "--force",
        "-o",
        "json",
    ]);
    assert_eq!(r, json!({"Result": "Node deleted"}));
    let (_, key) = env.json(&["apikeys", "create", "-o", "json"]);
    assert!(key.as_str().unwrap().starts_with("hskey-api-"));
    let (_, ak) = env.json(&["apikeys", "list", "-o", "json"]);
    assert_eq!(keys(&ak[0]), ["created_at", "expiration", "id", "prefix"]);
    let (_, e) = env.json(&[
        "users", "destroy", "--name", "alice", "--force", "-o", "json",
    ]);
    assert_eq!(e, json!({}));
    // --force is accepted on any command.
    assert_eq!(env.cli(&["users", "list", "--force"]).0, 0);

    // Errors under a machine format: {"error": …} on stderr.
    let (code, out, err) = env.cli(&["nodes", "delete", "-i", "999", "-o", "json"]);
    assert_eq!((code, out.as_str()), (1, ""));
    let v: Value = serde_json::from_str(&err).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert!(v["error"].as_str().unwrap().contains("999"), "{v}");
    assert!(err.starts_with("{\n\t\"error\": "), "{err}");

    // generate private-key, as Headscale's (`privkey:` + 64 hex).
    let (_, g) = env.json(&["generate", "private-key", "-o", "json"]);
    let pk = g["private_key"].as_str().unwrap();
    assert!(pk.starts_with("privkey:") && pk.len() == 8 + 64, "{pk}");
    let (_, h) = env.json(&["health", "-o", "json"]);
    assert_eq!(h, json!({"database_connectivity": true}));
}

#[test]
fn policy_check_with_and_without_a_server() {
    let env = setup("policy");
    let file = env.dir.join("p.hujson");
    std::fs::write(
        &file,
        r#"{
  // A test naming a user only a live tailnet can resolve.
  "acls": [{"action": "accept", "src": ["alice@"], "dst": ["*:*"]}],
  "tests": [{"src": "alice@", "accept": ["100.64.0.9:22"]}],
}"#,
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // Server running: it evaluates the test against the tailnet (no alice: refused).
    let (code, _, err) = env.cli(&["policy", "check", "-f", f]);
    assert_eq!(code, 1, "{err}");
    // Without a server: everything else is checked, the test is named as not evaluated, exit 0.
    let other = env.dir.join("other.yaml");
    std::fs::write(
        &other,
        format!(
            "data_dir: {}\nunix_socket: nowhere/x.sock\n",
            env.dir.join("o").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(["policy", "check", "--file", f, "--config"])
        .arg(&other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 tests and 0 sshTests not evaluated"),
        "{err}"
    );
    // A broken policy still fails offline.
    std::fs::write(&file, r#"{"acls": [{"action": "permit"}]}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(["policy", "check", "-f", f, "--config"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    // Aliases: show/view/fetch = get.
    assert_eq!(env.cli(&["policy", "view"]).0, 0);
}

/// A Headscale installation's `HEADSCALE_CONFIG` is read when tinyscale has
/// no config of its own.
#[test]
fn headscale_config_env_is_read() {
    let env = setup("hsconfig");
    // (A /etc/tinyscale/config.yaml on this machine would win, and fail this.)
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .arg("configtest")
        .current_dir(env.dir.join("run"))
        .env_remove("TINYSCALE_CONFIG")
        .env("HEADSCALE_CONFIG", &env.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("config OK: {}", env.config.display())),
        "{text}"
    );
}

/// `HEADSCALE_<KEY>` / `TINYSCALE_<KEY>` override the file, and
/// `dump-config` (Headscale's `dumpConfig`) prints the effective result.
#[test]
fn env_overrides_show_in_dump_config() {
    let env = setup("dumpcfg");
    let dump = |cmd: &str, vars: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tinyscale"));
        c.args([cmd, "--config"]).arg(&env.config);
        for (k, v) in vars {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, text, err) = dump(
        "dump-config",
        &[
            ("HEADSCALE_DNS_BASE_DOMAIN", "hs.example"),
            ("HEADSCALE_LOG_LEVEL", "debug"),
            ("TINYSCALE_LOG_LEVEL", "warn"),
        ],
    );
    assert!(ok, "{err}");
    assert!(text.contains("  base_domain: \"hs.example\"\n"), "{text}");
    assert!(text.contains("  level: \"warn\"\n"), "{text}");
    let (ok, text, err) = dump("dumpConfig", &[]);
    assert!(ok, "{err}");
    assert!(text.contains("server_url: "), "{text}");
    assert!(!text.contains("hs.example"), "{text}");
    // A bad value names the variable.
    let (ok, _, err) = dump("configtest", &[("HEADSCALE_DERP_SERVER_REGION_ID", "-1")]);
    assert!(!ok);
    assert!(
        err.contains("HEADSCALE_DERP_SERVER_REGION_ID (derp.server.region_id)"),
        "{err}"
    );
}
