//! `tinyscale debug`: diagnostics that speak the real protocol to a running
//! server through the protocol-level client (`crate::client`).
//!
//! - `debug smoke`: two synthetic nodes join, see each other and a lite
//!   endpoint update; exit 0/1 (the cross-build smoke test under qemu).
//! - `debug loadgen`: N synthetic nodes against a server in another
//!   process, with its RSS and CPU read from /proc (benches/loadgen.sh).

#[cfg(feature = "loadgen")]
pub mod loadgen;
#[cfg(not(feature = "loadgen"))]
pub mod loadgen {
    //! Stand-in when built without the `loadgen` feature (the default:
    //! routers never run it, and it costs binary size).
    use argh::FromArgs;

    /// Load generator: not in this build (cargo build --features loadgen).
    #[derive(FromArgs, Debug)]
    #[argh(subcommand, name = "loadgen")]
    pub struct LoadgenCmd {}

    pub fn run(_: LoadgenCmd) -> i32 {
        eprintln!("tinyscale was built without the load generator: cargo build --release --features loadgen");
        2
    }
}
pub use crate::procfs;
pub mod smoke;

use argh::FromArgs;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

/// Diagnostics: a protocol smoke test and a load generator.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "debug")]
pub struct DebugCmd {
    #[argh(subcommand)]
    pub cmd: DebugSub,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum DebugSub {
    Smoke(smoke::SmokeCmd),
    Loadgen(loadgen::LoadgenCmd),
}

/// Runs a `debug` subcommand; returns the process exit status.
pub fn run(cmd: DebugCmd) -> i32 {
    match cmd.cmd {
        DebugSub::Smoke(c) => smoke::run(c),
        DebugSub::Loadgen(c) => loadgen::run(c),
    }
}

/// `http://host:port[/...]` (or `host:port`) → a socket address. The
/// protocol-level client speaks plain HTTP only.
pub fn parse_server(url: &str) -> io::Result<SocketAddr> {
    let bad = |m: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--server {url:?}: {m}"),
        )
    };
    if url.starts_with("https://") {
        return Err(bad(
            "https is not supported by the debug client; use the plain http listen_addr",
        ));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let hostport = rest.split('/').next().unwrap_or(rest);
    if hostport.is_empty() {
        return Err(bad("no host"));
    }
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| bad(&e.to_string()))?
        .next()
        .ok_or_else(|| bad("does not resolve"))
}

#[cfg(test)]
mod tests {
    use super::parse_server;

    #[test]
    fn server_urls() {
        assert_eq!(parse_server("http://127.0.0.1:8080").unwrap().port(), 8080);
        assert_eq!(parse_server("http://127.0.0.1:8080/").unwrap().port(), 8080);
        assert_eq!(parse_server("127.0.0.1:9").unwrap().port(), 9);
        assert_eq!(parse_server("http://127.0.0.1").unwrap().port(), 80);
        assert_eq!(parse_server("http://[::1]:7").unwrap().port(), 7);
        assert!(parse_server("https://127.0.0.1:443").is_err());
        assert!(parse_server("http://").is_err());
    }
}
