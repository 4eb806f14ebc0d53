//! A subnet router for tests/ui/drive-uis.sh: a protocol-level node (tinyscale::client, the
//! same one tests/e2e_routes_dns.rs uses as its routers, since tsnet, the real client the
//! harness runs, cannot advertise routes) that registers with a pre-auth key, advertises ROUTE in
//! Hostinfo.RoutableIPs and keeps its map stream open (so it shows online) until stdin closes
//! or MAX_SECS pass. Prints `up` once its first map arrived.
//!
//!     cargo run --example ui_router -- 127.0.0.1:8080 KEY HOSTNAME 10.77.0.0/24 [MAX_SECS]

use futures_lite::FutureExt;
use std::net::SocketAddr;
use std::time::Duration;
use tinyscale::client::{self, Node};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: ui_router HOST:PORT AUTHKEY HOSTNAME ROUTE [MAX_SECS]");
        std::process::exit(2);
    }
    let addr: SocketAddr = match args[0].parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bad address {}: {e}", args[0]);
            std::process::exit(2);
        }
    };
    let max_secs: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1800);
    let node = Node::new(&args[2]);
    let routes = [args[3].as_str()];
    // stdin closing (the script ends) stops the node
    let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
        let _ = stop_tx.send_blocking(());
    });
    let res: Result<(), String> = smol::block_on(async {
        let (_conn, mut stream, _first) = client::join(addr, &node, &args[1], &routes).await?;
        println!("up");
        loop {
            let next = async { Some(stream.next().await) }
                .or(async {
                    let _ = stop_rx.recv().await;
                    None
                })
                .or(async {
                    async_io::Timer::after(Duration::from_secs(max_secs)).await;
                    None
                })
                .await;
            match next {
                Some(Ok(Some(_))) => continue,
                Some(Err(err)) => return Err(format!("map stream: {err}")),
                _ => return Ok(()),
            }
        }
    });
    if let Err(why) = res {
        eprintln!("ui_router: {why}");
        std::process::exit(1);
    }
}
