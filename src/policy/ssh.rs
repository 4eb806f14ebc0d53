//! `ssh` section → per-node `SSHPolicy` (tailcfg wire JSON, lowerCamel).

use super::compile::Ctx;
use super::ipset::IpSet;
use super::model::{Alias, AutoGroup, SshAction, SshRule};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

fn principals_from_set(s: &IpSet) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for &(a, b) in &s.v4 {
        for x in a..=b {
            out.push(IpAddr::V4(x.into()));
        }
    }
    for &(a, b) in &s.v6 {
        let mut x = a;
        loop {
            out.push(IpAddr::V6(x.into()));
            if x == b {
                break;
            }
            x += 1;
        }
    }
    out
}

fn principals_json(p: &[IpAddr]) -> Value {
    Value::Array(
        p.iter()
            .map(|ip| json!({"nodeIP": ip.to_string()}))
            .collect(),
    )
}

fn action_json(a: SshAction, server: &str) -> Value {
    match a {
        SshAction::Accept => json!({
            "accept": true,
            "allowAgentForwarding": true,
            "allowLocalPortForwarding": true,
            "allowRemotePortForwarding": true
        }),
        SshAction::Check => json!({
            "holdAndDelegate": format!(
                "{server}/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"
            )
        }),
    }
}

struct Emit<'r> {
    rule: &'r SshRule,
    action: Value,
    base_users: Map<String, Value>,
    localpart_by_user: BTreeMap<u64, String>,
}

impl Emit<'_> {
    fn push(&self, out: &mut Vec<(bool, Value)>, principals: &[IpAddr], uid: Option<u64>) {
        let mk = |users: Map<String, Value>| {
            let mut m = Map::new();
            m.insert("principals".into(), principals_json(principals));
            m.insert("sshUsers".into(), Value::Object(users));
            m.insert("action".into(), self.action.clone());
            if !self.rule.accept_env.is_empty() {
                m.insert("acceptEnv".into(), json!(self.rule.accept_env));
            }
            Value::Object(m)
        };
        let check = self.rule.action == SshAction::Check;
        out.push((check, mk(self.base_users.clone())));
        if let Some(u) = uid {
            if let Some(lp) = self.localpart_by_user.get(&u) {
                let mut m = Map::new();
                m.insert(lp.clone(), Value::String(lp.clone()));
                out.push((check, mk(m)));
            }
        }
    }
}

/// Node-independent data of one `ssh` rule, computed once per compile.
pub(crate) struct Prepared<'r> {
    emit: Emit<'r>,
    src: IpSet,
    self_dst: bool,
    other_dst: Option<IpSet>,
    has_localpart: bool,
    by_user: BTreeMap<u64, Vec<IpAddr>>,
    tagged: Vec<IpAddr>,
}

/// Prepare the `ssh` section (None when the policy has none).
pub(crate) fn prepare<'r>(ctx: &Ctx<'r>, server: &str) -> Option<Vec<Prepared<'r>>> {
    let rules = ctx.pol.ssh.as_ref()?;
    if rules.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for rule in rules {
        let self_dst = rule.dst.contains(&Alias::Auto(AutoGroup::SelfDevices));
        let other: Vec<&Alias> = rule
            .dst
            .iter()
            .filter(|d| **d != Alias::Auto(AutoGroup::SelfDevices))
            .collect();
        let mut src = IpSet::new();
        for a in &rule.src {
            src.union_with(&ctx.resolve(a));
        }
        if src.is_empty() {
            continue;
        }
        let mut base_users = Map::new();
        let nonroot = rule.users.iter().any(|u| u == "autogroup:nonroot");
        let root = rule.users.iter().any(|u| u == "root");
        if nonroot {
            base_users.insert("*".into(), Value::String("=".into()));
        }
        base_users.insert(
            "root".into(),
            Value::String(if root { "root".into() } else { String::new() }),
        );
        let mut localparts: Vec<String> = Vec::new();
        for u in &rule.users {
            if u == "root" || u == "autogroup:nonroot" {
                continue;
            }
            if let Some(d) = super::model::localpart_domain(u) {
                localparts.push(d.to_string());
                continue;
            }
            base_users.insert(u.clone(), Value::String(u.clone()));
        }
        let has_localpart = !localparts.is_empty();
        let mut localpart_by_user = BTreeMap::new();
        for d in &localparts {
            for u in &ctx.topo.users {
                if let Some(e) = &u.email {
                    if let Some((lp, dom)) = e.rsplit_once('@') {
                        if dom.eq_ignore_ascii_case(d) {
                            localpart_by_user.insert(u.id, lp.to_string());
                        }
                    }
                }
            }
        }
        // group sources by user
        let mut by_user: BTreeMap<u64, IpSet> = BTreeMap::new();
        let mut tagged: Vec<IpAddr> = Vec::new();
        for (j, n) in ctx.topo.nodes.iter().enumerate() {
            if !ctx.node_in(j, &src) {
                continue;
            }
            if n.is_tagged() {
                for _ in &n.tags {
                    tagged.extend(ctx.node_ips[j].iter().cloned());
                }
                continue;
            }
            let Some(u) = n.user_id else { continue };
            let e = by_user.entry(u).or_default();
            for ip in &ctx.node_ips[j] {
                e.push_addr(*ip);
            }
        }
        let by_user: BTreeMap<u64, Vec<IpAddr>> = by_user
            .into_iter()
            .map(|(u, mut s)| {
                s.normalize();
                (u, principals_from_set(&s))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let other_dst = (!other.is_empty()).then(|| {
            let mut dst = IpSet::new();
            for d in &other {
                dst.union_with(&ctx.resolve(d));
            }
            dst
        });
        out.push(Prepared {
            emit: Emit {
                rule,
                action: action_json(rule.action, server),
                base_users,
                localpart_by_user,
            },
            src,
            self_dst,
            other_dst,
            has_localpart,
            by_user,
            tagged,
        });
    }
    Some(out)
}

/// SSH policy for node `i` from the prepared rules.
pub(crate) fn ssh_for_node(ctx: &Ctx, prepared: &[Prepared], i: usize) -> Value {
    let node = &ctx.topo.nodes[i];
    let mut out: Vec<(bool, Value)> = Vec::new();
    for p in prepared {
        let em = &p.emit;
        if p.self_dst && !node.is_tagged() {
            if let Some(u) = node.user_id {
                if let Some(pr) = p.by_user.get(&u) {
                    em.push(&mut out, pr, Some(u));
                }
            }
        }
        let Some(dst) = &p.other_dst else { continue };
        if ctx.node_in(i, dst) {
            if p.has_localpart {
                for (u, pr) in &p.by_user {
                    em.push(&mut out, pr, Some(*u));
                }
                if !p.tagged.is_empty() {
                    em.push(&mut out, &p.tagged, None);
                }
            } else {
                let mut all: Vec<IpAddr> = Vec::new();
                for pr in p.by_user.values() {
                    all.extend(pr.iter().cloned());
                }
                all.extend(p.tagged.iter().cloned());
                if !all.is_empty() {
                    em.push(&mut out, &all, None);
                }
            }
        } else if p.has_localpart && ctx.node_in(i, &p.src) {
            if node.is_tagged() {
                let mut s = IpSet::new();
                for ip in &ctx.node_ips[i] {
                    s.push_addr(*ip);
                }
                s.normalize();
                let pr = principals_from_set(&s);
                if !pr.is_empty() {
                    em.push(&mut out, &pr, None);
                }
            } else if let Some(u) = node.user_id {
                if let Some(pr) = p.by_user.get(&u) {
                    em.push(&mut out, pr, Some(u));
                }
            }
        }
    }
    // check rules first (stable): the client uses the first match
    let mut rules: Vec<Value> = out
        .iter()
        .filter(|(c, _)| *c)
        .map(|(_, v)| v.clone())
        .collect();
    rules.extend(out.iter().filter(|(c, _)| !*c).map(|(_, v)| v.clone()));
    json!({ "rules": rules })
}
