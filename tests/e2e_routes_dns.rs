//! Subnet routes, HA failover, exit nodes and MagicDNS as REAL Tailscale clients see them
//! (tests/realclient/README.md; the common harness in tests/realclient_common).
//!
//! One server and four real nodes for the whole file: a (serve), b (proxy to `a`, the short
//! name; `TS_DEBUG_MAP=1`, the observer), c (proxy to `a.<base_domain>`, the FQDN), d (proxy to
//! an extra record's name, started once the record exists). tsnet cannot route subnets or select
//! exit nodes, so protocol-level clients (`tinyscale::client`) play the routers, joined to the
//! same server process over its control URL, and b's netmap is the judge, read two ways: the
//! MapResponses b dumped (`TS_DEBUG_MAP=1`, applied in order: AllowedIPs, PrimaryRoutes,
//! DNSConfig as received) and b's own log of what it made of them (`[v1] netmap diff:` peer lines
//! with the AllowedIPs the client holds; `dns: Set: {…}`, the DNS configuration the client
//! computed from the netmap and installed).
//!
//!  1. MagicDNS: b reaches a by short name, c by FQDN; b's DNSConfig carries the global
//!     nameserver, the split route, the search domains and the extra records (inline and from the
//!     records file), and its `dns: Set:` line shows them installed (hosts table: 3 nodes + 3
//!     records), its `dns: Resolvercfg:` line its resolver forwarding `.` to the global and the
//!     split domain to the split nameserver and answering the base domain itself. A record naming a, written to the records file, reaches b without a restart, and
//!     d reaches a by that name.
//!  2. Routes: router r1 advertises 10.77.0.0/24 (list-routes: available, not approved): not in
//!     b's netmap until `nodes approve-routes`, then in r1's AllowedIPs and PrimaryRoutes.
//!  3. HA: r2 advertises the same prefix, approved, standby (not in its AllowedIPs, not serving
//!     per list-routes); r1's connection is dropped; the prefix moves to r2 in b's netmap (time
//!     printed); r1 comes back and the prefix stays on r2.
//!  4. Exit node: x advertises 0.0.0.0/0 + ::/0; b sees both in x's AllowedIPs only after
//!     approval, never in PrimaryRoutes.
//!
//! ~20 s. Needs root; skips with a reason otherwise (fails under CI=true).

#[macro_use]
mod realclient_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use realclient_common::*;
use serde_json::Value;
use tinyscale::client::{self, netmap::NetMap, Node};

const PREFIX: &str = "tsr"; // netns tsr-a, tsr-b, tsr-c; bridge tsrbr0

const BASE: &str = "tsr.test";
const GLOBAL_NS: &str = "192.0.2.53";
const SPLIT_DOMAIN: &str = "corp.example";
const SPLIT_NS: &str = "192.0.2.54";
const SEARCH: [&str; 2] = ["corp.example", "lab.example"];
/// Inline `dns.extra_records`: (name, type, value).
const INLINE_RECORDS: [(&str, &str, &str); 2] = [
    ("nas.tsr.test", "A", "100.100.9.9"),
    ("wiki.corp.example", "AAAA", "fd7a:115c:a1e0::99"),
];
/// `dns.extra_records_path` at start.
const FILE_RECORD: (&str, &str, &str) = ("grafana.tsr.test", "A", "100.100.9.10");
/// Added to the file once a's address is known: a name for a, outside the MagicDNS names.
const WEB: &str = "web.lab.example";

const SUBNET: &str = "10.77.0.0/24";
const EXIT: [&str; 2] = ["0.0.0.0/0", "::/0"];

fn dns_yaml(records_file: &Path) -> String {
    let mut y = format!(
        "  magic_dns: true\n  base_domain: {BASE}\n  nameservers:\n    global: [{GLOBAL_NS}]\n    split:\n      {SPLIT_DOMAIN}: [{SPLIT_NS}]\n  search_domains: [{}]\n  extra_records:\n",
        SEARCH.join(", ")
    );
    for (n, t, v) in INLINE_RECORDS {
        y += &format!("    - name: {n}\n      type: {t}\n      value: \"{v}\"\n");
    }
    y += &format!("  extra_records_path: {}\n", records_file.display());
    y
}

fn records_json(recs: &[(&str, &str, &str)]) -> String {
    let v: Vec<Value> = recs
        .iter()
        .map(|(n, t, v)| serde_json::json!({"name": n, "type": t, "value": v}))
        .collect();
    serde_json::to_string(&v).unwrap()
}

/// A protocol-level client on its own thread: registered, holding a streaming map (read and
/// discarded) until stopped; stopping drops its connection, so the server sees it go offline.
struct ProtoNode {
    name: &'static str,
    id: u64,
    ip4: String,
    stop: Option<smol::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProtoNode {
    /// Registers `keys` (hostname `name`) with `key`, advertising `routes` in Hostinfo.RoutableIPs,
    /// and opens its map stream; returns once the first map arrived (bounded).
    fn join(addr: SocketAddr, name: &'static str, keys: &Node, key: &str, routes: &[&str]) -> Self {
        let node = Node {
            machine_private: keys.machine_private,
            node_private: keys.node_private,
            disco_private: keys.disco_private,
            hostname: keys.hostname.clone(),
        };
        let key = key.to_owned();
        let routes: Vec<String> = routes.iter().map(|s| s.to_string()).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Value, String>>();
        let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            use futures_lite::FutureExt;
            smol::block_on(async move {
                let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
                let joined = client::join(addr, &node, &key, &routes)
                    .or(async {
                        async_io::Timer::after(Duration::from_secs(30)).await;
                        Err("join timed out after 30 s".to_owned())
                    })
                    .await;
                let (conn, mut stream, first) = match joined {
                    Ok(j) => j,
                    Err(why) => {
                        let _ = ready_tx.send(Err(why));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(first));
                loop {
                    let next = async { Some(stream.next().await) }
                        .or(async {
                            let _ = stop_rx.recv().await;
                            None
                        })
                        .await;
                    match next {
                        Some(Ok(Some(_))) => continue,
                        _ => break,
                    }
                }
                drop(stream);
                drop(conn);
            });
        });
        let first = ready_rx
            .recv_timeout(Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("protocol client {name}: no answer from its thread: {e}"))
            .unwrap_or_else(|e| panic!("protocol client {name}: {e}"));
        let mut nm = NetMap::default();
        nm.apply(&first);
        let id = nm.self_node["ID"].as_u64().expect("self ID");
        let ip4 = nm.self_node["Addresses"][0]
            .as_str()
            .and_then(|a| a.strip_suffix("/32"))
            .expect("self IPv4 address")
            .to_owned();
        ProtoNode {
            name,
            id,
            ip4,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Drops the connection (no logout): the server sees the map stream end.
    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.try_send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            say!(
                "protocol client {} (id {}) disconnected",
                self.name,
                self.id
            );
        }
    }
}

impl Drop for ProtoNode {
    fn drop(&mut self) {
        self.stop();
    }
}

fn has(list: &Value, item: &str) -> bool {
    list.as_array()
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(item)))
}

/// Peer `id`'s (AllowedIPs has `pfx`, PrimaryRoutes has `pfx`) in netmap `nm`; None if absent.
fn route_state(nm: &NetMap, id: u64, pfx: &str) -> Option<(bool, bool)> {
    let p = nm.peers.get(&id)?;
    Some((has(&p["AllowedIPs"], pfx), has(&p["PrimaryRoutes"], pfx)))
}

fn show_peer(nm: &NetMap, id: u64) -> String {
    match nm.peers.get(&id) {
        Some(p) => format!(
            "AllowedIPs={} PrimaryRoutes={} Online={}",
            p["AllowedIPs"], p["PrimaryRoutes"], p["Online"]
        ),
        None => "absent".into(),
    }
}

/// The AllowedIPs the client itself holds for the peer whose first address is `ip4`: from the
/// newest peer line naming it in b's `netmap diff` / netmap log lines (`printPeerConcise`:
/// ` [key] [disco] D999 100.64.0.4 fd7a:…/128 10.77.0.0/24 : endpoints`). None if the client
/// has no such peer (never listed, or its newest line is a removal).
fn client_allowed_ips(log: &Path, ip4: &str) -> Option<Vec<String>> {
    let mut newest: Option<(bool, Vec<String>)> = None;
    for msg in log_msgs(log, 0) {
        if !msg.contains(ip4) {
            continue;
        }
        for line in msg.lines() {
            let (removed, body) = match line.as_bytes().first() {
                Some(b'-') => (true, &line[1..]),
                Some(b'+') => (false, &line[1..]),
                _ => (false, line),
            };
            let before = body.split(" : ").next().unwrap_or("");
            let toks: Vec<&str> = before.split_whitespace().collect();
            let Some(at) = toks.iter().position(|t| *t == ip4) else {
                continue;
            };
            // the peer line's first AllowedIP follows its DERP token (`D999`)
            if at == 0 || !toks[at - 1].starts_with('D') {
                continue;
            }
            newest = Some((removed, toks[at..].iter().map(|s| s.to_string()).collect()));
        }
    }
    match newest {
        Some((false, ips)) => Some(ips),
        _ => None,
    }
}

/// The newest `dns: Set: {…}` (the DNS config the client installed) in the node's log.
fn dns_set_line(log: &Path) -> Option<String> {
    log_msgs(log, 0).into_iter().rev().find_map(|m| {
        let at = m.find("Set: {DefaultResolvers:")?;
        Some(m[at..].trim().to_owned())
    })
}

/// The newest `dns: Resolvercfg: {…}`: what the client's own resolver (quad-100) forwards where
/// (`.` = everything else) and which domains it answers itself (`LocalDomains`).
fn resolver_cfg_line(log: &Path) -> Option<String> {
    log_msgs(log, 0).into_iter().rev().find_map(|m| {
        let at = m.find("Resolvercfg: {")?;
        Some(m[at..].trim().to_owned())
    })
}

/// `Hosts:N` of a `dns: Set:` line.
fn hosts_count(set_line: &str) -> Option<usize> {
    let rest = set_line.split("Hosts:").nth(1)?;
    rest.trim_end_matches('}').trim().parse().ok()
}

/// `nodes approve-routes -i ID -r ROUTES -o json`: the node's `subnetRoutes` in the answer
/// (what it serves: the HA primary's subnets, approved exit routes).
fn approve(h: &Harness, id: u64, routes: &str) -> Vec<String> {
    let n = h.cli_json(&[
        "nodes",
        "approve-routes",
        "-i",
        &id.to_string(),
        "-r",
        routes,
        "-o",
        "json",
    ]);
    assert_eq!(
        n["approved_routes"].as_array().map(Vec::len),
        Some(routes.split(',').count()),
        "{n}"
    );
    serde_json::from_value(n["subnet_routes"].clone()).unwrap_or_default()
}

/// What `nodes list-routes -o json` says node `id` serves ("Serving (Primary)").
fn serving(h: &Harness, id: u64) -> Vec<String> {
    let list = h.cli_json(&["nodes", "list-routes", "-o", "json"]);
    list.as_array()
        .into_iter()
        .flatten()
        .find(|n| node_id(n) == id.to_string())
        .and_then(|n| serde_json::from_value(n["subnet_routes"].clone()).ok())
        .unwrap_or_default()
}

fn records_in(dns: &Value) -> Vec<(String, String, String)> {
    dns["ExtraRecords"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            (f("Name"), f("Type"), f("Value"))
        })
        .collect()
}

/// Record `rec` (name, type, value) is in `dns`, untyped: A and AAAA go out with Type ""
/// (tailcfg: "A or AAAA, depending on value"), which tsnet's dialer needs.
fn has_record(dns: &Value, rec: (&str, &str, &str)) -> bool {
    records_in(dns)
        .iter()
        .any(|(n, t, v)| n.trim_end_matches('.') == rec.0 && t.is_empty() && v == rec.2)
}

#[test]
fn routes_and_magicdns_reach_real_clients() {
    let Some(mut h) = Harness::begin(
        "routes/MagicDNS real-client e2e",
        PREFIX,
        &["a", "b", "c", "d"],
    ) else {
        return;
    };
    let t_start = Instant::now();

    let records_file = h.dir.join("extra-records.json");
    std::fs::write(&records_file, records_json(&[FILE_RECORD])).unwrap();
    let port = h.free_port();
    h.start_server(ServerOpts {
        port,
        tls_port: 0,
        derp_enabled: true,
        dns: Some(dns_yaml(&records_file)),
        ..ServerOpts::default()
    });
    let control = h.control_url();
    let addr: SocketAddr = format!("{}:{port}", h.host_ip()).parse().unwrap();
    h.cli(&["users", "create", "alice"]);
    let key = h.preauth_key("alice", &["--reusable"]);

    let t_join = Instant::now();
    let fqdn_a = format!("a.{BASE}");
    h.start_node("a", &control, &key, 41641, &["--role", "serve"]);
    h.start_node(
        "b",
        &control,
        &key,
        41642,
        &[
            "--role",
            "proxy",
            "--upstream",
            "a",
            "--env",
            "TS_DEBUG_MAP=1",
        ],
    );
    h.start_node(
        "c",
        &control,
        &key,
        41643,
        &["--role", "proxy", "--upstream", &fqdn_a],
    );
    let mut ips = Vec::new();
    for n in ["a", "b", "c"] {
        ips.push(wait_for(
            &format!("node {n} gets its tailnet IPs"),
            Duration::from_secs(60),
            || self_ips(&h.node_log_path(n)),
        ));
    }
    say!(
        "a {:?}, b {:?}, c {:?} ({:.1}s after start)",
        ips[0],
        ips[1],
        ips[2],
        t_join.elapsed().as_secs_f64()
    );
    let b_log = h.node_log_path("b");

    // 1. MagicDNS
    let (body, _) = h.fetch_via(
        "b",
        "b -> http://a/ (short name) through b's proxy",
        Duration::from_secs(90),
    );
    assert_eq!(
        body,
        format!("hello from a over the tailnet; you are {}", ips[1][0])
    );
    let (body, _) = h.fetch_via(
        "c",
        &format!("c -> http://{fqdn_a}/ (FQDN) through c's proxy"),
        Duration::from_secs(60),
    );
    assert_eq!(
        body,
        format!("hello from a over the tailnet; you are {}", ips[2][0])
    );

    let (nm, n_dumps) = h.dumped_netmap("b");
    let dns = nm.dns.clone();
    say!("b's DNSConfig (from {n_dumps} dumped MapResponses): {dns}");
    assert_eq!(nm.self_node["Name"], format!("b.{BASE}."), "b's own Name");
    assert_eq!(dns["Proxied"], true, "MagicDNS on: {dns}");
    let resolvers: Vec<&str> = dns["Resolvers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["Addr"].as_str())
        .collect();
    assert_eq!(resolvers, [GLOBAL_NS], "global nameservers: {dns}");
    let split = &dns["Routes"][format!("{SPLIT_DOMAIN}.")];
    assert_eq!(
        split,
        &serde_json::json!([{"Addr": SPLIT_NS}]),
        "split route for {SPLIT_DOMAIN}: {dns}"
    );
    let domains: Vec<&str> = dns["Domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        domains,
        [BASE, SEARCH[0], SEARCH[1]],
        "search domains: {dns}"
    );
    for rec in INLINE_RECORDS.into_iter().chain([FILE_RECORD]) {
        assert!(has_record(&dns, rec), "extra record {rec:?} missing: {dns}");
    }
    assert_eq!(records_in(&dns).len(), 3, "{dns}");

    // b's own view: the config it installed (tsnet's DNS manager logs it); its hosts table has
    // a, b, c and the 3 record names
    let set = wait_for(
        "b logs `dns: Set: {… Hosts:6}`",
        Duration::from_secs(10),
        || dns_set_line(&b_log).filter(|s| hosts_count(s) == Some(6)),
    );
    say!("b installed: {set}");
    assert!(
        set.contains(&format!("DefaultResolvers:[{GLOBAL_NS}]")),
        "{set}"
    );
    assert!(
        set.contains(&format!("{SPLIT_DOMAIN}.:[{SPLIT_NS}]")),
        "split route not installed: {set}"
    );
    let search = format!("SearchDomains:[{BASE}. {}.]", SEARCH.join(". "));
    assert!(set.contains(&search), "want {search}: {set}");
    let rcfg = resolver_cfg_line(&b_log).expect("b logs `dns: Resolvercfg: {…}`");
    say!("b's resolver: {rcfg}");
    for want in [
        format!(".:[{GLOBAL_NS}]"),
        format!("{SPLIT_DOMAIN}.:[{SPLIT_NS}]"),
        format!("LocalDomains:[{BASE}.]"),
    ] {
        assert!(rcfg.contains(&want), "want {want}: {rcfg}");
    }

    // a record for a added to the records file reaches b without a restart; then a new real
    // node d reaches a by that name
    let web = (WEB, "A", ips[0][0].as_str());
    let t_rec = Instant::now();
    std::fs::write(&records_file, records_json(&[FILE_RECORD, web])).unwrap();
    wait_for(
        "b's DNSConfig has the record added to the file",
        Duration::from_secs(20),
        || has_record(&h.dumped_netmap("b").0.dns, web).then_some(()),
    );
    let in_map = t_rec.elapsed();
    let set = wait_for("b installs 7 hosts", Duration::from_secs(10), || {
        dns_set_line(&b_log).filter(|s| hosts_count(s) == Some(7))
    });
    say!(
        "record {WEB} -> {} written to the records file: in b's netmap {:.1}s later; installed: {set}",
        web.2,
        in_map.as_secs_f64()
    );
    h.start_node(
        "d",
        &control,
        &key,
        41644,
        &["--role", "proxy", "--upstream", WEB],
    );
    let ip_d = wait_for(
        "node d gets its tailnet IPs",
        Duration::from_secs(60),
        || self_ips(&h.node_log_path("d")),
    );
    let (body, _) = h.fetch_via(
        "d",
        &format!("d -> http://{WEB}/ (extra record) through d's proxy"),
        Duration::from_secs(60),
    );
    assert_eq!(
        body,
        format!("hello from a over the tailnet; you are {}", ip_d[0])
    );
    say!("1. MagicDNS: a reached by short name (b), FQDN (c) and extra record (d); b's DNSConfig and installed DNS config as configured");

    // 2. Routes: advertised, then approved
    let r1_keys = Node::new("r1");
    let t_r1 = Instant::now();
    let mut r1 = ProtoNode::join(addr, "r1", &r1_keys, &key, &[SUBNET]);
    // b has r1 as it is once its map stream is up (online), and the server knows the route
    let seen = wait_for("b's netmap has r1 online", Duration::from_secs(30), || {
        let (nm, _) = h.dumped_netmap("b");
        (nm.peers.get(&r1.id)?["Online"] == true)
            .then(|| (route_state(&nm, r1.id, SUBNET), show_peer(&nm, r1.id)))
    });
    let own = wait_for("b's own log lists r1", Duration::from_secs(30), || {
        client_allowed_ips(&b_log, &r1.ip4)
    });
    let listed = h.cli_json(&["nodes", "list-routes", "-o", "json"]);
    let r1_routes = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| node_id(n) == r1.id.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("r1 not in list-routes: {listed}"));
    assert_eq!(
        (
            &r1_routes["available_routes"],
            &r1_routes["approved_routes"]
        ),
        (&serde_json::json!([SUBNET]), &serde_json::Value::Null),
        "the server has r1's advertisement, unapproved: {r1_routes}"
    );
    say!(
        "r1 (id {}, {}) advertises {SUBNET}; in b's netmap {:.2}s later, unapproved: {}; b holds AllowedIPs {own:?}",
        r1.id,
        r1.ip4,
        t_r1.elapsed().as_secs_f64(),
        seen.1
    );
    assert_eq!(
        seen.0,
        Some((false, false)),
        "unapproved {SUBNET} must not be served: {}",
        seen.1
    );
    assert!(!own.iter().any(|p| p == SUBNET), "{own:?}");

    let t_appr = Instant::now();
    let serves = approve(&h, r1.id, SUBNET);
    assert_eq!(serves, [SUBNET], "approve-routes answer: r1 serves it");
    wait_for(
        "b's netmap: r1 carries the approved prefix",
        Duration::from_secs(20),
        || {
            (route_state(&h.dumped_netmap("b").0, r1.id, SUBNET) == Some((true, true)))
                .then_some(())
        },
    );
    let in_map = t_appr.elapsed();
    let own = wait_for(
        "b's own peer line for r1 has the prefix",
        Duration::from_secs(20),
        || client_allowed_ips(&b_log, &r1.ip4).filter(|a| a.iter().any(|p| p == SUBNET)),
    );
    say!(
        "2. approve-routes -i {} -r {SUBNET}: in r1's AllowedIPs and PrimaryRoutes in b's netmap {:.2}s later; b holds AllowedIPs {own:?} ({:.2}s)",
        r1.id,
        in_map.as_secs_f64(),
        t_appr.elapsed().as_secs_f64()
    );

    // 3. HA: a second router, standby; the primary drops; no flapping back
    let r2_keys = Node::new("r2");
    let r2 = ProtoNode::join(addr, "r2", &r2_keys, &key, &[SUBNET]);
    let serves = approve(&h, r2.id, SUBNET);
    assert!(serves.is_empty(), "r2 is a standby: serves {serves:?}");
    let routes = h.cli(&["nodes", "list-routes"]);
    say!(
        "r2 (id {}, {}) approved too; list-routes:\n{}",
        r2.id,
        r2.ip4,
        routes.trim()
    );
    wait_for("b's netmap has r2", Duration::from_secs(20), || {
        h.dumped_netmap("b").0.peers.get(&r2.id).map(|_| ())
    });
    std::thread::sleep(Duration::from_secs(1));
    let nm = h.dumped_netmap("b").0;
    assert_eq!(
        route_state(&nm, r1.id, SUBNET),
        Some((true, true)),
        "r1 stays primary: {}",
        show_peer(&nm, r1.id)
    );
    assert_eq!(
        route_state(&nm, r2.id, SUBNET),
        Some((false, false)),
        "a standby must not carry the prefix: {}",
        show_peer(&nm, r2.id)
    );

    let t_down = Instant::now();
    r1.stop();
    wait_for(
        "b's netmap: the prefix moves to r2",
        Duration::from_secs(40),
        || {
            let nm = h.dumped_netmap("b").0;
            (route_state(&nm, r2.id, SUBNET) == Some((true, true))
                && route_state(&nm, r1.id, SUBNET) == Some((false, false)))
            .then_some(())
        },
    );
    let moved = t_down.elapsed();
    let own = wait_for(
        "b's own peer lines: the prefix on r2, not r1",
        Duration::from_secs(20),
        || {
            let on2 = client_allowed_ips(&b_log, &r2.ip4)?;
            let on1 = client_allowed_ips(&b_log, &r1.ip4)?;
            (on2.iter().any(|p| p == SUBNET) && !on1.iter().any(|p| p == SUBNET))
                .then_some((on1, on2))
        },
    );
    let nm = h.dumped_netmap("b").0;
    assert_eq!(
        serving(&h, r2.id),
        [SUBNET],
        "list-routes after the failover"
    );
    assert!(serving(&h, r1.id).is_empty(), "list-routes: r1 is offline");
    say!(
        "3. r1's connection dropped: {SUBNET} moved to r2 in b's netmap after {:.2}s (the server's 10 s offline grace included); b holds r1 {:?}, r2 {:?}; r1 now {}",
        moved.as_secs_f64(),
        own.0,
        own.1,
        show_peer(&nm, r1.id)
    );

    let t_back = Instant::now();
    let r1b = ProtoNode::join(addr, "r1", &r1_keys, &key, &[SUBNET]);
    assert_eq!(r1b.id, r1.id, "r1 rejoins as the same node");
    let rejoined = t_back.elapsed();
    wait_for(
        "b's netmap shows r1 online again",
        Duration::from_secs(20),
        || (h.dumped_netmap("b").0.peers.get(&r1.id)?["Online"] == true).then_some(()),
    );
    let online = t_back.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let nm = h.dumped_netmap("b").0;
    assert_eq!(
        route_state(&nm, r2.id, SUBNET),
        Some((true, true)),
        "no flapping back: r2 stays primary: {}",
        show_peer(&nm, r2.id)
    );
    assert_eq!(
        route_state(&nm, r1.id, SUBNET),
        Some((false, false)),
        "no flapping back: r1 is standby: {}",
        show_peer(&nm, r1.id)
    );
    assert_eq!(
        serving(&h, r2.id),
        [SUBNET],
        "list-routes: no flapping back"
    );
    assert!(
        serving(&h, r1.id).is_empty(),
        "list-routes: r1 is a standby"
    );
    say!(
        "   r1 rejoined in {:.2}s, online in b's netmap {:.2}s after the rejoin began; 3 s later the prefix is still on r2: r1 {}, r2 {}",
        rejoined.as_secs_f64(),
        online.as_secs_f64(),
        show_peer(&nm, r1.id),
        show_peer(&nm, r2.id)
    );

    // 4. Exit node
    let x_keys = Node::new("x");
    let x = ProtoNode::join(addr, "x", &x_keys, &key, &EXIT);
    let seen = wait_for("b's netmap has x", Duration::from_secs(20), || {
        let nm = h.dumped_netmap("b").0;
        nm.peers.get(&x.id).map(|_| show_peer(&nm, x.id))
    });
    let nm = h.dumped_netmap("b").0;
    for pfx in EXIT {
        assert_eq!(
            route_state(&nm, x.id, pfx),
            Some((false, false)),
            "unapproved {pfx} must not be served: {seen}"
        );
    }
    let t_appr = Instant::now();
    let serves = approve(&h, x.id, &EXIT.join(","));
    assert_eq!(
        serves, EXIT,
        "approve-routes answer: x serves both exit routes"
    );
    wait_for(
        "b's netmap: x carries 0.0.0.0/0 and ::/0",
        Duration::from_secs(20),
        || {
            let nm = h.dumped_netmap("b").0;
            EXIT.iter()
                .all(|p| route_state(&nm, x.id, p).is_some_and(|s| s.0))
                .then_some(())
        },
    );
    let in_map = t_appr.elapsed();
    let nm = h.dumped_netmap("b").0;
    for pfx in EXIT {
        assert_eq!(
            route_state(&nm, x.id, pfx),
            Some((true, false)),
            "an exit route is in AllowedIPs, never in PrimaryRoutes: {}",
            show_peer(&nm, x.id)
        );
    }
    let own = wait_for(
        "b's own peer line for x has both default routes",
        Duration::from_secs(20),
        || {
            client_allowed_ips(&b_log, &x.ip4)
                .filter(|a| EXIT.iter().all(|p| a.iter().any(|q| q == p)))
        },
    );
    say!(
        "4. exit node x (id {}): unapproved {seen}; approved: in b's netmap {:.2}s later: {}; b holds AllowedIPs {own:?}",
        x.id,
        in_map.as_secs_f64(),
        show_peer(&nm, x.id)
    );

    say!("nodes list at the end: {}", describe_all(&h.nodes()));
    say!(
        "PASS routes/MagicDNS real-client e2e in {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
    drop((x, r2, r1b, r1));
}
