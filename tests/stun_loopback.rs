//! The STUN responder over real loopback UDP sockets.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use tinyscale::derp::stun::spawn_stun;
use tinyscale::wire::stun::{Packet, Repr};

fn probe(server: SocketAddr, client: &UdpSocket, txid: [u8; 12]) -> Option<Repr> {
    let req = Repr::BindingRequest {
        transaction_id: txid,
        tailnode: true,
    }
    .to_vec();
    client.send_to(&req, server).expect("send");
    let mut buf = [0u8; 1500];
    let (n, from) = client.recv_from(&mut buf).ok()?;
    assert_eq!(from, server, "reply must come from the probed socket");
    Repr::parse(&Packet::new_checked(&buf[..n]).ok()?).ok()
}

#[test]
fn ipv4_mapped_address_is_sender() {
    let server = spawn_stun("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let txid = *b"tinyscale-tx";
    let got = probe(server.local_addr(), &client, txid).expect("a response");
    assert_eq!(
        got,
        Repr::BindingSuccess {
            transaction_id: txid,
            mapped: client.local_addr().unwrap(),
        }
    );
}

#[test]
fn ipv6_mapped_address_is_sender() {
    let Ok(client) = UdpSocket::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback; skipping");
        return;
    };
    let server = spawn_stun("[::1]:0".parse().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let txid = [0xA5; 12];
    let got = probe(server.local_addr(), &client, txid).expect("a response");
    assert_eq!(
        got,
        Repr::BindingSuccess {
            transaction_id: txid,
            mapped: client.local_addr().unwrap(),
        }
    );
}

#[test]
fn garbage_is_ignored_and_server_keeps_answering() {
    let server = spawn_stun("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for junk in [&b""[..], b"hello", &[0u8; 20], &[0xff; 2000]] {
        client.send_to(junk, server.local_addr()).unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(
        client.recv_from(&mut buf).is_err(),
        "junk must get no reply"
    );
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let txid = [7; 12];
    assert!(matches!(
        probe(server.local_addr(), &client, txid),
        Some(Repr::BindingSuccess { transaction_id, .. }) if transaction_id == txid
    ));
}

#[test]
fn dual_stack_socket_answers_ipv4_clients_with_ipv4() {
    let Ok(server) = spawn_stun("[::]:0".parse().unwrap()) else {
        eprintln!("no IPv6; skipping");
        return;
    };
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let target: SocketAddr = format!("127.0.0.1:{}", server.local_addr().port())
        .parse()
        .unwrap();
    let req = Repr::BindingRequest {
        transaction_id: [3; 12],
        tailnode: true,
    }
    .to_vec();
    client.send_to(&req, target).unwrap();
    let mut buf = [0u8; 128];
    let Ok((n, _)) = client.recv_from(&mut buf) else {
        eprintln!("IPV6_V6ONLY socket; skipping");
        return;
    };
    assert_eq!(
        Repr::parse(&Packet::new_checked(&buf[..n]).unwrap()),
        Ok(Repr::BindingSuccess {
            transaction_id: [3; 12],
            mapped: client.local_addr().unwrap(),
        })
    );
}
