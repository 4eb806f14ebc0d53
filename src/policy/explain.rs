//! `explain`: compile a policy against a corpus-capture topology and render
//! the per-node view in the corpus shape.

use super::compile::{compile, TailnetSettings, TopoNode, TopoUser, Topology};
use super::model::Policy;
use super::{auto_approves, check_tests};
use ipnet::IpNet;
use serde_json::{json, Map, Value};

/// Build a [`Topology`] from a capture's `topology`, `registration_order`
/// and `tailnet_settings` (node IDs follow the registration order).
/// Routes in `routable_ips` that the policy's autoApprovers approve are
/// added to the approved set.
pub fn topology_from_capture(capture: &Value, policy: Option<&Policy>) -> Result<Topology, String> {
    let topo = capture
        .get("topology")
        .ok_or("capture has no \"topology\"")?;
    let mut users = Vec::new();
    for u in topo["users"].as_array().cloned().unwrap_or_default() {
        users.push(TopoUser {
            id: u["id"].as_u64().ok_or("user without id")?,
            name: u["name"].as_str().unwrap_or("").to_string(),
            email: u["email"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map(|s| s.to_string()),
        });
    }
    // The tailnet owner is the first user (it also names the tailnet, see
    // the `tailnet-display-name` cap); its email domain is the tailnet's.
    // In the captured tailnets every user is an admin.
    let owner = users.iter().min_by_key(|u| u.id);
    let owner_user_id = owner.map(|u| u.id);
    let domains: Vec<String> = owner
        .and_then(|u| u.email.as_deref())
        .and_then(|e| e.rsplit_once('@'))
        .map(|(_, d)| vec![d.to_string()])
        .unwrap_or_default();
    let admin_user_ids: Vec<u64> = users.iter().map(|u| u.id).collect();
    let nodes_v = topo["nodes"].as_object().cloned().unwrap_or_default();
    let mut order: Vec<String> = capture
        .get("registration_order")
        .and_then(|o| o.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut rest: Vec<String> = nodes_v
        .keys()
        .filter(|k| !order.contains(k))
        .cloned()
        .collect();
    rest.sort();
    order.extend(rest);
    let parse_nets = |v: &Value| -> Vec<IpNet> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().and_then(|s| s.parse::<IpNet>().ok()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut nodes = Vec::new();
    for (k, name) in order.iter().enumerate() {
        let Some(n) = nodes_v.get(name) else { continue };
        let user_id = n["user"].as_str().and_then(|un| {
            users
                .iter()
                .find(|u| u.name == un || u.email.as_deref() == Some(un))
                .map(|u| u.id)
        });
        nodes.push(TopoNode {
            id: k as u64 + 1,
            name: name.clone(),
            user_id,
            tags: n["tags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            ipv4: n["ipv4"].as_str().and_then(|s| s.parse().ok()),
            ipv6: n["ipv6"].as_str().and_then(|s| s.parse().ok()),
            advertised_routes: parse_nets(&n["routable_ips"]),
            approved_routes: parse_nets(&n["approved_routes"]),
        });
    }
    let settings = TailnetSettings {
        file_sharing: true,
        auto_update: capture["tailnet_settings"]["settings"]["devices_auto_updates_on"]
            .as_bool()
            .unwrap_or(false),
        owner_user_id,
        admin_user_ids,
        domains,
    };
    let mut t = Topology {
        users,
        nodes,
        settings,
    };
    if let Some(p) = policy {
        let snapshot = t.clone();
        for n in t.nodes.iter_mut() {
            for r in n.advertised_routes.clone() {
                if !n.approved_routes.contains(&r) && auto_approves(p, &snapshot, n.id, &r) {
                    n.approved_routes.push(r);
                }
            }
        }
    }
    Ok(t)
}

fn nets(v: &[IpNet]) -> Value {
    json!(v.iter().map(|n| n.to_string()).collect::<Vec<_>>())
}

/// Compile `policy_text` against the topology of a corpus capture file and
/// return `{"nodes": {hostname: {packet_filter_rules, peers, self,
/// peer_nodes, ssh_rules}}}`. Policy errors (including failing
/// `tests`/`sshTests`) are returned as `Err(message)`.
pub fn explain(policy_text: &str, topology_capture_json: &str) -> Result<Value, String> {
    let capture: Value =
        serde_json::from_str(topology_capture_json).map_err(|e| format!("topology: {e}"))?;
    let pol = Policy::parse(policy_text).map_err(|e| e.to_string())?;
    let topo = topology_from_capture(&capture, Some(&pol))?;
    check_tests(&pol, &topo).map_err(|e| e.to_string())?;
    Ok(explain_compiled(&pol, &topo))
}

/// Render the explain view for an already-parsed policy.
pub fn explain_compiled(pol: &Policy, topo: &Topology) -> Value {
    let c = compile(pol, topo);
    let mut out = Map::new();
    for (i, n) in topo.nodes.iter().enumerate() {
        let filter = c.packet_filter(n.id);
        let filter = if filter.as_array().is_some_and(|a| a.is_empty()) {
            Value::Null
        } else {
            filter
        };
        let peer_ids = c.peers(n.id);
        let mut peer_names: Vec<String> = Vec::new();
        let mut peer_nodes = Map::new();
        for pid in &peer_ids {
            let j = topo.nodes.iter().position(|x| x.id == *pid).unwrap_or(0);
            let p = &topo.nodes[j];
            peer_names.push(p.name.clone());
            let mut pm = Map::new();
            let addrs: Vec<IpNet> = p.ips().into_iter().map(IpNet::from).collect();
            pm.insert("Addresses".into(), nets(&addrs));
            pm.insert("AllowedIPs".into(), nets(&c.peer_allowed_ips(n.id, *pid)));
            let pr = c.peer_primary_routes(n.id, *pid);
            if !pr.is_empty() {
                pm.insert("PrimaryRoutes".into(), nets(&pr));
            }
            if !c.tags_of(j).is_empty() {
                pm.insert("Tags".into(), json!(c.tags_of(j)));
            }
            if let Some(cm) = c.peer_cap_map(*pid) {
                pm.insert("CapMap".into(), cm);
            }
            peer_nodes.insert(p.name.clone(), Value::Object(pm));
        }
        peer_names.sort();
        let mut selfm = Map::new();
        let addrs: Vec<IpNet> = n.ips().into_iter().map(IpNet::from).collect();
        selfm.insert("Addresses".into(), nets(&addrs));
        selfm.insert("AllowedIPs".into(), nets(&c.self_allowed_ips(n.id, topo)));
        let pr = c.primary_routes(n.id);
        if !pr.is_empty() {
            selfm.insert("PrimaryRoutes".into(), nets(&pr));
        }
        if !n.tags.is_empty() {
            selfm.insert("Tags".into(), json!(n.tags));
        }
        selfm.insert("CapMap".into(), c.cap_map(n.id));
        let ssh = c
            .ssh_policy(n.id)
            .map(|v| v["rules"].clone())
            .unwrap_or(Value::Null);
        let _ = i;
        out.insert(
            c.name_of(i).to_string(),
            json!({
                "packet_filter_rules": filter,
                "peers": peer_names,
                "self": Value::Object(selfm),
                "peer_nodes": Value::Object(peer_nodes),
                "ssh_rules": ssh,
            }),
        );
    }
    json!({ "nodes": out })
}
