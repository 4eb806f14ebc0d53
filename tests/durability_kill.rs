//! kill -9 durability: the real binary is SIGKILLed at random moments while
//! one client creates users over the admin socket and another registers
//! nodes over the protocol. After every kill the database must open
//! cleanly and hold every write that was acknowledged before the kill;
//! then the server is started again on it. Prints how many kills it
//! survived. ~40 s (bounded by KILLS and a 90 s budget).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tinyscale::client::{self, Node};

const KILLS: usize = 25;
const BUDGET: Duration = Duration::from_secs(90);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

struct Srv {
    child: Child,
    config: PathBuf,
    socket: PathBuf,
    addr: std::net::SocketAddr,
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, port: u16) -> Srv {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nunix_socket: admin.sock\ndatabase:\n  path: db.redb\n\
             listen_addr: 127.0.0.1:{port}\nserver_url: http://127.0.0.1:{port}\n\
             tls_listen_addr: \"\"\nderp:\n  server:\n    enabled: false\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tinyscale"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("TINYSCALE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let srv = Srv {
        child,
        socket: dir.join("admin.sock"),
        config,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    // Up when the admin socket answers (bounded).
    let t0 = Instant::now();
    loop {
        if tinyscale::cli::client::call(&srv.socket, "GET", "/api/v1/user", None).is_ok()
            && std::net::TcpStream::connect(srv.addr).is_ok()
        {
            return srv;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "server did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = std::env::temp_dir().join(format!("tinyscale-kill9-{:016x}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let users: Arc<Mutex<Vec<String>>> = Arc::default();
    let nodes: Arc<Mutex<Vec<[u8; 32]>>> = Arc::default();
    let t0 = Instant::now();
    let mut kills = 0;
    while kills < KILLS && t0.elapsed() < BUDGET {
        let srv = start(&dir, port);
        let _ = &srv.config;
        // A reusable key for this round's registrations (acknowledged first).
        let round = kills;
        let name = format!("round{round}");
        tinyscale::cli::client::call(
            &srv.socket,
            "POST",
            "/api/v1/user",
            Some(&serde_json::json!({ "name": name })),
        )
        .unwrap();
        users.lock().unwrap().push(name.clone());
        let k = tinyscale::cli::client::call(
            &srv.socket,
            "POST",
            "/api/v1/preauthkey",
            Some(&serde_json::json!({ "user": name, "reusable": true })),
        )
        .unwrap();
        let key = k["preAuthKey"]["key"].as_str().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let admin = {
            let (stop, users, socket) = (stop.clone(), users.clone(), srv.socket.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("r{round}u{i}");
                    let body = serde_json::json!({ "name": name });
                    match tinyscale::cli::client::call(&socket, "POST", "/api/v1/user", Some(&body))
                    {
                        Ok(_) => users.lock().unwrap().push(name),
                        Err(_) => return,
                    }
                }
            })
        };
        let protocol: Vec<_> = (0..4)
            .map(|_| {
                let (stop, nodes, key, addr) = (stop.clone(), nodes.clone(), key.clone(), srv.addr);
                std::thread::spawn(move || {
                    smol::block_on(async {
                        let Ok(server_pub) = client::fetch_key(addr).await else {
                            return;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            let node = Node::new("n");
                            let Ok(mut conn) =
                                client::connect(addr, &server_pub, &node.machine_private).await
                            else {
                                return;
                            };
                            match conn.register(&node.register_request(Some(&key))).await {
                                Ok(r) if r.machine_authorized => {
                                    nodes.lock().unwrap().push(node.node_key().0)
                                }
                                _ => return,
                            }
                        }
                    })
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + rand_u64() % 500));
        // SIGKILL: no chance to flush anything.
        let mut srv = srv;
        srv.child.kill().unwrap();
        srv.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        admin.join().unwrap();
        for p in protocol {
            p.join().unwrap();
        }
        drop(srv);
        kills += 1;
        // The database opens cleanly and holds every acknowledged write.
        let store = tinyscale::state::Store::open(&dir.join("db.redb"))
            .unwrap_or_else(|e| panic!("after kill {kills}: database does not open: {e}"));
        let snap = store.load().unwrap();
        let have_users: std::collections::HashSet<&str> =
            snap.users.iter().map(|u| u.name.as_str()).collect();
        for u in users.lock().unwrap().iter() {
            assert!(
                have_users.contains(u.as_str()),
                "after kill {kills}: user {u} lost"
            );
        }
        let have_nodes: std::collections::HashSet<[u8; 32]> =
            snap.nodes.iter().map(|n| n.node_key).collect();
        for n in nodes.lock().unwrap().iter() {
            assert!(
                have_nodes.contains(n),
                "after kill {kills}: a registered node was lost"
            );
        }
        drop(store);
    }
    let (u, n) = (users.lock().unwrap().len(), nodes.lock().unwrap().len());
    eprintln!(
        "survived {kills} SIGKILLs in {:.1} s: {u} acknowledged users and {n} acknowledged \
         registrations all present after each restart",
        t0.elapsed().as_secs_f64()
    );
    assert!(kills >= 5, "only {kills} kills within the budget");
    assert!(
        n > 0 && u > kills,
        "the writers made no acknowledged writes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
