//! Renders the state into the client's wire objects: self and peer `Node`s,
//! user profiles, DERP map, DNS config and packet filter.

use crate::config::Config;
use crate::control::Server;
use crate::keys::{DiscoKey, MachineKey, NodeKey};
use crate::state::{Node, State};
use crate::tailcfg::{self, SharedRaw, UserProfile};
use crate::timefmt::rfc3339;
use std::collections::BTreeMap;

/// The shared user that tagged nodes belong to in peer views (Headscale's ID).
pub const TAGGED_USER_ID: u64 = 2_147_455_555;
/// Base of the per-node synthetic users of tagged nodes' self views
/// (kept apart from real user IDs, below 2^53).
pub const TAGGED_SELF_BASE: u64 = 1 << 40;

/// The MagicDNS suffix, without dots at either end.
pub fn dns_suffix(cfg: &Config) -> String {
    cfg.base_domain.trim_matches('.').to_string()
}

/// The node's FQDN with the trailing dot.
pub fn fqdn(cfg: &Config, n: &Node) -> String {
    let s = dns_suffix(cfg);
    if s.is_empty() {
        n.given_name.clone()
    } else {
        format!("{}.{}.", n.given_name, s)
    }
}

fn addresses(n: &Node) -> Vec<String> {
    let mut v = Vec::with_capacity(2);
    if let Some(a) = n.ipv4 {
        v.push(format!("{a}/32"));
    }
    if let Some(a) = n.ipv6 {
        v.push(format!("{a}/128"));
    }
    v
}

/// The user ID a node carries in a view.
pub fn user_for(n: &Node, self_view: bool) -> u64 {
    if n.is_tagged() {
        if self_view {
            TAGGED_SELF_BASE + n.id
        } else {
            TAGGED_USER_ID
        }
    } else {
        n.user
    }
}

pub fn profile_for(cfg: &Config, st: &State, n: &Node, self_view: bool) -> UserProfile {
    let id = user_for(n, self_view);
    if n.is_tagged() {
        if self_view {
            UserProfile {
                id,
                login_name: fqdn(cfg, n).trim_end_matches('.').to_string(),
                display_name: n.given_name.clone(),
                profile_pic_url: String::new(),
            }
        } else {
            UserProfile {
                id,
                login_name: "tagged-devices".into(),
                display_name: "Tagged Devices".into(),
                profile_pic_url: String::new(),
            }
        }
    } else {
        match st.users.get(&n.user) {
            Some(u) => UserProfile {
                id,
                login_name: u.login_name(),
                display_name: if u.display_name.is_empty() {
                    u.name.clone()
                } else {
                    u.display_name.clone()
                },
                profile_pic_url: u.profile_pic_url.clone(),
            },
            None => UserProfile {
                id,
                login_name: "unknown@".into(),
                display_name: "unknown".into(),
                ..Default::default()
            },
        }
    }
}

/// Builds a node as seen by itself (`self_view`) or by a peer.
pub fn render_node(server: &Server, n: &Node, self_view: bool, now: i64) -> tailcfg::Node {
    let cfg = &server.cfg;
    let addrs = addresses(n);
    let mut allowed = addrs.clone();
    let approved = server.routes_in_effect(n);
    allowed.extend(approved.iter().cloned());
    let primary: Vec<String> = approved
        .iter()
        .filter(|r| !crate::control::routes::is_exit(r))
        .cloned()
        .collect();
    // Decoded into the known fields: a Hostinfo stored before they were
    // the only ones kept loses the rest here.
    let hostinfo = serde_json::from_str::<tailcfg::Hostinfo>(&n.hostinfo).unwrap_or_default();
    let online = server.hub.is_online(n.id);
    let expired = n.is_expired(now);
    let mut cap_map = None;
    if self_view {
        let mut m = BTreeMap::new();
        m.insert(
            "disable-captive-portal-detection".to_string(),
            serde_json::json!([]),
        );
        if cfg.taildrop {
            m.insert(
                "https://tailscale.com/cap/file-sharing".to_string(),
                serde_json::json!([]),
            );
        }
        cap_map = Some(m);
    }
    tailcfg::Node {
        id: n.id,
        stable_id: format!("n{}", n.id),
        name: fqdn(cfg, n),
        user: user_for(n, self_view),
        key: NodeKey(n.node_key),
        key_expiry: rfc3339(n.expiry),
        machine: Some(MachineKey(n.machine_key)),
        disco_key: (n.disco_key != [0; 32]).then_some(DiscoKey(n.disco_key)),
        addresses: addrs,
        allowed_ips: allowed,
        endpoints: if expired { vec![] } else { n.endpoints.clone() },
        home_derp: if n.home_derp > 0 {
            n.home_derp
        } else if self_view {
            0
        } else {
            cfg.derp_region_id as i32
        },
        hostinfo: Some(hostinfo),
        created: rfc3339(n.created),
        cap: n.cap,
        tags: n.tags.clone(),
        primary_routes: primary,
        last_seen: (!self_view && !online && n.last_seen != 0).then(|| rfc3339(n.last_seen)),
        online: (!self_view).then_some(online),
        machine_authorized: !expired || self_view,
        cap_map,
        expired: expired && !self_view,
    }
}

/// The peer JSON for `n`, from the hub's cache or freshly serialised.
/// Call with the state lock held so the cache never keeps a stale render.
pub fn peer_json(server: &Server, n: &Node, now: i64) -> SharedRaw {
    if let Some(r) = server.hub.cached_peer(n.id) {
        return r;
    }
    let node = render_node(server, n, false, now);
    let raw = to_raw(&node);
    server.hub.cache_peer(n.id, raw.clone());
    raw
}

pub fn to_raw<T: serde::Serialize>(v: &T) -> SharedRaw {
    // Our own types always serialise; fall back to null defensively.
    serde_json::to_string(v)
        .ok()
        .and_then(SharedRaw::new)
        .unwrap_or_else(|| SharedRaw::new("null".into()).expect("null is JSON"))
}

/// Host part of server_url.
pub fn server_host(cfg: &Config) -> String {
    let u = cfg
        .server_url
        .split("://")
        .nth(1)
        .unwrap_or(&cfg.server_url);
    let hostport = u.split('/').next().unwrap_or(u);
    if let Some(rest) = hostport.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport)
        .to_string()
}

/// The DNS configuration: MagicDNS, global and split nameservers, search
/// domains and extra records (inline plus the hot-reloaded file).
pub fn dns_config(server: &Server) -> Option<tailcfg::DnsConfig> {
    let file = server
        .dns_extra
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Some(build_dns_config(&server.cfg, &file))
}

/// [`dns_config`] from the config and the extra records file's contents.
pub fn build_dns_config(cfg: &Config, file: &[(String, String, String)]) -> tailcfg::DnsConfig {
    let suffix = dns_suffix(cfg);
    let mut d = tailcfg::DnsConfig {
        resolvers: cfg
            .nameservers_global
            .iter()
            .map(|a| tailcfg::Resolver { addr: a.clone() })
            .collect(),
        ..Default::default()
    };
    if !cfg.override_local_dns {
        // dns.override_local_dns: false: the node keeps its own resolvers.
        d.fallback_resolvers = std::mem::take(&mut d.resolvers);
    }
    d.domains = cfg.search_domains.clone();
    if cfg.magic_dns && !suffix.is_empty() {
        d.proxied = true;
        d.domains.insert(0, suffix.clone());
    }
    for (dom, ns) in &cfg.nameservers_split {
        d.routes.insert(
            format!("{dom}."),
            ns.iter()
                .map(|a| tailcfg::Resolver { addr: a.clone() })
                .collect(),
        );
    }
    for (name, ty, value) in cfg.extra_records.iter().chain(file.iter()) {
        d.extra_records.push(tailcfg::DnsRecord {
            name: format!("{name}."),
            // A and AAAA go out with Type "" ("A or AAAA, depending on value", tailcfg): the
            // same to quad-100, but tsnet's dialer (every tsnet app: caddy-tailscale, …) only
            // takes untyped records into its name table, so only then can it dial the name.
            r#type: match ty.as_str() {
                "A" | "AAAA" => String::new(),
                other => other.to_owned(),
            },
            value: value.clone(),
        });
        // A name outside the MagicDNS suffix needs a route to be answered
        // by quad-100 when there are no global resolvers (dns.md §2).
        if d.resolvers.is_empty() {
            if let Some((_, parent)) = name.split_once('.') {
                if parent != suffix && !d.routes.contains_key(&format!("{parent}.")) {
                    d.routes.insert(format!("{parent}."), vec![]);
                }
            }
        }
    }
    d
}

/// Re-reads `dns.extra_records_path` when it changes; a broken file is
/// logged and the previous records stay.
pub fn spawn_extra_records_watcher(server: crate::control::SharedServer) {
    let Some(path) = server.cfg.extra_records_path.clone() else {
        return;
    };
    let weak = std::sync::Arc::downgrade(&server);
    drop(server);
    smol::spawn(async move {
        let mut last: Option<std::time::SystemTime> = None;
        loop {
            let Some(server) = weak.upgrade() else { return };
            let m = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if m != last {
                last = m;
                let parsed = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|t| {
                        if t.len() > 1 << 20 {
                            return Err("larger than 1 MiB".into());
                        }
                        serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string())
                    })
                    .and_then(|v| crate::config::parse_extra_records(&v));
                match parsed {
                    Ok(recs) => {
                        let changed = {
                            let mut cur =
                                server.dns_extra.lock().unwrap_or_else(|e| e.into_inner());
                            let changed = *cur != recs;
                            *cur = recs;
                            changed
                        };
                        if changed {
                            log::info!("dns.extra_records_path {}: reloaded", path.display());
                            server.hub.notify(crate::control::Change::Everything);
                        }
                    }
                    Err(e) => log::warn!(
                        "dns.extra_records_path {}: {e} (previous records kept)",
                        path.display()
                    ),
                }
            }
            drop(server);
            async_io::Timer::after(std::time::Duration::from_secs(2)).await;
        }
    })
    .detach();
}

/// Allow-all packet filter, used until a policy is configured.
pub fn allow_all_filter() -> SharedRaw {
    SharedRaw::new(
        r#"[{"SrcIPs":["*"],"DstPorts":[{"IP":"*","Ports":{"First":0,"Last":65535}}]}]"#.into(),
    )
    .expect("literal JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_local_dns_false_sends_fallback_resolvers() {
        let mut cfg = Config::defaults(std::path::Path::new("/data"));
        cfg.nameservers_global = vec!["1.1.1.1".into(), "https://dns.example/q".into()];
        let d = build_dns_config(&cfg, &[]);
        assert_eq!(d.resolvers.len(), 2);
        assert!(d.fallback_resolvers.is_empty());
        let j = serde_json::to_value(&d).unwrap();
        assert!(j.get("FallbackResolvers").is_none(), "{j}");

        cfg.override_local_dns = false;
        let d = build_dns_config(&cfg, &[]);
        assert!(d.resolvers.is_empty());
        let j = serde_json::to_value(&d).unwrap();
        assert!(j.get("Resolvers").is_none(), "{j}");
        assert_eq!(
            j["FallbackResolvers"],
            serde_json::json!([{"Addr": "1.1.1.1"}, {"Addr": "https://dns.example/q"}])
        );
        // MagicDNS still proxies the tailnet names.
        assert_eq!(j["Proxied"], true);
    }
}
