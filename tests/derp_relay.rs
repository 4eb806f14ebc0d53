//! The DERP relay against synthetic clients over loopback TCP.
//!
//! The clients are deliberately plain blocking code on std sockets, written
//! from derp.md rather than from the server, so the two sides don't share
//! mistakes.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crypto_box::aead::Aead;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use tinyscale::derp::{serve_derp_conn, serve_derp_conn_from, DerpConfig, DerpServer};
use tinyscale::wire::derp::{
    FrameType, Header, Key, PeerGoneReason, Repr, DISCO_MAGIC, HEADER_LEN, MAX_PACKET_SIZE,
};

/// Start a relay on 127.0.0.1:0; each accepted connection runs on smol.
fn start(server: DerpServer) -> (SocketAddr, Arc<DerpServer>) {
    let server = Arc::new(server);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let _ = stream.set_nodelay(true);
            let remote = stream.peer_addr().ok();
            let s = s.clone();
            smol::spawn(async move {
                let stream = async_io::Async::new(stream).unwrap();
                let _ = serve_derp_conn_from(stream, s, remote).await;
            })
            .detach();
        }
    });
    (addr, server)
}

fn read_frame(s: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head)?;
    let h = Header::parse(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut f = head.to_vec();
    f.resize(HEADER_LEN + h.payload_len, 0);
    s.read_exact(&mut f[HEADER_LEN..])?;
    Ok(f)
}

struct Client<S = TcpStream> {
    s: S,
    key: Key,
}

/// Connect and do the handshake; returns the client and the first frame
/// after ClientInfo (ServerInfo on success).
fn connect_raw(addr: SocketAddr, seed: u8, mesh: Option<&str>) -> (Client, io::Result<Vec<u8>>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    handshake(s, seed, mesh)
}

fn handshake<S: Read + Write>(
    mut s: S,
    seed: u8,
    mesh: Option<&str>,
) -> (Client<S>, io::Result<Vec<u8>>) {
    let secret = SecretKey::from_bytes([seed; 32]);
    let key = secret.public_key().to_bytes();
    let f = read_frame(&mut s).unwrap();
    let Ok((Repr::ServerKey { key: server_key }, _)) = Repr::parse_bytes(&f) else {
        panic!("expected ServerKey, got {f:?}");
    };
    let json = match mesh {
        // An old client that cannot answer server pings.
        Some("no-pings") => r#"{"version":2}"#.to_string(),
        Some(mk) => format!(r#"{{"version":2,"CanAckPings":true,"meshKey":"{mk}"}}"#),
        None => r#"{"version":2,"CanAckPings":true}"#.to_string(),
    };
    let b = SalsaBox::new(&PublicKey::from_bytes(server_key), &secret);
    let nonce = [seed ^ 0x5a; 24];
    let sealed = b.encrypt(&nonce.into(), json.as_bytes()).unwrap();
    let ci = Repr::ClientInfo {
        key,
        nonce,
        sealed: &sealed,
    };
    s.write_all(&ci.to_vec()).unwrap();
    let next = read_frame(&mut s);
    if let Ok(f) = &next {
        if let Ok((Repr::ServerInfo { nonce, sealed }, _)) = Repr::parse_bytes(f) {
            let plain = b.decrypt(&nonce.into(), sealed).expect("ServerInfo opens");
            let v: serde_json::Value = serde_json::from_slice(&plain).unwrap();
            assert_eq!(v["version"], 2);
        }
    }
    (Client { s, key }, next)
}

fn connect(addr: SocketAddr, seed: u8) -> Client {
    let (c, first) = connect_raw(addr, seed, None);
    let first = first.expect("ServerInfo");
    assert_eq!(first[0], u8::from(FrameType::ServerInfo));
    c
}

impl<S: Read + Write> Client<S> {
    fn send(&mut self, r: Repr<'_>) {
        self.s.write_all(&r.to_vec()).unwrap();
    }

    /// Next frame that is not a KeepAlive.
    fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let f = read_frame(&mut self.s)?;
            if f[0] != u8::from(FrameType::KeepAlive) {
                return Ok(f);
            }
        }
    }
}

/// A client over a Unix socket pair: unlike loopback TCP (whose kernel keeps
/// squeezing more unread data into a stalled receiver), its buffer is small
/// and fixed, so a client that stops reading really stops the server's writes.
fn connect_unix(server: &Arc<DerpServer>, seed: u8) -> Client<UnixStream> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let s = server.clone();
    smol::spawn(async move {
        let theirs = async_io::Async::new(theirs).unwrap();
        let _ = serve_derp_conn(theirs, s).await;
    })
    .detach();
    let (c, first) = handshake(ours, seed, None);
    assert_eq!(first.unwrap()[0], u8::from(FrameType::ServerInfo));
    c
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn packets_are_relayed_and_peer_gone_follows() {
    let (addr, server) = start(DerpServer::new([1; 32]));
    let mut a = connect(addr, 10);
    let mut b = connect(addr, 11);
    assert!(wait_until(
        || server.is_connected(&a.key) && server.is_connected(&b.key)
    ));

    a.send(Repr::SendPacket {
        dst: b.key,
        packet: b"hello b",
    });
    let f = b.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::RecvPacket {
            src: a.key,
            packet: b"hello b"
        }
    );
    // The largest legal packet makes it through too.
    let big = vec![0xEE; MAX_PACKET_SIZE];
    b.send(Repr::SendPacket {
        dst: a.key,
        packet: &big,
    });
    let f = a.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::RecvPacket {
            src: b.key,
            packet: &big
        }
    );

    // Ping → Pong with the same bytes.
    a.send(Repr::Ping { data: *b"pingpong" });
    let f = a.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::Pong { data: *b"pingpong" }
    );

    // Unknown frame types are skipped, the connection survives.
    a.send(Repr::Unknown {
        frame_type: 0x7f,
        payload: b"future stuff",
    });
    a.send(Repr::NotePreferred { preferred: true });
    a.send(Repr::Ping { data: [9; 8] });
    let f = a.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::Pong { data: [9; 8] }
    );

    // A leaves: B, which received from A, hears PeerGone(A, disconnected).
    let a_key = a.key;
    drop(a);
    let f = b.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::PeerGone {
            key: a_key,
            reason: PeerGoneReason::Disconnected
        }
    );
    assert!(wait_until(|| !server.is_connected(&a_key)));
}

#[test]
fn disco_to_absent_peer_gets_not_here() {
    let (addr, _server) = start(DerpServer::new([2; 32]));
    let mut a = connect(addr, 20);
    let absent = [0x99; 32];
    // Plain data to an absent peer is dropped silently…
    a.send(Repr::SendPacket {
        dst: absent,
        packet: b"wg",
    });
    // …a disco message earns a NotHere.
    let mut disco = DISCO_MAGIC.to_vec();
    disco.resize(6 + 32 + 24 + 10, 1);
    a.send(Repr::SendPacket {
        dst: absent,
        packet: &disco,
    });
    let f = a.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::PeerGone {
            key: absent,
            reason: PeerGoneReason::NotHere
        }
    );
}

#[test]
fn unknown_node_key_is_refused() {
    let allowed = SecretKey::from_bytes([30; 32]).public_key().to_bytes();
    let server = DerpServer::new([3; 32]).with_verify(Arc::new(move |k: &Key| *k == allowed));
    let (addr, server) = start(server);
    let _ok = connect(addr, 30);

    let (mut c, first) = connect_raw(addr, 31, None);
    let first = first.expect("an explanation frame");
    match Repr::parse_bytes(&first).unwrap().0 {
        Repr::Health { problem } => assert!(problem.contains("not authorized")),
        other => panic!("expected Health, got {other:?}"),
    }
    // Then the server hangs up: EOF, never ServerInfo.
    let mut rest = Vec::new();
    let n = c.s.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(!server.is_connected(&c.key));
    assert_eq!(
        server
            .stats()
            .clients_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn bad_client_info_is_dropped() {
    let (addr, _server) = start(DerpServer::new([4; 32]));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    read_frame(&mut s).unwrap();
    // A box sealed to the wrong key does not open.
    let ci = Repr::ClientInfo {
        key: [5; 32],
        nonce: [0; 24],
        sealed: &[0; 40],
    };
    s.write_all(&ci.to_vec()).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
}

#[test]
fn slow_reader_is_dropped_without_blocking_others() {
    let cfg = DerpConfig {
        write_timeout: Duration::from_millis(300),
        ..DerpConfig::default()
    };
    let server = Arc::new(DerpServer::new([5; 32]).with_config(cfg));
    let mut a = connect_unix(&server, 50);
    let mut b = connect_unix(&server, 51);
    let slow = connect_unix(&server, 52); // never reads again
    let slow_key = slow.key;
    assert!(wait_until(|| server.connected_keys().len() == 3));

    // Flood the slow reader with far more than socket buffers hold; the
    // sender must never block (it is a different client's problem).
    let pkt = vec![0xAB; MAX_PACKET_SIZE];
    let started = Instant::now();
    for _ in 0..2000 {
        a.send(Repr::SendPacket {
            dst: slow_key,
            packet: &pkt,
        });
        if !server.is_connected(&slow_key) {
            break;
        }
    }
    assert!(
        wait_until(|| !server.is_connected(&slow_key)),
        "slow reader still connected after {:?}",
        started.elapsed()
    );
    assert!(
        server
            .stats()
            .slow_clients_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // The others are unaffected.
    a.send(Repr::SendPacket {
        dst: b.key,
        packet: b"still here",
    });
    let f = b.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::RecvPacket {
            src: a.key,
            packet: b"still here"
        }
    );
    a.send(Repr::Ping { data: [1; 8] });
    loop {
        let f = a.recv().unwrap();
        if let Repr::Pong { data } = Repr::parse_bytes(&f).unwrap().0 {
            assert_eq!(data, [1; 8]);
            break;
        }
    }
    drop(slow);
}

#[test]
fn keepalives_and_pings_arrive() {
    let cfg = DerpConfig {
        keepalive: Duration::from_millis(20),
        ..DerpConfig::default()
    };
    let (addr, _server) = start(DerpServer::new([6; 32]).with_config(cfg));
    // A client that cannot ack pings gets bare keepalives…
    let (mut old, first) = connect_raw(addr, 60, Some("no-pings"));
    assert_eq!(first.unwrap()[0], u8::from(FrameType::ServerInfo));
    let f = read_frame(&mut old.s).unwrap();
    assert_eq!(Repr::parse_bytes(&f).unwrap().0, Repr::KeepAlive);
    // …one that can is pinged instead.
    let mut new = connect(addr, 61);
    let f = read_frame(&mut new.s).unwrap();
    assert!(matches!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::Ping { .. }
    ));
}

#[test]
fn silent_client_is_dropped_while_ponging_client_stays() {
    let cfg = DerpConfig {
        keepalive: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..DerpConfig::default()
    };
    let (addr, server) = start(DerpServer::new([19; 32]).with_config(cfg));
    let silent = connect(addr, 190);
    let mut alive = connect(addr, 191);
    let alive_key = alive.key;
    let answerer = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < end {
            let Ok(f) = read_frame(&mut alive.s) else {
                break;
            };
            if let Ok((Repr::Ping { data }, _)) = Repr::parse_bytes(&f) {
                alive.send(Repr::Pong { data });
            }
        }
        alive
    });
    assert!(wait_until(|| !server.is_connected(&silent.key)));
    let alive = answerer.join().unwrap();
    assert!(server.is_connected(&alive_key));
    assert!(
        server
            .stats()
            .idle_clients_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    drop(alive);
}

#[test]
fn mesh_watcher_sees_presence_and_can_close_peers() {
    let mesh = [0x42u8; 32];
    let mesh_hex: String = mesh.iter().map(|b| format!("{b:02x}")).collect();
    let server = DerpServer::new([7; 32])
        .with_mesh_key(mesh)
        .with_verify(Arc::new(|_: &Key| false));
    let (addr, server) = start(server);
    // Mesh peers bypass verify.
    let (mut w, first) = connect_raw(addr, 70, Some(&mesh_hex));
    assert_eq!(first.unwrap()[0], u8::from(FrameType::ServerInfo));
    w.send(Repr::WatchConns);
    // The watcher itself is reported first.
    let f = w.recv().unwrap();
    assert!(
        matches!(Repr::parse_bytes(&f).unwrap().0, Repr::PeerPresent { key, .. } if key == w.key)
    );

    // A second mesh-holding client appears: PeerPresent with its endpoint.
    let (other, first) = connect_raw(addr, 71, Some(&mesh_hex));
    assert!(first.is_ok());
    let f = w.recv().unwrap();
    match Repr::parse_bytes(&f).unwrap().0 {
        Repr::PeerPresent { key, endpoint, .. } => {
            assert_eq!(key, other.key);
            assert_eq!(endpoint, Some(other.s.local_addr().unwrap()));
        }
        r => panic!("expected PeerPresent, got {r:?}"),
    }
    // ClosePeer drops it, and the watcher hears PeerGone.
    w.send(Repr::ClosePeer { key: other.key });
    let f = w.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::PeerGone {
            key: other.key,
            reason: PeerGoneReason::Disconnected
        }
    );
    assert!(wait_until(|| !server.is_connected(&other.key)));

    // A non-mesh client asking to watch is disconnected.
    let plain = DerpServer::new([8; 32]);
    let (addr2, _s2) = start(plain);
    let mut c = connect(addr2, 72);
    c.send(Repr::WatchConns);
    let mut rest = Vec::new();
    assert_eq!(c.s.read_to_end(&mut rest).unwrap_or(0), 0);
}

#[test]
fn silent_client_hits_handshake_deadline() {
    let cfg = DerpConfig {
        handshake_timeout: Duration::from_millis(200),
        ..DerpConfig::default()
    };
    let (addr, _server) = start(DerpServer::new([9; 32]).with_config(cfg));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!(f[0], u8::from(FrameType::ServerKey));
    // Say nothing; the server must hang up on its own.
    let started = Instant::now();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn oversized_frame_closes_connection() {
    let (addr, server) = start(DerpServer::new([10; 32]));
    let mut a = connect(addr, 100);
    assert!(wait_until(|| server.is_connected(&a.key)));
    // A SendPacket header announcing more than key + 64 KiB.
    let len = (32 + MAX_PACKET_SIZE + 1) as u32;
    let mut h = vec![u8::from(FrameType::SendPacket)];
    h.extend_from_slice(&len.to_be_bytes());
    a.s.write_all(&h).unwrap();
    let mut rest = Vec::new();
    assert_eq!(a.s.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(wait_until(|| !server.is_connected(&a.key)));
}

#[test]
fn duplicate_connections_last_writer_wins_and_no_peer_gone() {
    let (addr, server) = start(DerpServer::new([11; 32]));
    let mut b1 = connect(addr, 110);
    let mut b2 = connect(addr, 110); // same node key, reconnect race
    let mut a = connect(addr, 111);
    assert!(wait_until(|| server.connected_keys().len() == 2));

    // The most recent connection is active.
    a.send(Repr::SendPacket {
        dst: b1.key,
        packet: b"to newest",
    });
    let f = b2.recv().unwrap();
    assert!(
        matches!(Repr::parse_bytes(&f).unwrap().0, Repr::RecvPacket { packet, .. } if packet == b"to newest")
    );

    // b1 speaks, so it becomes the active one.
    b1.send(Repr::SendPacket {
        dst: a.key,
        packet: b"hi",
    });
    a.recv().unwrap();
    a.send(Repr::SendPacket {
        dst: b1.key,
        packet: b"to writer",
    });
    let f = b1.recv().unwrap();
    assert!(
        matches!(Repr::parse_bytes(&f).unwrap().0, Repr::RecvPacket { packet, .. } if packet == b"to writer")
    );

    // Closing one of the two says nothing to a; the key stays connected.
    drop(b2);
    std::thread::sleep(Duration::from_millis(200));
    assert!(server.is_connected(&b1.key));
    a.send(Repr::Ping { data: [3; 8] });
    let f = a.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::Pong { data: [3; 8] }
    );
}

#[test]
fn mesh_forward_packet_is_delivered_with_original_source() {
    let mesh = [0x24u8; 32];
    let mesh_hex: String = mesh.iter().map(|b| format!("{b:02x}")).collect();
    let (addr, server) = start(DerpServer::new([12; 32]).with_mesh_key(mesh));
    let (mut m, first) = connect_raw(addr, 120, Some(&mesh_hex));
    assert!(first.is_ok());
    let mut b = connect(addr, 121);
    assert!(wait_until(|| server.is_connected(&b.key)));
    let far_src = [0x77; 32];
    m.send(Repr::ForwardPacket {
        src: far_src,
        dst: b.key,
        packet: b"via mesh",
    });
    let f = b.recv().unwrap();
    assert_eq!(
        Repr::parse_bytes(&f).unwrap().0,
        Repr::RecvPacket {
            src: far_src,
            packet: b"via mesh"
        }
    );
    // A plain client may not forward.
    let far = b.key;
    b.send(Repr::ForwardPacket {
        src: far_src,
        dst: far,
        packet: b"spoof",
    });
    let mut rest = Vec::new();
    assert_eq!(b.s.read_to_end(&mut rest).unwrap_or(0), 0);
}

/// Connect the library's async client over a Unix socket pair.
async fn async_client(
    server: &Arc<DerpServer>,
    seed: u8,
) -> io::Result<tinyscale::derp::DerpClient<async_io::Async<UnixStream>>> {
    let (ours, theirs) = UnixStream::pair()?;
    let s = server.clone();
    smol::spawn(async move {
        let theirs = async_io::Async::new(theirs).unwrap();
        let _ = serve_derp_conn(theirs, s).await;
    })
    .detach();
    tinyscale::derp::DerpClient::connect(
        async_io::Async::new(ours)?,
        [seed; 32],
        tinyscale::derp::ClientOptions::default(),
    )
    .await
}

#[test]
fn library_client_round_trip_and_refusal() {
    let allowed = SecretKey::from_bytes([130; 32]).public_key().to_bytes();
    let allowed2 = SecretKey::from_bytes([131; 32]).public_key().to_bytes();
    let server = Arc::new(
        DerpServer::new([13; 32])
            .with_verify(Arc::new(move |k: &Key| *k == allowed || *k == allowed2)),
    );
    smol::block_on(async {
        let mut a = async_client(&server, 130).await.unwrap();
        let mut b = async_client(&server, 131).await.unwrap();
        assert_eq!(a.server_key(), server.public_key());
        a.send_packet(&b.public_key(), b"over the library client")
            .await
            .unwrap();
        let (src, pkt) = b.recv_packet().await.unwrap();
        assert_eq!(src, a.public_key());
        assert_eq!(pkt, b"over the library client");
        let err = async_client(&server, 132).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    });
}

/// Relay throughput with the library client on both ends: N packets of
/// 1,280 bytes from A to B through the server. Run with
/// `cargo test --release --test derp_relay -- --ignored --nocapture`.
#[test]
#[ignore]
fn relay_throughput() {
    const N: usize = 200_000;
    const SIZE: usize = 1280;
    let server = Arc::new(DerpServer::new([14; 32]));
    smol::block_on(async {
        let mut a = async_client(&server, 140).await.unwrap();
        let mut b = async_client(&server, 141).await.unwrap();
        let dst = b.public_key();
        let pkt = vec![0x5A; SIZE];
        let started = Instant::now();
        let sender = async {
            for _ in 0..N {
                a.send_packet(&dst, &pkt).await.unwrap();
            }
        };
        let receiver = async {
            let mut got = 0usize;
            // Drops are allowed (the queue sheds load); stop when the
            // sender is done and the pipe has gone quiet.
            loop {
                let r = futures_lite::future::or(async { Some(b.recv_packet().await) }, async {
                    async_io::Timer::after(Duration::from_millis(500)).await;
                    None
                })
                .await;
                match r {
                    Some(Ok(_)) => got += 1,
                    _ => break,
                }
            }
            got
        };
        let ((), got) = futures_lite::future::zip(sender, receiver).await;
        let secs = (started.elapsed() - Duration::from_millis(500)).as_secs_f64();
        eprintln!(
            "relay_throughput: sent {N}, delivered {got} ({:.1}%), {:.0} pkt/s, {:.1} MB/s delivered",
            100.0 * got as f64 / N as f64,
            got as f64 / secs,
            (got * SIZE) as f64 / secs / 1e6
        );
    });
}

#[test]
fn shutdown_sends_restarting_and_refuses_newcomers() {
    let (addr, server) = start(DerpServer::new([15; 32]));
    let mut a = connect(addr, 150);
    let mut b = connect(addr, 151);
    assert!(wait_until(|| server.connected_keys().len() == 2));
    server.shutdown(Duration::from_millis(1500), Duration::from_secs(30));
    for c in [&mut a, &mut b] {
        let f = c.recv().unwrap();
        assert_eq!(
            Repr::parse_bytes(&f).unwrap().0,
            Repr::Restarting {
                reconnect_in_ms: 1500,
                try_for_ms: 30_000
            }
        );
        let mut rest = Vec::new();
        assert_eq!(c.s.read_to_end(&mut rest).unwrap_or(0), 0);
    }
    assert!(wait_until(|| server.connected_keys().is_empty()));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
}

#[test]
fn pong_overtakes_queued_data() {
    let server = Arc::new(DerpServer::new([16; 32]));
    let mut a = connect_unix(&server, 160);
    let mut b = connect_unix(&server, 161);
    // Fill B's data queue (and the socket) while B is not reading.
    let pkt = vec![0x11; 60_000];
    for _ in 0..100 {
        a.send(Repr::SendPacket {
            dst: b.key,
            packet: &pkt,
        });
    }
    // Make sure the relay has taken all of A's frames before B pings.
    a.send(Repr::Ping { data: [0xA; 8] });
    loop {
        let f = a.recv().unwrap();
        if Repr::parse_bytes(&f).unwrap().0 == (Repr::Pong { data: [0xA; 8] }) {
            break;
        }
    }
    b.send(Repr::Ping { data: [0xB; 8] });
    std::thread::sleep(Duration::from_millis(100));
    let mut data_before_pong = 0;
    loop {
        let f = b.recv().unwrap();
        match Repr::parse_bytes(&f).unwrap().0 {
            Repr::RecvPacket { .. } => data_before_pong += 1,
            Repr::Pong { data } => {
                assert_eq!(data, [0xB; 8]);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Only what was already in the socket or mid-write, not the 32 queued.
    assert!(
        data_before_pong < 16,
        "{data_before_pong} data frames came first"
    );
}

/// Tiny deterministic PRNG (xorshift64*), so garbage is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn garbage_after_handshake_never_hurts_the_relay() {
    // smol's executor threads survive a panicking task, so count panics
    // raised in library code (tests' own asserts live in tests/).
    static LIB_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info
            .location()
            .is_some_and(|l| l.file().starts_with("src/"))
        {
            LIB_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        default_hook(info);
    }));
    let server = Arc::new(DerpServer::new([17; 32]));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..100u32 {
        let mut c = connect_unix(&server, 170);
        c.s.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        // Mostly well-framed frames of random types with random payloads,
        // sometimes raw noise, sometimes lies about the length.
        let mut bytes = Vec::new();
        for _ in 0..(rng.next() % 8 + 1) {
            let t = (rng.next() % 0x18) as u8;
            let len = (rng.next() % 96) as usize;
            let claimed = if rng.next() % 10 == 0 {
                rng.next() as u32
            } else {
                len as u32
            };
            bytes.push(t);
            bytes.extend_from_slice(&claimed.to_be_bytes());
            bytes.extend((0..len).map(|_| rng.next() as u8));
        }
        let _ = c.s.write_all(&bytes);
        // Drain whatever comes back until the server goes quiet or hangs up.
        let mut sink = [0u8; 4096];
        while let Ok(n) = c.s.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        assert!(round < 100);
    }
    // The relay still works for well-behaved clients and has no leftovers.
    std::thread::sleep(Duration::from_millis(200));
    let mut a = connect_unix(&server, 171);
    let mut b = connect_unix(&server, 172);
    a.send(Repr::SendPacket {
        dst: b.key,
        packet: b"after the storm",
    });
    let f = b.recv().unwrap();
    assert!(
        matches!(Repr::parse_bytes(&f).unwrap().0, Repr::RecvPacket { packet, .. } if packet == b"after the storm")
    );
}

/// Server-side memory per idle connection: N clients over Unix socket
/// pairs, handshaken with blocking std code (so the clients themselves cost
/// next to nothing), RSS measured before and after. Run with
/// `cargo test --release --test derp_relay -- --ignored --nocapture`.
#[test]
#[ignore]
fn memory_per_connection() {
    fn rss_kb() -> u64 {
        let s = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4
    }
    const N: usize = 400;
    let server = Arc::new(DerpServer::new([18; 32]));
    // Warm up allocator and executor.
    let warm: Vec<_> = (0..8).map(|i| connect_unix(&server, i as u8)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kb();
    let clients: Vec<_> = (0..N)
        .map(|i| connect_unix(&server, (i % 250) as u8))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kb();
    eprintln!(
        "memory_per_connection: {N} idle connections, RSS +{} KiB, {:.1} KiB each (client sockets included)",
        after - before,
        (after - before) as f64 / N as f64
    );
    drop(clients);
    drop(warm);
}
