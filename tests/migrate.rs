//! `tinyscale migrate --from-headscale`: Headscale-schema SQLite databases
//! written by Debian's `sqlite3` CLI (the schema below is written here from
//! the facts in Headscale's hscontrol/db/schema.sql and its migration
//! dumps: the current column order, and an older, migrated order with
//! `forced_tags` and plaintext pre-auth keys), read through the binary.
//!
//! The bcrypt hashes were made by the system's libxcrypt (Python's `crypt`
//! module), not by the code under test.

mod common;
mod headscale_fixture;

use headscale_fixture::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use tinyscale::state::{State, Store};

const LEGACY_API_SECRET: &str = "legacysecretlegacysecretlegacyse";
const LEGACY_API_HASH: &str = "$2b$05$vgc9zgsnwOxMyvCEYOoge.wA5tzcawGPf5O6R0aS9TjzZCQLMfm/K";
const LEGACY_PAK: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

fn hexkey(b: u8) -> String {
    format!("{b:02x}").repeat(32)
}

/// The current Headscale layout (0.28 on: `tags`, tagged nodes without a
/// user, pre-auth keys with prefix + bcrypt hash, API keys with a user).
fn current_schema() -> String {
    format!(
        r#"
{SCHEMA}INSERT INTO users VALUES(1,'alice','Alice','alice@example.com',NULL,NULL,NULL,
  '2024-01-01 00:00:00+00:00','2024-01-01 00:00:00+00:00',NULL);
INSERT INTO users VALUES(2,'bob','Bob','bob@example.com','https://idp.example.com/1234','oidc',
  'https://idp.example.com/bob.png','2024-02-01 10:00:00.123456+00:00',NULL,NULL);
INSERT INTO users VALUES(3,'gone','','',NULL,NULL,NULL,'2024-01-01 00:00:00+00:00',NULL,
  '2024-03-01 00:00:00+00:00');
INSERT INTO pre_auth_keys VALUES(1,NULL,'a1b2c3d4e5f6',CAST('{PAK_HASH}' AS BLOB),1,'',1,0,0,'[]',
  '2099-01-01 00:00:00+00:00',NULL,'2024-01-02 00:00:00+00:00');
INSERT INTO pre_auth_keys VALUES(2,'{LEGACY_PAK}','',NULL,2,'',0,1,1,'[]',
  '2099-01-01 00:00:00+00:00',NULL,'2024-01-02 00:00:00+00:00');
INSERT INTO pre_auth_keys VALUES(3,NULL,'ffffffffffff',CAST('not a hash' AS BLOB),NULL,'',1,0,0,
  '["tag:srv"]',NULL,NULL,NULL);
INSERT INTO api_keys VALUES(1,'0a1b2c3d4e5f',CAST('{API_HASH}' AS BLOB),1,
  '2099-01-01 00:00:00+00:00',NULL,'2024-01-03 00:00:00+00:00');
INSERT INTO api_keys VALUES(2,'abcdefg',CAST('{LEGACY_API_HASH}' AS BLOB),NULL,NULL,NULL,NULL);
INSERT INTO nodes VALUES(1,'mkey:{m1}','nodekey:{n1}','discokey:{d1}','["192.0.2.1:41641"]',
  '{{"Hostname":"laptop","OS":"linux"}}','100.64.0.1','fd7a:115c:a1e0::1','laptop','laptop',1,
  'authkey','[]',1,'2024-05-01 00:00:00+00:00','0001-01-01 00:00:00+00:00','[]',
  '2024-01-05 00:00:00+00:00',NULL,NULL);
INSERT INTO nodes VALUES(2,'mkey:{m2}','nodekey:{n2}','',NULL,
  '{{"Hostname":"srv","RoutableIPs":["10.0.0.0/24"],"NetInfo":{{"PreferredDERP":2}}}}',
  '100.64.0.2','fd7a:115c:a1e0::2','srv','server-1',NULL,'cli','["tag:srv"]',NULL,NULL,
  '2030-01-01 00:00:00+00:00','["10.0.0.0/24"]','2024-01-06 00:00:00+00:00',NULL,NULL);
INSERT INTO nodes VALUES(3,'mkey:zz','nodekey:{n2}','',NULL,'{{}}','100.64.0.3',NULL,'bad','bad',1,
  'cli','[]',NULL,NULL,NULL,'[]',NULL,NULL,NULL);
INSERT INTO nodes VALUES(4,'mkey:{m2}','nodekey:{n2}','',NULL,'{{}}','100.64.0.4',NULL,'old','old',1,
  'cli','[]',NULL,NULL,NULL,'[]',NULL,NULL,'2024-04-01 00:00:00+00:00');
INSERT INTO policies VALUES(1,'{{"acls":[]}}',NULL,NULL,'2024-01-01 00:00:00+00:00');
INSERT INTO policies VALUES(2,'{{"acls":[{{"action":"accept","src":["*"],"dst":["*:*"]}}]}}',NULL,NULL,NULL);
"#,
        m1 = hexkey(0x11),
        n1 = hexkey(0x12),
        d1 = hexkey(0x13),
        m2 = hexkey(0x21),
        n2 = hexkey(0x22),
    )
}

/// An older database that went through Headscale's migrations: columns in
/// another order, `forced_tags`, plaintext pre-auth keys, API keys without
/// a user, no `policies` table.
fn migrated_schema() -> String {
    format!(
        r#"
CREATE TABLE `users` (`id` integer PRIMARY KEY AUTOINCREMENT,`created_at` datetime,`updated_at` datetime,
  `deleted_at` datetime,`name` text,`display_name` text,`email` text,`provider_identifier` text,
  `provider` text,`profile_pic_url` text);
CREATE TABLE `pre_auth_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`key` text,`user_id` integer,
  `reusable` numeric,`ephemeral` numeric DEFAULT false,`used` numeric DEFAULT false,`tags` text,
  `created_at` datetime,`expiration` datetime);
CREATE TABLE `api_keys` (`id` integer PRIMARY KEY AUTOINCREMENT,`prefix` text,`hash` blob,
  `created_at` datetime,`expiration` datetime,`last_seen` datetime);
CREATE TABLE "nodes" (`id` integer PRIMARY KEY AUTOINCREMENT,`machine_key` text,`node_key` text,
  `disco_key` text,`endpoints` text,`host_info` text,`ipv4` text,`ipv6` text,`hostname` text,
  `given_name` varchar(63),`user_id` integer,`register_method` text,`forced_tags` text,
  `auth_key_id` integer,`expiry` datetime,`last_seen` datetime,`approved_routes` text,
  `created_at` datetime,`updated_at` datetime,`deleted_at` datetime);
INSERT INTO users VALUES(7,'2024-01-01 00:00:00+00:00',NULL,NULL,'carol','','',NULL,NULL,NULL);
INSERT INTO pre_auth_keys VALUES(5,'{LEGACY_PAK}',7,1,0,0,NULL,'2024-01-01 00:00:00+00:00',NULL);
INSERT INTO nodes VALUES(9,'mkey:{m}','nodekey:{n}','discokey:{d}','[]','{{}}','100.64.0.9',
  NULL,'box','box',7,'authkey','["tag:old"]',5,'0001-01-01 00:00:00+00:00',NULL,'[]',NULL,NULL,NULL);
"#,
        m = hexkey(0x31),
        n = hexkey(0x32),
        d = hexkey(0x33),
    )
}

fn tmpdir(name: &str) -> PathBuf {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    let d = std::env::temp_dir().join(format!(
        "tinyscale-migrate-{name}-{:016x}",
        u64::from_le_bytes(b)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Builds `dir/db.sqlite` from `sql` with the sqlite3 CLI; None (with the
/// reason printed) when the CLI is missing outside CI.
fn sqlite_db(dir: &Path, sql: &str) -> Option<PathBuf> {
    let db = dir.join("db.sqlite");
    let child = Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            if std::env::var_os("CI").is_some_and(|v| v == "true") {
                panic!("sqlite3 CLI missing in CI: {e}");
            }
            eprintln!("SKIP: the sqlite3 CLI is not installed ({e}); apt-get install sqlite3");
            return None;
        }
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "sqlite3 failed on the schema");
    Some(db)
}

/// Runs the binary with a config whose data_dir is `dir/ts`.
fn tinyscale(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let config = dir.join("tinyscale.yaml");
    if !config.exists() {
        std::fs::write(
            &config,
            format!(
                "data_dir: {}\nunix_socket: admin.sock\nlisten_addr: 127.0.0.1:18081\n",
                dir.join("ts").display()
            ),
        )
        .unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(args)
        .arg("--config")
        .arg(&config)
        .env_remove("TINYSCALE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn imports_a_current_headscale_database() {
    let dir = tmpdir("current");
    let Some(db) = sqlite_db(&dir, &current_schema()) else {
        return;
    };
    let noise = dir.join("noise_private.key");
    std::fs::write(&noise, format!("privkey:{}\n", hexkey(0x44))).unwrap();
    let before = std::fs::read(&db).unwrap();
    let dbs = db.to_str().unwrap();
    let ns = noise.to_str().unwrap();

    // Dry run: counts and refusals, nothing written anywhere.
    let (code, out, err) = tinyscale(
        &dir,
        &["migrate", "--from-headscale", dbs, "--noise-key", ns],
    );
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "users:          2",
        "nodes:          2",
        "pre-auth keys:  2",
        "api keys:       2",
        "policy:         yes",
        "soft-deleted rows ignored: 2",
        "cannot import pre-auth key 3: not a bcrypt hash",
        "cannot import node 3: machine_key \"mkey:zz\"",
        "Dry run",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    assert!(
        !dir.join("ts").join("db.redb").exists(),
        "dry run wrote a database"
    );

    let (code, out, err) = tinyscale(
        &dir,
        &[
            "migrate",
            "--from-headscale",
            dbs,
            "--noise-key",
            ns,
            "--apply",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the Headscale database was modified"
    );

    // The server's identity came along.
    let key = std::fs::read_to_string(dir.join("ts").join("noise_private.key")).unwrap();
    assert_eq!(key.trim(), format!("privkey:{}", hexkey(0x44)));

    let mut st = State::load(Store::open(&dir.join("ts").join("db.redb")).unwrap()).unwrap();
    let bob = &st.users[&2];
    assert_eq!(bob.provider_id, "https://idp.example.com/1234");
    assert_eq!(bob.profile_pic_url, "https://idp.example.com/bob.png");
    assert!(!st.users.contains_key(&3));
    let laptop = &st.nodes[&1];
    assert_eq!(laptop.machine_key, [0x11; 32]);
    assert_eq!(laptop.node_key, [0x12; 32]);
    assert_eq!(laptop.disco_key, [0x13; 32]);
    assert_eq!(laptop.ipv4, Some("100.64.0.1".parse().unwrap()));
    assert_eq!(laptop.ipv6, Some("fd7a:115c:a1e0::1".parse().unwrap()));
    assert_eq!((laptop.user, laptop.auth_key, laptop.expiry), (1, 1, 0));
    assert_eq!(laptop.endpoints, vec!["192.0.2.1:41641".to_string()]);
    assert_eq!(laptop.last_seen, 1_714_521_600);
    assert_eq!(
        laptop.register_method,
        tinyscale::state::RegisterMethod::AuthKey
    );
    let srv = &st.nodes[&2];
    assert_eq!(srv.given_name, "server-1");
    assert_eq!(srv.hostname, "srv");
    assert_eq!(
        (srv.user, srv.tags.clone()),
        (0, vec!["tag:srv".to_string()])
    );
    assert_eq!(srv.approved_routes, vec!["10.0.0.0/24".to_string()]);
    assert_eq!(srv.advertised_routes, vec!["10.0.0.0/24".to_string()]);
    assert_eq!(srv.home_derp, 2);
    assert_eq!(srv.expiry, 1_893_456_000);
    assert_eq!(st.next_node_id, 3);

    // Carried-over keys work as they did on Headscale; wrong ones do not.
    // bcrypt runs outside the state (`unverified_imported_key`, `verify`);
    // until a verified key is accepted the state itself calls it invalid.
    let full = format!("hskey-auth-a1b2c3d4e5f6-{PAK_SECRET}");
    let wrong = format!("hskey-auth-a1b2c3d4e5f6-{}", "5b".repeat(32));
    assert!(!st.unverified_imported_key(&wrong).unwrap().verify());
    let v = st.unverified_imported_key(&full).unwrap();
    assert!(v.verify());
    assert!(st.validate_preauth_key(&full).is_err());
    st.accept_imported_key(&v).unwrap();
    assert!(st.keys[&1].bcrypt.is_empty());
    assert!(st.unverified_imported_key(&full).is_none());
    assert_eq!(st.validate_preauth_key(&full).unwrap().id, 1);
    assert!(st.validate_preauth_key(&wrong).is_err());
    // The legacy key was single-use and used on Headscale.
    let e = st
        .validate_preauth_key(LEGACY_PAK)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("used"), "{e}");
    use tinyscale::api::apikey;
    let api = format!("hskey-api-0a1b2c3d4e5f-{API_SECRET}");
    assert!(apikey::validate(&st.store, &api));
    assert!(!apikey::validate(&st.store, &api.replace("6b6b", "6b6c")));
    let legacy = format!("abcdefg.{LEGACY_API_SECRET}");
    assert!(apikey::validate(&st.store, &legacy));
    assert!(!apikey::validate(&st.store, "abcdefg.nope"));
    // The server runs bcrypt outside the state lock (`check` only reads
    // the table), once per key: `accept` gives the key tinyscale's hash.
    for key in [&api, &legacy] {
        let apikey::Check::Bcrypt(k) = apikey::check(&st.store, key) else {
            panic!("{key}: no bcrypt check");
        };
        assert!(k.verify());
        apikey::accept(&st.store, &k).unwrap();
        assert!(matches!(
            apikey::check(&st.store, key),
            apikey::Check::Decided(true)
        ));
    }
    assert!(apikey::list(&st.store)
        .unwrap()
        .iter()
        .all(|k| k.bcrypt.is_empty()));
    assert!(!apikey::validate(&st.store, &api.replace("6b6b", "6b6c")));
    assert!(!apikey::validate(&st.store, "abcdefg.nope"));
    let listed = apikey::list(&st.store).unwrap();
    assert_eq!(listed.iter().map(|k| k.id).collect::<Vec<_>>(), vec![1, 2]);
    // The live policy row, not the deleted one.
    let policy = st.store.get_meta("policy").unwrap().unwrap();
    assert!(String::from_utf8(policy).unwrap().contains("accept"));
    drop(st);

    // No second import on top of the first.
    let (code, _, err) = tinyscale(
        &dir,
        &[
            "migrate",
            "--from-headscale",
            dbs,
            "--noise-key",
            ns,
            "--apply",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("fresh data directory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reads_a_migrated_older_layout_by_column_name() {
    let dir = tmpdir("older");
    let Some(db) = sqlite_db(&dir, &migrated_schema()) else {
        return;
    };
    let (code, out, err) = tinyscale(
        &dir,
        &[
            "migrate",
            "--from-headscale",
            db.to_str().unwrap(),
            "--apply",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("noise key:      none given"), "{out}");
    let st = State::load(Store::open(&dir.join("ts").join("db.redb")).unwrap()).unwrap();
    let n = &st.nodes[&9];
    assert_eq!((n.user, n.tags.clone()), (7, vec!["tag:old".to_string()]));
    assert_eq!(n.machine_key, [0x31; 32]);
    assert_eq!(st.users[&7].name, "carol");
    // The plaintext key is stored hashed, and still works.
    assert_eq!(st.validate_preauth_key(LEGACY_PAK).unwrap().id, 5);
    assert!(st.keys[&5].prefix.is_empty());
    let file = std::fs::read(dir.join("ts").join("db.redb")).unwrap();
    assert!(
        !file
            .windows(LEGACY_PAK.len())
            .any(|w| w == LEGACY_PAK.as_bytes()),
        "plaintext key in the database"
    );
    drop(st);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_a_running_headscale_and_corrupt_files() {
    let dir = tmpdir("refuse");
    let Some(db) = sqlite_db(&dir, &current_schema()) else {
        return;
    };
    let dbs = db.to_str().unwrap().to_string();
    let wal = format!("{dbs}-wal");
    std::fs::write(&wal, b"not empty").unwrap();
    let (code, _, err) = tinyscale(&dir, &["migrate", "--from-headscale", &dbs]);
    assert_eq!(code, 1);
    assert!(err.contains("still running"), "{err}");
    std::fs::remove_file(&wal).unwrap();

    // Damage: a truncated file, a bad page type, a pointer loop. Each is a
    // clear error (exit 1), never a crash.
    let good = std::fs::read(&db).unwrap();
    let page = u16::from_be_bytes([good[16], good[17]]) as usize;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..50].to_vec()),
        ("no magic", {
            let mut b = good.clone();
            b[0] = b'X';
            b
        }),
    ];
    let mut bad_type = good.clone();
    bad_type[100] = 0x07; // the schema page's b-tree type
    cases.push(("bad page type", bad_type));
    let mut lop = good.clone();
    // Page 2 as an interior page whose right-most child is itself.
    if lop.len() >= 2 * page {
        lop[page] = 0x05;
        lop[page + 3..page + 5].copy_from_slice(&0u16.to_be_bytes());
        lop[page + 8..page + 12].copy_from_slice(&2u32.to_be_bytes());
        cases.push(("loop", lop));
    }
    for (what, bytes) in cases {
        std::fs::write(&db, &bytes).unwrap();
        let (code, out, err) = tinyscale(&dir, &["migrate", "--from-headscale", &dbs]);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(
            err.contains("sqlite:") || err.contains("not a Headscale"),
            "{what}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn translates_a_headscale_config() {
    let dir = tmpdir("config");
    let Some(db) = sqlite_db(&dir, &migrated_schema()) else {
        return;
    };
    let hs = dir.join("headscale.yaml");
    let noise = dir.join("hs_noise.key");
    std::fs::write(&noise, format!("privkey:{}\n", hexkey(0x55))).unwrap();
    std::fs::write(
        &hs,
        format!(
            "server_url: https://hs.example.com\nlisten_addr: 0.0.0.0:8080\n\
             noise:\n  private_key_path: {}\nprefixes:\n  v4: 100.64.0.0/10\n\
             database:\n  type: sqlite\n  sqlite:\n    path: {}\n    write_ahead_log: true\n\
             dns:\n  magic_dns: true\n  base_domain: tail.example.com\n\
             grpc_listen_addr: 127.0.0.1:50443\nunix_socket: /var/run/headscale/headscale.sock\n",
            noise.display(),
            db.display()
        ),
    )
    .unwrap();
    let out_cfg = dir.join("translated.yaml");
    let (code, out, err) = tinyscale(
        &dir,
        &[
            "migrate",
            "--headscale-config",
            hs.to_str().unwrap(),
            "--write-config",
            out_cfg.to_str().unwrap(),
            "--apply",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("not carried over: grpc_listen_addr"), "{out}");
    assert!(
        out.contains("not carried over: database.sqlite.write_ahead_log"),
        "{out}"
    );
    let text = std::fs::read_to_string(&out_cfg).unwrap();
    let (cfg, warnings) = tinyscale::config::from_yaml_str(&text, &dir, &dir.join("data")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(cfg.server_url, "https://hs.example.com");
    assert_eq!(cfg.listen_addr, "0.0.0.0:8080".parse().unwrap());
    assert!(!text.contains("headscale.sock"), "{text}");
    // The key came from the path in Headscale's config.
    let key = std::fs::read_to_string(dir.join("ts").join("noise_private.key")).unwrap();
    assert!(key.contains(&hexkey(0x55)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The secret part of an imported key (pre-auth or API) and its bcrypt hash at
/// Headscale's default cost (10), made by the system's libxcrypt.
const COST10_SECRET: &str = "7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c7c";
const COST10_HASH: &str = "$2b$10$KMupZ8hkjuHMHnhJrYrLZ.W86eQThJZnFQcz.9PqJT0XKJovehSYW";

/// Waits for `t`, a request that makes the server verify a bcrypt hash;
/// asserts that the test could take the state lock while the verification
/// held the slot (held before and after the lock was taken).
fn lock_free_while_verifying<T>(ts: &common::TestServer, t: std::thread::JoinHandle<T>) -> T {
    use tinyscale::bcrypt::Slot;
    let (mut seen_running, mut locked_meanwhile) = (false, 0);
    while !t.is_finished() {
        if Slot::held() {
            seen_running = true;
            if let Ok(_st) = ts.server.state.try_lock() {
                if Slot::held() {
                    locked_meanwhile += 1;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(seen_running, "no verification was seen running");
    assert!(
        locked_meanwhile > 0,
        "the state lock was held during every sample of the bcrypt check"
    );
    t.join().unwrap()
}

/// A carried-over pre-auth key registers a node over the live protocol,
/// and a carried-over API key opens the REST API; their bcrypt checks
/// (tens of ms, more in a debug build) run without the state lock: while a
/// verification holds the slot, the test can take the lock. With the slot
/// taken a request is refused, not queued; after one success the key has
/// tinyscale's own hash.
#[test]
fn imported_key_is_checked_without_the_state_lock() {
    use tinyscale::bcrypt::Slot;
    use tinyscale::client::Node;
    use tinyscale::state::Op;
    let ts = common::start("bcrypt");
    let prefix = "c0ffee000001";
    let id = {
        let mut st = ts.server.state();
        st.create_user("alice", "", "").unwrap();
        let (mut k, _) = st
            .create_preauth_key(Some("alice"), true, false, None, vec![])
            .unwrap();
        // What `tinyscale migrate` stores for a Headscale key.
        (k.prefix, k.hash, k.bcrypt) = (prefix.into(), [0; 32], COST10_HASH.into());
        st.store.apply(&[Op::PutKey(&k)]).unwrap();
        st.keys.insert(k.id, k.clone());
        k.id
    };
    let full = format!("hskey-auth-{prefix}-{COST10_SECRET}");
    let register = |key: String| {
        let addr = ts.addr;
        std::thread::spawn(move || {
            common::block_on_timeout(300, async move {
                let node = Node::new("imported");
                let server_pub = tinyscale::client::fetch_key(addr).await.unwrap();
                let mut conn = tinyscale::client::connect(addr, &server_pub, &node.machine_private)
                    .await
                    .unwrap();
                conn.register(&node.register_request(Some(&key)))
                    .await
                    .unwrap()
            })
        })
    };

    // The slot taken: refused at once, the key untouched.
    let slot = Slot::take().unwrap();
    assert!(Slot::take().is_none());
    let r = register(full.clone()).join().unwrap();
    assert!(
        r.error.contains("too many auth key checks"),
        "{:?}",
        r.error
    );
    drop(slot);
    assert!(!Slot::held());
    assert!(!ts.server.state().keys[&id].bcrypt.is_empty());
    // A wrong secret under the right prefix: checked, refused, unchanged.
    let wrong = format!("hskey-auth-{prefix}-{}", "7d".repeat(32));
    assert_eq!(register(wrong).join().unwrap().error, "invalid key");
    assert!(!Slot::held());
    assert!(!ts.server.state().keys[&id].bcrypt.is_empty());

    // The right key: while its verification holds the slot, the state
    // lock is free.
    let r = lock_free_while_verifying(&ts, register(full.clone()));
    assert_eq!(r.error, "");
    assert!(r.machine_authorized);
    // From now on the key carries tinyscale's own hash: no bcrypt.
    {
        let st = ts.server.state();
        assert!(st.keys[&id].bcrypt.is_empty());
        assert_eq!(st.validate_preauth_key(&full).unwrap().id, id);
        assert_eq!(st.nodes.len(), 1);
    }

    // The same for an imported API key on the REST API (same slot).
    use tinyscale::state::apikey;
    let api_prefix = "c0ffeeapi001";
    let imported = apikey::ApiKey {
        id: 1,
        prefix: api_prefix.into(),
        bcrypt: COST10_HASH.into(),
        ..Default::default()
    };
    let (meta, table) = apikey::import_table(&[imported]).unwrap();
    ts.server
        .state()
        .store
        .apply(&[Op::PutMeta(meta, table)])
        .unwrap();
    let get = |key: String| {
        use std::io::{Read, Write};
        let addr = ts.addr;
        std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET /api/v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                 Authorization: Bearer {key}\r\n\r\n"
            )
            .unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).unwrap();
            String::from_utf8_lossy(&head[9..]).to_string()
        })
    };
    let api_key = format!("{}{api_prefix}-{COST10_SECRET}", apikey::KEY_PREFIX);
    let slot = Slot::take().unwrap();
    assert_eq!(get(api_key.clone()).join().unwrap(), "401");
    drop(slot);
    assert_eq!(lock_free_while_verifying(&ts, get(api_key.clone())), "200");
    let keys = apikey::list(&ts.server.state().store).unwrap();
    assert!(keys[0].bcrypt.is_empty());
    assert_eq!(get(api_key).join().unwrap(), "200");
}
