//! Replays the Tailscale SaaS capture corpus (tests/corpus/tailscale-captures,
//! BSD-3, from headscale) through `policy::explain` and compares with what
//! SaaS produced. See the corpus README for the comparison rules.
//!
//! Environment:
//!   CORPUS_ONLY=<substring>   only run matching test ids
//!   CORPUS_VERBOSE=1          print per-node differences

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use tinyscale::policy::{self, Policy};

/// Captures we knowingly cannot reproduce, with the reason. The test fails
/// if one of these starts passing (remove it from the list then).
const SKIP: &[(&str, &str)] = &[
    (
        "acl-k03",
        "capture race: squirtle's 10.33.0.0/16 was auto-approved while the capture ran; \
         the netmaps of charmander, kakuna and weedle were read before SaaS published the \
         route (topology says approved_routes: [] while other peers already see it). We \
         apply the autoApprover consistently, so those three nodes differ.",
    ),
    (
        "ssh-e1",
        "SaaS rejects localpart:*@EXAMPLE.COM with the text 'PASSKEY is not associated \
         with this Tailnet'; we reject it too (domains are case-sensitive) but name the \
         domain we were given. Inventing 'PASSKEY' would need knowledge of SaaS internals.",
    ),
    (
        "sshtest-malformed-dst-bare-ipv6",
        "SaaS does not map a bare IPv6 literal in sshTests dst to the node that owns it \
         (test fails); we resolve it to the node like every other address. Deliberate: \
         the same quirk would make IPv6-literal rules silently not apply.",
    ),
    (
        "policytest-allpass-grants-only-tag-src-ipv6-literal-dst",
        "same SaaS IPv6-literal quirk in a grant dst: SaaS does not deliver a rule whose \
         dst is a node's bare IPv6 address to that node (nor make the nodes peers); we do, \
         so the address the policy names is actually reachable.",
    ),
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/tailscale-captures")
}

fn sorted_strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn prefix_key(s: &str) -> (u8, u128, u8) {
    let (a, l) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = a.parse().unwrap_or(std::net::IpAddr::V4(0.into()));
    let (fam, x) = match ip {
        std::net::IpAddr::V4(v) => (4u8, u32::from(v) as u128),
        std::net::IpAddr::V6(v) => (6u8, u128::from(v)),
    };
    (fam, x, l.parse().unwrap_or(255))
}

/// Normalise one filter rule for comparison.
fn norm_rule(r: &Value) -> Value {
    let mut m = Map::new();
    m.insert(
        "SrcIPs".into(),
        serde_json::json!(sorted_strings(&r["SrcIPs"])),
    );
    let mut dps: Vec<(String, u64, u64)> = r["DstPorts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["IP"].as_str().unwrap_or("").to_string(),
                        d["Ports"]["First"].as_u64().unwrap_or(0),
                        d["Ports"]["Last"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    dps.sort();
    if !dps.is_empty() {
        m.insert(
            "DstPorts".into(),
            Value::Array(
                dps.iter()
                    .map(|(ip, f, l)| serde_json::json!({"IP": ip, "Ports": {"First": f, "Last": l}}))
                    .collect(),
            ),
        );
    }
    let mut protos: Vec<u64> = r["IPProto"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default();
    protos.sort();
    if !protos.is_empty() {
        m.insert("IPProto".into(), serde_json::json!(protos));
    }
    if let Some(cg) = r["CapGrant"].as_array() {
        if !cg.is_empty() {
            let v: Vec<Value> = cg
                .iter()
                .map(|g| {
                    let mut d: Vec<String> = g["Dsts"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|x| x.as_str().unwrap_or("").to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    d.sort_by_key(|s| prefix_key(s));
                    serde_json::json!({"Dsts": d, "CapMap": g["CapMap"]})
                })
                .collect();
            m.insert("CapGrant".into(), Value::Array(v));
        }
    }
    Value::Object(m)
}

fn norm_rules(v: &Value) -> Vec<Value> {
    v.as_array()
        .map(|a| a.iter().map(norm_rule).collect())
        .unwrap_or_default()
}

fn norm_ssh(v: &Value) -> Vec<Value> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let mut r = r.clone();
                    if let Some(p) = r.get_mut("principals").and_then(|p| p.as_array_mut()) {
                        p.sort_by_key(|x| x["nodeIP"].as_str().unwrap_or("").to_string());
                    }
                    r
                })
                .collect()
        })
        .unwrap_or_default()
}

const STRIP_CAPS: &[&str] = &[
    "https://tailscale.com/cap/is-admin",
    "https://tailscale.com/cap/is-owner",
    "https://tailscale.com/cap/tailnet-lock",
    "https://tailscale.com/cap/warn-funnel-no-https",
    "service-host",
    "store-appc-routes",
    "tailnet-display-name",
    "tailnet.maxKeyDuration",
    "native-ipv4",
    "probe-udp-lifetime",
    "ssh-behavior-v1",
    "ssh-env-vars",
];

fn norm_capmap(v: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if let Some(m) = v.as_object() {
        for (k, val) in m {
            if STRIP_CAPS.contains(&k.as_str())
                || k.starts_with("https://tailscale.com/cap/funnel-ports?")
            {
                continue;
            }
            let val = match val {
                Value::Array(a) if a.is_empty() => Value::Null,
                x => x.clone(),
            };
            out.insert(k.clone(), val);
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    pass: usize,
    fail: usize,
}

const CHECKS: &[&str] = &[
    "rejection",
    "accept",
    "filter",
    "peers",
    "routes",
    "approval",
    "ssh",
    "capmap",
];

struct Outcome {
    failures: Vec<String>,
    checks: BTreeMap<&'static str, bool>,
}

fn run_one(cap: &Value, verbose: bool) -> Outcome {
    let mut o = Outcome {
        failures: vec![],
        checks: BTreeMap::new(),
    };
    let category = cap["category"].as_str().unwrap_or("");
    let policy_text = cap["policy"].as_str().unwrap_or("");
    let cap_text = cap.to_string();
    let res = policy::explain(policy_text, &cap_text);
    let expect_err = &cap["expect_error"];
    if !expect_err.is_null() {
        let want = expect_err["message"].as_str().unwrap_or("");
        let ok = match &res {
            Ok(_) => {
                o.failures
                    .push(format!("expected rejection {want:?}, got accepted"));
                false
            }
            Err(e) => {
                if category == "nodeattrs" || e.contains(want) {
                    true
                } else {
                    o.failures
                        .push(format!("rejection text: want {want:?}, got {e:?}"));
                    false
                }
            }
        };
        o.checks.insert("rejection", ok);
        return o;
    }
    let got = match res {
        Ok(v) => {
            o.checks.insert("accept", true);
            v
        }
        Err(e) => {
            o.failures.push(format!("unexpected rejection: {e}"));
            o.checks.insert("accept", false);
            return o;
        }
    };
    let want_nodes = cap["nodes"].as_object().cloned().unwrap_or_default();
    let got_nodes = got["nodes"].as_object().cloned().unwrap_or_default();
    let mut filter_ok = true;
    let mut peers_ok = true;
    let mut routes_ok = true;
    let mut ssh_ok = true;
    let mut capmap_ok = true;
    let captured: BTreeSet<String> = want_nodes.keys().cloned().collect();
    for (name, want) in &want_nodes {
        let Some(g) = got_nodes.get(name) else {
            o.failures
                .push(format!("{name}: node missing from explain output"));
            filter_ok = false;
            continue;
        };
        // packet filter
        let wf = norm_rules(&want["packet_filter_rules"]);
        let gf = norm_rules(&g["packet_filter_rules"]);
        if wf != gf {
            filter_ok = false;
            o.failures.push(format!("{name}: packet filter differs"));
            if verbose {
                eprintln!(
                    "  {name} filter\n    want {}\n    got  {}",
                    Value::Array(wf),
                    Value::Array(gf)
                );
            }
        }
        // peers (only among captured nodes)
        let wp: BTreeSet<String> = sorted_strings(&want["peers"]).into_iter().collect();
        let gp: BTreeSet<String> = sorted_strings(&g["peers"])
            .into_iter()
            .filter(|p| captured.contains(p) || wp.contains(p))
            .collect();
        let wp: BTreeSet<String> = wp.into_iter().collect();
        if wp != gp {
            peers_ok = false;
            o.failures.push(format!("{name}: peers differ"));
            if verbose {
                eprintln!("  {name} peers\n    want {wp:?}\n    got  {gp:?}");
            }
        }
        // routes: peer AllowedIPs / PrimaryRoutes
        if let Some(wpn) = want["peer_nodes"].as_object() {
            for (pn, wv) in wpn {
                let gv = &g["peer_nodes"][pn];
                if gv.is_null() {
                    continue; // already reported as peer difference
                }
                let wa = sorted_strings(&wv["AllowedIPs"]);
                let ga = sorted_strings(&gv["AllowedIPs"]);
                let wpr = sorted_strings(&wv["PrimaryRoutes"]);
                let gpr = sorted_strings(&gv["PrimaryRoutes"]);
                // Addresses differ only in the disable-ipv4 captures.
                let addr_only = |v: &Vec<String>, w: &Value| {
                    let addrs = sorted_strings(&w["Addresses"]);
                    v.iter()
                        .filter(|x| {
                            !addrs.contains(x)
                                && !x.starts_with("100.")
                                && !x.starts_with("fd7a:115c:a1e0:")
                        })
                        .cloned()
                        .collect::<Vec<_>>()
                };
                if addr_only(&wa, wv) != addr_only(&ga, gv) || wpr != gpr {
                    routes_ok = false;
                    o.failures.push(format!("{name}: peer {pn} routes differ"));
                    if verbose {
                        eprintln!(
                            "  {name} peer {pn}\n    want AllowedIPs {wa:?} Primary {wpr:?}\n    got  AllowedIPs {ga:?} Primary {gpr:?}"
                        );
                    }
                }
                if norm_capmap(&wv["CapMap"]) != norm_capmap(&gv["CapMap"]) {
                    capmap_ok = false;
                    o.failures.push(format!("{name}: peer {pn} CapMap differs"));
                }
            }
        }
        // self view: routes this node serves and is primary for
        {
            let strip = |v: &Value| -> Vec<String> {
                sorted_strings(v)
                    .into_iter()
                    .filter(|x| !x.ends_with("/32") && !x.ends_with("/128"))
                    .collect()
            };
            let ws = &want["self"];
            let gs = &g["self"];
            if strip(&ws["AllowedIPs"]) != strip(&gs["AllowedIPs"])
                || sorted_strings(&ws["PrimaryRoutes"]) != sorted_strings(&gs["PrimaryRoutes"])
            {
                routes_ok = false;
                o.failures.push(format!("{name}: self routes differ"));
                if verbose {
                    eprintln!(
                        "  {name} self\n    want {} {}\n    got  {} {}",
                        ws["AllowedIPs"],
                        ws["PrimaryRoutes"],
                        gs["AllowedIPs"],
                        gs["PrimaryRoutes"]
                    );
                }
            }
        }
        if want.get("ssh_rules").is_some() && matches!(category, "ssh" | "sshtest") {
            let ws = norm_ssh(&want["ssh_rules"]);
            let gs = norm_ssh(&g["ssh_rules"]);
            if ws != gs {
                ssh_ok = false;
                o.failures.push(format!("{name}: ssh rules differ"));
                if verbose {
                    eprintln!(
                        "  {name} ssh\n    want {}\n    got  {}",
                        Value::Array(ws),
                        Value::Array(gs)
                    );
                }
            }
        }
        if !want["self"]["CapMap"].is_null() {
            let wc = norm_capmap(&want["self"]["CapMap"]);
            let mut gc = norm_capmap(&g["self"]["CapMap"]);
            // captures before ~2026-05 predate SaaS sending default-auto-update
            if !wc.contains_key("default-auto-update") {
                gc.remove("default-auto-update");
            }
            if wc != gc {
                capmap_ok = false;
                o.failures.push(format!("{name}: self CapMap differs"));
                if verbose {
                    eprintln!("  {name} capmap\n    want {wc:?}\n    got  {gc:?}");
                }
            }
        }
    }
    o.checks.insert("filter", filter_ok);
    o.checks.insert("peers", peers_ok);
    o.checks.insert("routes", routes_ok);
    if matches!(category, "ssh" | "sshtest") {
        o.checks.insert("ssh", ssh_ok);
    }
    o.checks.insert("capmap", capmap_ok);
    // auto-approval (routes captures)
    if category == "routes" {
        let mut ok = true;
        if let Ok(pol) = Policy::parse(policy_text) {
            if let Ok(topo) = policy::explain::topology_from_capture(cap, None) {
                for n in &topo.nodes {
                    for r in &n.advertised_routes {
                        let want = n.approved_routes.contains(r);
                        let got = policy::auto_approves(&pol, &topo, n.id, r);
                        if want != got {
                            ok = false;
                            o.failures.push(format!(
                                "{}: route {r} auto-approval: want {want}, got {got}",
                                n.name
                            ));
                        }
                    }
                }
            }
        }
        o.checks.insert("approval", ok);
    }
    o
}

#[test]
fn tailscale_corpus() {
    let dir = corpus_dir();
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let only = std::env::var("CORPUS_ONLY").ok();
    let verbose = std::env::var("CORPUS_VERBOSE").is_ok();
    let skip: BTreeMap<&str, &str> = SKIP.iter().cloned().collect();
    let mut by_cat: BTreeMap<String, Tally> = BTreeMap::new();
    let mut by_check: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut total = Tally::default();
    let mut unexpected: Vec<String> = Vec::new();
    let mut skipped_failing = 0;
    let mut skipped_passing: Vec<String> = Vec::new();
    let mut skipped_list: Vec<String> = Vec::new();
    let mut seen = 0;
    for row in index["captures"].as_array().unwrap() {
        let file = row["file"].as_str().unwrap();
        let id = row["test_id"].as_str().unwrap();
        if let Some(o) = &only {
            if !id.contains(o.as_str()) {
                continue;
            }
        }
        seen += 1;
        let cap: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let cat = cap["category"].as_str().unwrap_or("?").to_string();
        if verbose {
            eprintln!("== {id}");
        }
        let out = run_one(&cap, verbose);
        let pass = out.failures.is_empty();
        let t = by_cat.entry(cat).or_default();
        if pass {
            t.pass += 1;
            total.pass += 1;
        } else {
            t.fail += 1;
            total.fail += 1;
        }
        for (k, ok) in &out.checks {
            let c = by_check.entry(k).or_default();
            if *ok {
                c.pass += 1;
            } else {
                c.fail += 1;
            }
        }
        match (skip.get(id), pass) {
            (Some(_), true) => skipped_passing.push(id.to_string()),
            (Some(_), false) => {
                skipped_failing += 1;
                skipped_list.push(format!("{file}: {}", out.failures.join("; ")));
            }
            (None, false) => {
                unexpected.push(format!("{file}: {}", out.failures.join("; ")));
            }
            (None, true) => {}
        }
    }
    println!("corpus: {seen} captures");
    for (cat, t) in &by_cat {
        println!("  category {cat:<11} {} passed, {} failed", t.pass, t.fail);
    }
    for k in CHECKS {
        if let Some(t) = by_check.get(k) {
            println!("  check    {k:<11} {} passed, {} failed", t.pass, t.fail);
        }
    }
    println!(
        "  TOTAL {} passed, {} failed ({} of the failures are skip-listed)",
        total.pass, total.fail, skipped_failing
    );
    if verbose || std::env::var("CORPUS_SHOW_SKIPPED").is_ok() {
        println!("skip-listed failing captures:");
        for u in &skipped_list {
            let short: String = u.chars().take(300).collect();
            println!("  [skip] {short}");
        }
    }
    if !unexpected.is_empty() {
        println!("failing captures not in the skip list:");
        for u in &unexpected {
            let short: String = u.chars().take(400).collect();
            println!("  {short}");
        }
    }
    if !skipped_passing.is_empty() {
        println!("skip-listed captures that now pass (remove them from SKIP):");
        for s in &skipped_passing {
            println!("  {s}");
        }
    }
    assert!(
        unexpected.is_empty() && skipped_passing.is_empty(),
        "{} unexpected failures, {} skip-listed captures passing",
        unexpected.len(),
        skipped_passing.len()
    );
}
