//! Moving a tailnet from Headscale to tinyscale in place, with REAL Tailscale clients
//! (tests/realclient; harness in tests/realclient_common):
//!  1. nodes a (serve) and b (proxy to http://a/) join a server and talk;
//!  2. the test writes a Headscale-schema SQLite database with Debian's `sqlite3` CLI (the schema
//!     written here from the facts in Headscale's hscontrol/db/schema.sql) holding those two
//!     nodes (their real machine, node and disco keys, addresses and names, read from the
//!     server), their user, a reusable pre-auth key and an API key (bcrypt hashes made by
//!     libxcrypt), plus Headscale key files (`privkey:<hex>`) holding the server's Noise and DERP
//!     keys;
//!  3. the server stops, its data directory is moved away, and `tinyscale migrate
//!     --from-headscale … --apply` fills a fresh one;
//!  4. a and b restart with their own state and NO auth key: they come back with the same
//!     addresses, names and node IDs, and b reaches a again;
//!  5. the carried-over pre-auth key (`hskey-auth-…`, bcrypt on Headscale) registers a third node
//!     c, which reaches a too.
//!
//! Needs root and the sqlite3 CLI; skips with a reason otherwise (fails under CI=true).

#[macro_use]
mod realclient_common;

mod headscale_fixture;

use headscale_fixture::*;
use realclient_common::*;
use std::time::{Duration, Instant};

const PREFIX: &str = "tsm"; // netns tsm-a, tsm-b, tsm-c; bridge tsmbr0

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// b's fetch of http://a/ through its proxy.
fn fetch(h: &Harness, from: &str) -> (u16, String) {
    let (code, body) = h.curl(from, "http://127.0.0.1:8080/", 4);
    (code, String::from_utf8_lossy(&body).trim().to_owned())
}

fn until_reaches(h: &Harness, from: &str, what: &str) -> String {
    wait_for(what, Duration::from_secs(120), || {
        let (code, body) = fetch(h, from);
        (code == 200).then_some(body)
    })
}

#[test]
fn real_clients_move_from_headscale_in_place() {
    if !have("sqlite3") {
        assert!(
            !in_ci(),
            "the sqlite3 CLI is missing in CI (apt-get install sqlite3)"
        );
        eprintln!("SKIP: migrate real-client e2e: the sqlite3 CLI is not installed");
        return;
    }
    let Some(mut h) = Harness::begin("migrate real-client e2e", PREFIX, &["a", "b", "c"]) else {
        return;
    };
    let t0 = Instant::now();
    let port = h.free_port();
    h.start_server(ServerOpts {
        port,
        derp_enabled: true,
        ..ServerOpts::default()
    });
    let control = h.control_url();
    h.cli(&["users", "create", "alice"]);
    let key = h.preauth_key("alice", &["--reusable"]);
    h.start_node("a", &control, &key, 41641, &["--role", "serve"]);
    h.start_node(
        "b",
        &control,
        &key,
        41642,
        &["--role", "proxy", "--upstream", "a", "--proxy-no-keepalive"],
    );
    let ips_a = wait_for("a gets its IPs", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("a"))
    });
    let ips_b = wait_for("b gets its IPs", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("b"))
    });
    let hello = until_reaches(&h, "b", "1. b reaches a");
    assert_eq!(
        hello,
        format!("hello from a over the tailnet; you are {}", ips_b[0])
    );
    say!("1. a {ips_a:?} and b {ips_b:?} joined and talk: {hello:?}");

    // 2. what a Headscale server would hold for this tailnet
    let before = h.nodes();
    assert_eq!(before.len(), 2, "{before:?}");
    let data = h.dir.join("data");
    let read_key = |name: &str| std::fs::read_to_string(data.join(name)).unwrap();
    let hs = h.dir.join("headscale");
    std::fs::create_dir_all(&hs).unwrap();
    std::fs::write(hs.join("noise_private.key"), read_key("noise_private.key")).unwrap();
    std::fs::write(
        hs.join("derp_server_private.key"),
        read_key("derp_server_private.key"),
    )
    .unwrap();
    let mut sql = SCHEMA.to_string();
    sql += "INSERT INTO users VALUES(1,'alice','','',NULL,NULL,NULL,'2025-01-01 00:00:00+00:00',NULL,NULL);\n";
    sql += &format!(
        "INSERT INTO pre_auth_keys VALUES(1,NULL,'{PAK_PREFIX}',CAST('{PAK_HASH}' AS BLOB),1,'',1,0,1,\
         '[]','2099-01-01 00:00:00+00:00',NULL,'2025-01-01 00:00:00+00:00');\n"
    );
    sql += &format!(
        "INSERT INTO api_keys VALUES(1,'0a1b2c3d4e5f',CAST('{API_HASH}' AS BLOB),1,NULL,NULL,\
         '2025-01-01 00:00:00+00:00');\n"
    );
    let mut want = Vec::new();
    for n in &before {
        let s = |k: &str| str_field(n, &[k]).unwrap_or("").to_string();
        let ips = node_ips(n);
        let v4 = ips
            .iter()
            .find(|i| i.contains('.'))
            .cloned()
            .unwrap_or_default();
        let v6 = ips
            .iter()
            .find(|i| i.contains(':'))
            .cloned()
            .unwrap_or_default();
        sql += &format!(
            "INSERT INTO nodes VALUES({id},{mk},{nk},{dk},'[]','{{}}',{v4},{v6},{hn},{gn},1,'authkey',\
             '[]',1,'2025-01-02 00:00:00+00:00','0001-01-01 00:00:00+00:00','[]',\
             '2025-01-01 00:00:00+00:00',NULL,NULL);\n",
            id = node_id(n),
            mk = q(&s("machine_key")),
            nk = q(&s("node_key")),
            dk = q(&s("disco_key")),
            v4 = q(&v4),
            v6 = q(&v6),
            hn = q(&s("name")),
            gn = q(&s("given_name")),
        );
        want.push((node_id(n), s("given_name"), ips));
    }
    let db = hs.join("db.sqlite");
    let mut child = std::process::Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), sql.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "sqlite3 rejected:\n{sql}");
    say!(
        "2. wrote a Headscale database ({} bytes) and key files",
        std::fs::metadata(&db).unwrap().len()
    );

    // 3. a fresh data directory, filled by migrate
    h.node(&["stop", "a"], 30);
    h.node(&["stop", "b"], 30);
    h.stop_server();
    std::fs::rename(&data, h.dir.join("data.before")).unwrap();
    let out = h.cli(&[
        "migrate",
        "--from-headscale",
        db.to_str().unwrap(),
        "--noise-key",
        hs.join("noise_private.key").to_str().unwrap(),
        "--derp-key",
        hs.join("derp_server_private.key").to_str().unwrap(),
        "--apply",
    ]);
    say!("3. tinyscale migrate --apply:\n{}", out.trim());
    assert!(out.contains("nodes:          2"), "{out}");
    assert!(out.contains("api keys:       1"), "{out}");
    assert!(!out.contains("cannot import"), "{out}");
    h.launch_server();

    // 4. the same nodes come back by themselves
    let t_back = Instant::now();
    h.node(&["restart", "a", "--authkey", ""], 60);
    h.node(&["restart", "b", "--authkey", ""], 60);
    let hello2 = until_reaches(&h, "b", "4. b reaches a after the move");
    assert_eq!(hello2, hello, "b's tailnet address changed");
    let after = h.nodes();
    for (id, name, ips) in &want {
        let n = after
            .iter()
            .find(|n| &node_id(n) == id)
            .unwrap_or_else(|| panic!("node {id} missing after the move: {after:?}"));
        assert_eq!(str_field(n, &["given_name"]).unwrap_or(""), name);
        assert_eq!(&node_ips(n), ips, "node {id}'s addresses");
    }
    let a_ips_now = wait_for("a logs its IPs again", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("a"))
    });
    assert_eq!(a_ips_now, ips_a);
    say!(
        "4. a and b restarted without a key: same IDs, names and addresses; b reaches a {:.1}s after the restarts",
        t_back.elapsed().as_secs_f64()
    );

    // 5. the carried-over pre-auth key registers a third node
    let hs_key = format!("hskey-auth-{PAK_PREFIX}-{PAK_SECRET}");
    h.start_node(
        "c",
        &control,
        &hs_key,
        41643,
        &["--role", "proxy", "--upstream", "a", "--proxy-no-keepalive"],
    );
    let ips_c = wait_for("c gets its IPs", Duration::from_secs(60), || {
        self_ips(&h.node_log_path("c"))
    });
    let hello3 = until_reaches(&h, "c", "5. c reaches a");
    assert_eq!(
        hello3,
        format!("hello from a over the tailnet; you are {}", ips_c[0])
    );
    let nodes = h.nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(
        !want.iter().any(|(_, _, ips)| ips.contains(&ips_c[0])),
        "c got an address of a migrated node"
    );
    say!(
        "5. c registered with the Headscale pre-auth key: {ips_c:?}, reaches a; whole test {:.0}s",
        t0.elapsed().as_secs_f64()
    );
}
