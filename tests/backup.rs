//! `tinyscale backup` while the server serves registrations, and `restore`
//! into a stopped server: the backup opens cleanly and holds every
//! registration acknowledged before the backup started.

mod common;

use common::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tinyscale::client::{self, Node};
use tinyscale::keys::x25519_public;
use tinyscale::state::{State, Store};

fn write_config(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("config.yaml");
    std::fs::write(
        &p,
        format!(
            "data_dir: {}\nunix_socket: tinyscale.sock\nlisten_addr: 127.0.0.1:18099\n",
            dir.display()
        ),
    )
    .unwrap();
    p
}

#[test]
fn backup_under_registrations_holds_every_acknowledged_write_and_restores() {
    let ts = start("backup");
    tinyscale::api::spawn(ts.server.clone()).unwrap();
    let config = write_config(&ts.dir);
    let key = ts.key("alice", true, false, &[]);
    let acked: Arc<Mutex<Vec<[u8; 32]>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = ts.addr;

    // Four clients register new nodes back to back; each node key is
    // recorded only once the server acknowledged its registration.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, key) = (acked.clone(), stop.clone(), key.clone());
            std::thread::spawn(move || {
                block_on_timeout(300, async move {
                    let server_pub = client::fetch_key(addr).await.unwrap();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) && i < 400 {
                        let n = Node::new(&format!("w{w}n{i}"));
                        let mut c = client::connect(addr, &server_pub, &n.machine_private)
                            .await
                            .unwrap();
                        let r = c.register(&n.register_request(Some(&key))).await.unwrap();
                        assert_eq!(r.error, "");
                        acked.lock().unwrap().push(x25519_public(&n.node_private));
                        i += 1;
                    }
                })
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 40 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let before: Vec<[u8; 32]> = acked.lock().unwrap().clone();
    let file = ts.dir.join("backup.redb");
    let (code, out, err) = cli(&config, &["backup", file.to_str().unwrap(), "--with-keys"]);
    assert_eq!(code, 0, "{out}{err}");
    // Registrations go on after the backup: let a few more land.
    let at_backup = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < at_backup + 20 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    // A second backup to the same file is refused.
    let (code, _, err) = cli(&config, &["backup", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("exists"), "{err}");

    // Restore into a stopped server's data directory.
    let dir2 = tempdir("restore");
    let config2 = write_config(&dir2);
    let (code, out, err) = cli(&config2, &["restore", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let st = State::load(Store::open(&dir2.join("db.redb")).unwrap()).unwrap();
    let total = acked.lock().unwrap().len();
    eprintln!(
        "backup taken after {} acknowledged registrations holds {} nodes; {} registered by the end",
        before.len(),
        st.nodes.len(),
        total
    );
    for k in &before {
        assert!(
            st.node_by_node_key(k).is_some(),
            "acknowledged node missing from the backup"
        );
    }
    assert!(
        st.nodes.len() < total,
        "the backup holds writes made after it"
    );
    assert!(st.find_user("alice").is_some());
    // The keys came along, and left the database on restore.
    assert!(st
        .store
        .get_meta("backup.noise_private_key")
        .unwrap()
        .is_none());
    drop(st);
    let noise = std::fs::read_to_string(dir2.join("noise_private.key")).unwrap();
    assert_eq!(
        noise.trim(),
        format!(
            "privkey:{}",
            tinyscale::keys::to_hex(&ts.server.noise_private)
        )
    );
    // Restoring again keeps the previous database aside.
    let (code, out, err) = cli(&config2, &["restore", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Previous database kept as"), "{out}");

    // Never under a running server.
    let (code, _, err) = cli(&config, &["restore", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is running"), "{err}");
    let _ = std::fs::remove_dir_all(&dir2);
}
