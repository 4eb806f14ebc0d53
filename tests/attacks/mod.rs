//! Attack helpers shared by tests/hostile.rs and tests/e2e_hostile.rs.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Opens up to `n` connections to `addr`, each sending a request head that
/// announces a 60,000-byte body and then one byte of it. Connections the
/// server refused at accept are opened by the kernel first and closed by
/// the server right after, so they count here too.
pub fn open_slow_requests(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut socks = Vec::new();
    for _ in 0..n {
        if let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\nx");
            socks.push(c);
        }
    }
    socks
}

/// One more body byte on every connection (errors ignored: closed ones).
pub fn trickle(socks: &mut [TcpStream]) {
    for c in socks.iter_mut() {
        let _ = c.write_all(b"x");
    }
}

/// Is `s` still open at the server's end? (No EOF or error pending.)
pub fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}
