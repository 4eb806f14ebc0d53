//! `tinyscale debug smoke`: the shortest end-to-end proof that a server
//! works, over the real protocol. One node joins and checks its first map;
//! a second joins and the first sees it arrive as a delta; a lite endpoint
//! update of the second reaches the first as a patch.

use crate::client::{self, netmap::NetMap, MapStream, Node};
use argh::FromArgs;
use futures_lite::FutureExt;
use serde_json::Value;
use std::io;
use std::time::{Duration, Instant};

/// Join two synthetic nodes and check maps, deltas and patches (exit 0/1).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "smoke")]
pub struct SmokeCmd {
    /// control server URL, e.g. http://127.0.0.1:8080
    #[argh(option)]
    pub server: String,
    /// pre-auth key for both nodes (reusable)
    #[argh(option)]
    pub authkey: String,
    /// overall time limit in seconds (default 30)
    #[argh(option, default = "30")]
    pub timeout: u64,
}

struct Checks {
    start: Instant,
    failed: bool,
}

impl Checks {
    fn ok(&self, what: &str) {
        println!("ok   {:>6.3}s  {what}", self.start.elapsed().as_secs_f64());
    }
    fn check(&mut self, cond: bool, what: &str, detail: impl FnOnce() -> String) -> bool {
        if cond {
            self.ok(what);
        } else {
            println!(
                "FAIL {:>6.3}s  {what}: {}",
                self.start.elapsed().as_secs_f64(),
                detail()
            );
            self.failed = true;
        }
        cond
    }
}

pub fn run(cmd: SmokeCmd) -> i32 {
    let addr = match super::parse_server(&cmd.server) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Error: {e}");
            return 2;
        }
    };
    let mut c = Checks {
        start: Instant::now(),
        failed: false,
    };
    let limit = Duration::from_secs(cmd.timeout.max(1));
    let result = smol::block_on(
        async { smoke(addr, &cmd.authkey, &mut c).await.map(|_| ()) }.or(async {
            async_io::Timer::after(limit).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {} s", limit.as_secs()),
            ))
        }),
    );
    match result {
        Ok(()) if !c.failed => {
            println!(
                "smoke: all checks passed in {:.3} s",
                c.start.elapsed().as_secs_f64()
            );
            0
        }
        Ok(()) => {
            println!("smoke: FAILED");
            1
        }
        Err(e) => {
            println!("FAIL {:>6.3}s  {e}", c.start.elapsed().as_secs_f64());
            println!("smoke: FAILED");
            1
        }
    }
}

fn ctx(what: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

async fn join(
    addr: std::net::SocketAddr,
    server_pub: &[u8; 32],
    node: &Node,
    key: &str,
    c: &mut Checks,
) -> io::Result<(client::Conn, MapStream, NetMap)> {
    let mut conn = client::connect(addr, server_pub, &node.machine_private)
        .await
        .map_err(ctx("/ts2021 Noise handshake"))?;
    c.ok(&format!(
        "{}: Noise IK handshake + HTTP/2 over /ts2021",
        node.hostname
    ));
    let r = conn
        .register(&node.register_request(Some(key)))
        .await
        .map_err(ctx("register"))?;
    if !r.error.is_empty() {
        return Err(io::Error::other(format!(
            "register: server said {:?}",
            r.error
        )));
    }
    if !r.auth_url.is_empty() {
        return Err(io::Error::other(format!(
            "register: server wants interactive login at {}",
            r.auth_url
        )));
    }
    c.check(
        r.machine_authorized,
        &format!("{}: registered, MachineAuthorized", node.hostname),
        || "register response has MachineAuthorized false".into(),
    );
    let mut stream = conn
        .map(&node.map_request(true, &["198.51.100.1:41641"]))
        .await
        .map_err(ctx("map"))?;
    let first = stream
        .next()
        .await
        .map_err(ctx("first map"))?
        .ok_or_else(|| io::Error::other("map stream ended before the first message"))?;
    let mut nm = NetMap::default();
    nm.apply(&first);
    c.ok(&format!(
        "{}: streaming map open, first message {} bytes on the wire",
        node.hostname, stream.bytes
    ));
    Ok((conn, stream, nm))
}

/// Reads until `pred` holds for the node's netmap.
async fn until(
    stream: &mut MapStream,
    nm: &mut NetMap,
    pred: impl Fn(&NetMap) -> bool,
) -> io::Result<Vec<Value>> {
    let mut seen = Vec::new();
    while !pred(nm) {
        let m = stream
            .next()
            .await?
            .ok_or_else(|| io::Error::other("map stream ended"))?;
        nm.apply(&m);
        seen.push(m);
    }
    Ok(seen)
}

async fn smoke(addr: std::net::SocketAddr, key: &str, c: &mut Checks) -> io::Result<()> {
    let tag = crate::keys::to_hex(&crate::keys::random32()[..3]);
    let server_pub = client::fetch_key(addr).await.map_err(ctx("GET /key"))?;
    c.ok(&format!(
        "GET /key: server key {}",
        crate::keys::MachineKey(server_pub)
    ));

    let a = Node::new(&format!("smoke-a-{tag}"));
    let b = Node::new(&format!("smoke-b-{tag}"));
    let (_ca, mut sa, mut nma) = join(addr, &server_pub, &a, key, c).await?;
    let me = &nma.self_node;
    let addrs: Vec<&str> = me["Addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    c.check(
        !addrs.is_empty(),
        &format!("first map: self node has addresses {addrs:?}"),
        || format!("self node without Addresses: {me}"),
    );
    c.check(
        me["MachineAuthorized"] == true,
        "first map: self node MachineAuthorized",
        || format!("MachineAuthorized is {}", me["MachineAuthorized"]),
    );
    c.check(
        me["Key"] == a.node_key().to_string(),
        "first map: self node carries our node key",
        || format!("Key is {}", me["Key"]),
    );
    let regions = nma.derp_map["Regions"]
        .as_object()
        .map(|r| r.len())
        .unwrap_or(0);
    c.check(
        regions > 0,
        &format!("first map: DERP map with {regions} region(s)"),
        || format!("DERPMap: {}", nma.derp_map),
    );
    let rules = nma.packet_filter.as_array().map(|r| r.len());
    c.check(
        rules.is_some(),
        &format!(
            "first map: packet filter with {} rule(s)",
            rules.unwrap_or(0)
        ),
        || {
            format!(
                "no packet filter (PacketFilter/PacketFilters.base): {}",
                nma.packet_filter
            )
        },
    );

    let (mut cb, _sb, nmb) = join(addr, &server_pub, &b, key, c).await?;
    let b_id = nmb.self_node["ID"].as_u64().unwrap_or(0);
    c.check(
        nmb.peers
            .values()
            .any(|p| p["Key"] == a.node_key().to_string()),
        "second node's first map lists the first as a peer",
        || {
            format!(
                "{} peer(s), none with the first node's key",
                nmb.peers.len()
            )
        },
    );
    // The peer arrives when it registers; its disco key and endpoints
    // follow when its map poll starts: wait for both.
    let disco = b.disco_key().to_string();
    let seen = until(&mut sa, &mut nma, |n| {
        n.peers
            .get(&b_id)
            .is_some_and(|p| p["DiscoKey"] == disco.as_str())
    })
    .await
    .map_err(ctx(
        "waiting for the second node as a peer with its disco key",
    ))?;
    let as_delta = seen.iter().any(|m| {
        m["PeersChanged"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["ID"].as_u64() == Some(b_id)))
    });
    c.check(
        as_delta,
        "first node sees the second as a peer (PeersChanged delta)",
        || "the peer arrived, but in a full map rather than a delta".into(),
    );
    let peer = &nma.peers[&b_id];
    c.check(
        peer["Key"] == b.node_key().to_string(),
        "peer has the second node's node key and disco key",
        || format!("peer Key {} DiscoKey {}", peer["Key"], peer["DiscoKey"]),
    );

    let ep = "203.0.113.77:41641";
    let lite = b.map_request(false, &[ep]);
    let (status, _) = cb
        .post_json(
            "/machine/map",
            serde_json::to_vec(&lite).map_err(io::Error::other)?,
        )
        .await
        .map_err(ctx("lite update"))?;
    c.check(
        status == 200,
        "second node's lite endpoint update accepted",
        || format!("HTTP {status}"),
    );
    let has_ep = |n: &NetMap| {
        n.peers.get(&b_id).is_some_and(|p| {
            p["Endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e == ep))
        })
    };
    let seen = until(&mut sa, &mut nma, has_ep)
        .await
        .map_err(ctx("waiting for the endpoint update"))?;
    let as_patch = seen.iter().any(|m| {
        m["PeersChangedPatch"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["NodeID"].as_u64() == Some(b_id)))
    });
    c.check(
        as_patch,
        &format!("first node sees the new endpoint {ep} as a PeersChangedPatch"),
        || "the endpoint arrived, but as a full PeersChanged node rather than a patch".into(),
    );
    Ok(())
}
