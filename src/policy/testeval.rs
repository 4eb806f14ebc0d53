//! Evaluation of the policy's `tests` and `sshTests` blocks.

use super::compile::{global_rules, Ctx};
use super::ipset::IpSet;
use super::model::{parse_alias, parse_ports, parse_proto, split_dst_port, Alias, AutoGroup};
use super::ssh::{prepare, ssh_for_node};
use serde_json::Value;
use std::collections::HashMap;

/// Run `tests`; returns the list of failure descriptions (empty = pass).
pub(crate) fn run_tests(ctx: &Ctx) -> Vec<String> {
    let mut fails: Vec<String> = ctx.pol.test_errors.clone();
    if ctx.pol.tests.is_empty() {
        return fails;
    }
    let filter = global_rules(ctx);
    for t in &ctx.pol.tests {
        let src_set = match parse_alias(&t.src) {
            Ok(Alias::Auto(AutoGroup::SelfDevices)) | Err(_) => IpSet::new(),
            Ok(a) => ctx.resolve(&a),
        };
        if src_set.is_empty() {
            fails.push(format!("{}: source resolved to no IP addresses", t.src));
            continue;
        }
        let protos: Vec<u8> = match parse_proto(&t.proto) {
            Ok(p) if !p.is_empty() => p,
            _ => vec![6, 17, 1, 58],
        };
        let src_prefixes = src_set.prefixes();
        for (dsts, want) in [(&t.accept, true), (&t.deny, false)] {
            for d in dsts.iter() {
                let parsed = split_dst_port(d).and_then(|(sel, ports)| {
                    let ports = parse_ports(&ports)?;
                    let a = parse_alias(&sel).map_err(|e| e.to_string())?;
                    Ok((a, ports))
                });
                let (a, ports) = match parsed {
                    Ok(x) => x,
                    Err(e) => {
                        fails.push(format!("{} -> {d}: {e}", t.src));
                        continue;
                    }
                };
                if a == Alias::Auto(AutoGroup::SelfDevices) {
                    fails.push(format!("{} -> {d}: cannot resolve autogroup:self", t.src));
                    continue;
                }
                let dset = ctx.resolve(&a);
                if dset.is_empty() {
                    fails.push(format!(
                        "{} -> {d}: destination resolved to no IP addresses",
                        t.src
                    ));
                    continue;
                }
                let dprefixes = dset.prefixes();
                let allowed = src_prefixes.iter().all(|sp| {
                    filter.iter().any(|r| {
                        r.src_set.overlaps_net(sp)
                            && (r.proto.is_empty() || r.proto.iter().any(|p| protos.contains(p)))
                            && r.dst.iter().any(|dp| {
                                dprefixes.iter().any(|p| dp.set.overlaps_net(p))
                                    && ports.iter().any(|q| q.0 >= dp.ports.0 && q.1 <= dp.ports.1)
                            })
                    })
                });
                if allowed != want {
                    fails.push(format!(
                        "{} -> {d}: expected {}, got {}",
                        t.src,
                        if want { "ALLOWED" } else { "DENIED" },
                        if allowed { "ALLOWED" } else { "DENIED" }
                    ));
                }
            }
        }
    }
    fails
}

fn users_allow(m: &serde_json::Map<String, Value>, user: &str) -> bool {
    if user.is_empty() {
        return false;
    }
    if let Some(v) = m.get(user) {
        return v.as_str().is_some_and(|s| !s.is_empty());
    }
    if user == "root" {
        return false;
    }
    m.get("*")
        .and_then(|v| v.as_str())
        .is_some_and(|s| !s.is_empty())
}

/// Run `sshTests`; returns failure descriptions.
pub(crate) fn run_ssh_tests(ctx: &Ctx) -> Vec<String> {
    let mut fails = Vec::new();
    let mut cache: HashMap<usize, Option<Value>> = HashMap::new();
    let prepared = prepare(ctx, "");
    for t in &ctx.pol.ssh_tests {
        if t.src.is_empty() {
            fails.push("SSH tests entry must have a non-empty src".into());
            continue;
        }
        if t.dst.is_empty() {
            fails.push(format!(
                "{}: SSH tests entry must have at least one dst",
                t.src
            ));
            continue;
        }
        let Ok(src_alias) = parse_alias(&t.src) else {
            fails.push(format!("{}: invalid src", t.src));
            continue;
        };
        let src_set = match &src_alias {
            Alias::Auto(AutoGroup::SelfDevices) => IpSet::new(),
            a => ctx.resolve(a),
        };
        if src_set.is_empty() {
            fails.push(format!("{}: source resolved to no IP addresses", t.src));
            continue;
        }
        if t.accept.is_empty() && t.deny.is_empty() && t.check.is_empty() {
            fails.push(format!("{}: no assertions", t.src));
            continue;
        }
        let src_uid = match &src_alias {
            Alias::User(u) => ctx.find_user(u).map(|u| u.id),
            _ => None,
        };
        let mut src_addrs = Vec::new();
        for (j, ips) in ctx.node_ips.iter().enumerate() {
            let _ = j;
            for ip in ips {
                if src_set.contains(*ip) {
                    src_addrs.push(*ip);
                }
            }
        }
        // non-node addresses in the source set are irrelevant: they can
        // never match an SSH principal.
        let mut dst_nodes: Vec<usize> = Vec::new();
        for d in &t.dst {
            let mut matched = false;
            if *d == Alias::Auto(AutoGroup::SelfDevices) {
                if let Some(u) = src_uid {
                    for (j, n) in ctx.topo.nodes.iter().enumerate() {
                        if !n.is_tagged() && n.user_id == Some(u) {
                            matched = true;
                            if !dst_nodes.contains(&j) {
                                dst_nodes.push(j);
                            }
                        }
                    }
                }
            } else {
                let s = ctx.resolve(d);
                for j in 0..ctx.topo.nodes.len() {
                    if ctx.node_in(j, &s) {
                        matched = true;
                        if !dst_nodes.contains(&j) {
                            dst_nodes.push(j);
                        }
                    }
                }
            }
            if !matched {
                fails.push(format!("{}: dst alias {d} resolved to no nodes", t.src));
            }
        }
        for (users, kind) in [(&t.accept, 0), (&t.deny, 1), (&t.check, 2)] {
            for user in users.iter() {
                for &dn in &dst_nodes {
                    let pol = cache
                        .entry(dn)
                        .or_insert_with(|| prepared.as_ref().map(|p| ssh_for_node(ctx, p, dn)))
                        .clone();
                    let rules = pol
                        .as_ref()
                        .and_then(|p| p.get("rules"))
                        .and_then(|r| r.as_array())
                        .cloned()
                        .unwrap_or_default();
                    let mut ok = true;
                    for sa in &src_addrs {
                        let sa_s = sa.to_string();
                        let mut a = false;
                        let mut c = false;
                        for r in &rules {
                            let hit = r["principals"]
                                .as_array()
                                .is_some_and(|ps| ps.iter().any(|p| p["nodeIP"] == sa_s.as_str()));
                            if !hit {
                                continue;
                            }
                            let Some(um) = r["sshUsers"].as_object() else {
                                continue;
                            };
                            if !users_allow(um, user) {
                                continue;
                            }
                            a = true;
                            if r["action"].get("holdAndDelegate").is_some() {
                                c = true;
                            }
                        }
                        let good = match kind {
                            0 => a,
                            1 => !a,
                            _ => c,
                        };
                        if !good {
                            ok = false;
                            break;
                        }
                    }
                    if src_addrs.is_empty() && kind != 1 {
                        ok = false;
                    }
                    if !ok {
                        fails.push(format!(
                            "{}/{user} -> {}: assertion {} failed",
                            t.src,
                            ctx.topo.nodes[dn].name,
                            ["accept", "deny", "check"][kind]
                        ));
                    }
                }
            }
        }
    }
    fails
}
