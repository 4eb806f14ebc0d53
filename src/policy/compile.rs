//! Compiler: (policy, topology) → per-node packet filter, visible peers,
//! route fields, SSH policy and CapMap.

use super::ipset::{self, internet_set, is_exit_route, render_net, wildcard_set, IpSet, Span};
use super::model::{Alias, AutoGroup, Grant, Policy, PolicyError, ProtoPorts};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A user as the policy engine sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopoUser {
    pub id: u64,
    /// Short name (`alice`); matched by `alice@` selectors.
    pub name: String,
    /// Email, if the user has one; matched by `alice@example.com`.
    pub email: Option<String>,
}

impl TopoUser {
    /// Login name: the email when there is one, else `name@`.
    pub fn login_name(&self) -> String {
        match &self.email {
            Some(e) if !e.is_empty() => e.clone(),
            _ => format!("{}@", self.name),
        }
    }
}

/// A node as the policy engine sees it. A node with any tag is "tagged" and
/// has no owner for policy purposes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TopoNode {
    /// Node ID (> 0, unique). Lower IDs win HA primary-route elections.
    pub id: u64,
    /// Hostname / given name (used in explain output and test labels).
    pub name: String,
    /// Owner; ignored when `tags` is non-empty.
    pub user_id: Option<u64>,
    pub tags: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Routes the node advertises (Hostinfo.RoutableIPs).
    pub advertised_routes: Vec<IpNet>,
    /// Routes approved for the node (admin or autoApprovers). Only routes
    /// that are both advertised and approved are served.
    pub approved_routes: Vec<IpNet>,
}

impl TopoNode {
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }
    pub fn ips(&self) -> Vec<IpAddr> {
        let mut v = Vec::with_capacity(2);
        if let Some(a) = self.ipv4 {
            v.push(IpAddr::V4(a));
        }
        if let Some(a) = self.ipv6 {
            v.push(IpAddr::V6(a));
        }
        v
    }
    /// Approved, advertised, non-exit routes.
    pub fn subnet_routes(&self) -> Vec<IpNet> {
        self.advertised_routes
            .iter()
            .filter(|r| !is_exit_route(r) && self.approved_routes.contains(r))
            .cloned()
            .collect()
    }
    /// Approved, advertised exit routes.
    pub fn exit_routes(&self) -> Vec<IpNet> {
        self.advertised_routes
            .iter()
            .filter(|r| is_exit_route(r) && self.approved_routes.contains(r))
            .cloned()
            .collect()
    }
}

/// The tailnet the policy is compiled against.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Topology {
    pub users: Vec<TopoUser>,
    pub nodes: Vec<TopoNode>,
    /// Tailnet-wide settings and roles.
    #[serde(default)]
    pub settings: TailnetSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TailnetSettings {
    /// Taildrop enabled (SaaS default: true).
    pub file_sharing: bool,
    /// `default-auto-update` value.
    pub auto_update: bool,
    /// The tailnet owner (`autogroup:owner`, also an admin).
    pub owner_user_id: Option<u64>,
    /// Users with the admin role (`autogroup:admin`).
    pub admin_user_ids: Vec<u64>,
    /// Email domains that belong to this tailnet and may be used in
    /// `user:*@<domain>` / `localpart:*@<domain>`. Empty = no restriction.
    pub domains: Vec<String>,
}

impl Default for TailnetSettings {
    fn default() -> Self {
        TailnetSettings {
            file_sharing: true,
            auto_update: false,
            owner_user_id: None,
            admin_user_ids: vec![],
            domains: vec![],
        }
    }
}

// ---------------------------------------------------------------------------
// internal rule representation

#[derive(Debug, Clone)]
pub(crate) struct Dst {
    pub ip: String,
    pub set: Span,
    pub ports: (u16, u16),
}

#[derive(Debug, Clone)]
pub(crate) struct CapG {
    pub dsts: Vec<IpNet>,
    /// Shared by every destination of the grant.
    pub cap_map: Arc<Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// Interned (see [`Ctx::intern`]): rules with equal sources share one
    /// list, so per-destination and per-node copies cost a pointer, and
    /// the pointer identifies the list when rules are merged.
    pub src: Arc<[String]>,
    pub src_set: Arc<IpSet>,
    pub proto: Vec<u8>,
    pub dst: Vec<Dst>,
    pub cap: Vec<CapG>,
}

impl Rule {
    /// Rules with the same key merge: same (interned) sources, same protocols.
    fn key(&self) -> RuleKey {
        (
            Arc::as_ptr(&self.src) as *const () as usize,
            self.proto.clone(),
        )
    }
    fn dst_union(&self) -> IpSet {
        let mut s = IpSet::new();
        for d in &self.dst {
            d.set.add_to(&mut s);
        }
        for c in &self.cap {
            for n in &c.dsts {
                match n {
                    IpNet::V4(n) => s.v4.push(ipset::v4_range(n)),
                    IpNet::V6(n) => s.v6.push(ipset::v6_range(n)),
                }
            }
        }
        s.normalize();
        s
    }
    pub(crate) fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("SrcIPs".into(), json!(&*self.src));
        if !self.dst.is_empty() {
            let d: Vec<Value> = self
                .dst
                .iter()
                .map(|d| json!({"IP": d.ip, "Ports": {"First": d.ports.0, "Last": d.ports.1}}))
                .collect();
            m.insert("DstPorts".into(), Value::Array(d));
        }
        if !self.proto.is_empty() {
            m.insert("IPProto".into(), json!(self.proto));
        }
        if !self.cap.is_empty() {
            let c: Vec<Value> = self
                .cap
                .iter()
                .map(|c| {
                    let d: Vec<String> = c.dsts.iter().map(|n| n.to_string()).collect();
                    json!({"Dsts": d, "CapMap": &*c.cap_map})
                })
                .collect();
            m.insert("CapGrant".into(), Value::Array(c));
        }
        Value::Object(m)
    }
}

fn set_from_strings(v: &[String]) -> IpSet {
    let mut s = IpSet::new();
    for x in v {
        if let Some(p) = ipset::parse_rule_ip(x) {
            s.v4.extend_from_slice(&p.v4);
            s.v6.extend_from_slice(&p.v6);
        }
    }
    s.normalize();
    s
}

/// See [`Rule::key`].
type RuleKey = (usize, Vec<u8>);

fn merge_rules(rules: Vec<Rule>) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::with_capacity(rules.len());
    let mut idx: HashMap<RuleKey, usize> = HashMap::new();
    for r in rules {
        if !r.cap.is_empty() {
            out.push(r);
            continue;
        }
        let k = r.key();
        if let Some(&i) = idx.get(&k) {
            out[i].dst.extend(r.dst);
        } else {
            idx.insert(k, out.len());
            out.push(r);
        }
    }
    out
}

struct SelfData {
    srcs: Arc<SrcData>,
    ip: Vec<ProtoPorts>,
    app: Option<Arc<Map<String, Value>>>,
}

/// What a grant's source list resolves to, computed once per list (an
/// ACL entry's grants share theirs).
struct SrcData {
    resolved: Vec<IpSet>,
    merged: Arc<IpSet>,
    /// SrcIPs (empty when the sources resolve to nothing).
    strings: Arc<[String]>,
    set: Arc<IpSet>,
}

struct ViaData {
    tags: Vec<String>,
    dsts: Vec<IpNet>,
    internet: bool,
    ip: Vec<ProtoPorts>,
    src: Arc<[String]>,
    src_set: Arc<IpSet>,
}

struct CGrant {
    /// Where the grant came from (`acls[3]`, `grants[0]`), for errors.
    label: String,
    rules: Vec<Rule>,
    self_data: Option<SelfData>,
    via: Option<ViaData>,
    /// Source set of the grant (for via route steering).
    src_set: Arc<IpSet>,
    dst_prefixes: Vec<IpNet>,
    dst_internet: bool,
    is_via: bool,
    via_tags: Vec<String>,
}

const COMPANIONS: &[(&str, &str)] = &[
    ("tailscale.com/cap/drive", "tailscale.com/cap/drive-sharer"),
    ("tailscale.com/cap/relay", "tailscale.com/cap/relay-target"),
];

fn companion_rules(
    ctx: &Ctx,
    dst_strings: &[String],
    src_prefixes: &[IpNet],
    app: &Map<String, Value>,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for (orig, comp) in COMPANIONS {
        if app.contains_key(*orig) {
            let mut cm = Map::new();
            cm.insert((*comp).to_string(), Value::Null);
            out.push(Rule {
                src: ctx.intern(dst_strings.to_vec()),
                src_set: Arc::new(set_from_strings(dst_strings)),
                proto: vec![],
                dst: vec![],
                cap: vec![CapG {
                    dsts: src_prefixes.to_vec(),
                    cap_map: Arc::new(cm),
                }],
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// resolution context

pub(crate) struct Ctx<'a> {
    pub pol: &'a Policy,
    pub topo: &'a Topology,
    pub node_ips: Vec<Vec<IpAddr>>,
    pub subnets: Vec<Vec<IpNet>>,
    pub is_exit: Vec<bool>,
    pub wildcard: IpSet,
    pub internet: IpSet,
    /// user id → indexes of that user's untagged nodes
    pub user_nodes: HashMap<u64, Vec<usize>>,
    cache: std::cell::RefCell<HashMap<Alias, IpSet>>,
    atom_cache: std::cell::RefCell<HashMap<Alias, Vec<(String, Span)>>>,
    /// Source lists by the address of the grant's shared alias list.
    src_cache: std::cell::RefCell<HashMap<usize, Arc<SrcData>>>,
    interned: std::cell::RefCell<std::collections::HashSet<Arc<[String]>>>,
    budget: Budget,
}

/// Bounds the work a compile may do: entries (source strings, destination
/// entries, per-node filter entries) counted as they are made. A policy
/// that would exceed it is refused with the rule that tipped it over,
/// instead of eating the router's memory.
struct Budget {
    limit: u64,
    spent: std::cell::Cell<u64>,
    /// The rule being compiled.
    current: std::cell::RefCell<String>,
    /// Set once when the limit is passed: the rule to blame.
    over: std::cell::RefCell<Option<String>>,
}

impl Budget {
    fn charge(&self, n: usize) -> bool {
        let s = self.spent.get().saturating_add(n as u64);
        self.spent.set(s);
        if s > self.limit && self.over.borrow().is_none() {
            *self.over.borrow_mut() = Some(self.current.borrow().clone());
        }
        self.is_over()
    }
    fn is_over(&self) -> bool {
        self.over.borrow().is_some()
    }
    fn blame(&self, label: &str) {
        label.clone_into(&mut self.current.borrow_mut());
    }
}

impl<'a> Ctx<'a> {
    pub fn new(pol: &'a Policy, topo: &'a Topology) -> Self {
        let mut user_nodes: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, n) in topo.nodes.iter().enumerate() {
            if !n.is_tagged() {
                if let Some(u) = n.user_id {
                    user_nodes.entry(u).or_default().push(i);
                }
            }
        }
        Ctx {
            pol,
            topo,
            node_ips: topo.nodes.iter().map(|n| n.ips()).collect(),
            subnets: topo.nodes.iter().map(|n| n.subnet_routes()).collect(),
            is_exit: topo
                .nodes
                .iter()
                .map(|n| !n.exit_routes().is_empty())
                .collect(),
            wildcard: wildcard_set(),
            internet: internet_set(),
            user_nodes,
            cache: Default::default(),
            atom_cache: Default::default(),
            src_cache: Default::default(),
            interned: Default::default(),
            budget: Budget {
                limit: u64::MAX,
                spent: Default::default(),
                current: Default::default(),
                over: Default::default(),
            },
        }
    }

    /// One shared copy of each distinct source list.
    fn intern(&self, v: Vec<String>) -> Arc<[String]> {
        let mut set = self.interned.borrow_mut();
        if let Some(a) = set.get(v.as_slice()) {
            return a.clone();
        }
        let a: Arc<[String]> = v.into();
        set.insert(a.clone());
        a
    }

    /// The resolved sources of a grant, once per shared list.
    fn src_data(&self, src: &Arc<[Alias]>) -> Arc<SrcData> {
        let key = Arc::as_ptr(src) as *const () as usize;
        if let Some(d) = self.src_cache.borrow().get(&key) {
            return d.clone();
        }
        let resolved: Vec<IpSet> = src.iter().map(|a| self.resolve(a)).collect();
        let mut merged = IpSet::new();
        for r in &resolved {
            merged.v4.extend_from_slice(&r.v4);
            merged.v6.extend_from_slice(&r.v6);
        }
        merged.normalize();
        let strings = if merged.is_empty() {
            vec![]
        } else {
            self.src_strings(src)
        };
        self.budget.charge(strings.len() + resolved.len());
        let set = Arc::new(set_from_strings(&strings));
        let d = Arc::new(SrcData {
            resolved,
            merged: Arc::new(merged),
            strings: self.intern(strings),
            set,
        });
        self.src_cache.borrow_mut().insert(key, d.clone());
        d
    }

    pub fn find_user(&self, token: &str) -> Option<&'a TopoUser> {
        let t = token.strip_suffix('@').unwrap_or(token);
        let mut found = None;
        for u in &self.topo.users {
            if u.email.as_deref() == Some(t) && !t.is_empty() {
                return Some(u);
            }
            if u.name == t && found.is_none() {
                found = Some(u);
            }
        }
        found
    }

    fn add_node(&self, s: &mut IpSet, i: usize) {
        for ip in &self.node_ips[i] {
            s.push_addr(*ip);
        }
    }

    fn user_set(&self, uid: u64) -> IpSet {
        let mut s = IpSet::new();
        if let Some(ns) = self.user_nodes.get(&uid) {
            for &i in ns {
                self.add_node(&mut s, i);
            }
        }
        s.normalize();
        s
    }

    /// Resolve a selector to its address set (autogroup:self → empty).
    pub fn resolve(&self, a: &Alias) -> IpSet {
        if let Some(s) = self.cache.borrow().get(a) {
            return s.clone();
        }
        let mut s = IpSet::new();
        match a {
            Alias::Wildcard => s = self.wildcard.clone(),
            Alias::Prefix(p) => s.add_net(p),
            Alias::Host(h) => {
                if let Some(p) = self.pol.hosts.get(h) {
                    s.add_net(p);
                }
            }
            Alias::User(u) => {
                if let Some(u) = self.find_user(u) {
                    s = self.user_set(u.id);
                }
            }
            Alias::Group(g) => {
                if let Some(ms) = self.pol.groups.get(g) {
                    for m in ms {
                        if let Some(u) = self.find_user(m) {
                            s.union_with(&self.user_set(u.id));
                        }
                    }
                }
            }
            Alias::Tag(t) => {
                for (i, n) in self.topo.nodes.iter().enumerate() {
                    if n.tags.iter().any(|x| x == t) {
                        self.add_node(&mut s, i);
                    }
                }
            }
            Alias::Auto(AutoGroup::Member) => {
                for (i, n) in self.topo.nodes.iter().enumerate() {
                    if !n.is_tagged() {
                        self.add_node(&mut s, i);
                    }
                }
            }
            Alias::Auto(AutoGroup::Tagged) => {
                for (i, n) in self.topo.nodes.iter().enumerate() {
                    if n.is_tagged() {
                        self.add_node(&mut s, i);
                    }
                }
            }
            Alias::Auto(AutoGroup::Internet) => s = self.internet.clone(),
            Alias::Auto(AutoGroup::DangerAll) => s = IpSet::all(),
            Alias::Auto(AutoGroup::Admin) | Alias::Auto(AutoGroup::Owner) => {
                let owner = *a == Alias::Auto(AutoGroup::Owner);
                let st = &self.topo.settings;
                for u in &self.topo.users {
                    let is_owner = st.owner_user_id == Some(u.id);
                    if is_owner || (!owner && st.admin_user_ids.contains(&u.id)) {
                        s.union_with(&self.user_set(u.id));
                    }
                }
            }
            Alias::Auto(_) | Alias::UnknownAuto(_) => {}
            Alias::UserDomain(d) => {
                for u in &self.topo.users {
                    if let Some(e) = &u.email {
                        if e.rsplit_once('@').map(|x| x.1) == Some(d.as_str()) {
                            s.union_with(&self.user_set(u.id));
                        }
                    }
                }
            }
        }
        s.normalize();
        self.cache.borrow_mut().insert(a.clone(), s.clone());
        s
    }

    /// Every node address inside `set`, one string each, sorted.
    fn node_ip_strings(&self, set: &IpSet) -> Vec<String> {
        let mut ips: Vec<IpAddr> = self
            .node_ips
            .iter()
            .flatten()
            .filter(|ip| set.contains(**ip))
            .cloned()
            .collect();
        ips.sort_by_key(|ip| ip_sort_key(*ip));
        ips.dedup();
        ips.iter().map(|ip| ip.to_string()).collect()
    }

    pub fn node_in(&self, i: usize, s: &IpSet) -> bool {
        self.node_ips[i].iter().any(|ip| s.contains(*ip))
    }

    /// Approved subnet routes of the whole tailnet, deduplicated, in node order.
    fn approved_subnet_strings(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for r in self.subnets.iter().flatten() {
            let s = r.to_string();
            if seen.insert(s.clone()) {
                out.push(s);
            }
        }
        out
    }

    /// The entries a selector contributes to a rule, spelled the way SaaS
    /// writes them: every node address on its own (adjacent node addresses
    /// are never merged into ranges), literal prefixes as written, and the
    /// wildcard / internet sets as their canonical ranges.
    pub fn atoms(&self, a: &Alias) -> Vec<(String, Span)> {
        if let Some(v) = self.atom_cache.borrow().get(a) {
            return v.clone();
        }
        let out: Vec<(String, Span)> = match a {
            Alias::Wildcard => self
                .wildcard
                .strings()
                .into_iter()
                .map(|s| {
                    let set = ipset::parse_rule_ip(&s).unwrap_or_default();
                    (s, Span::from_set(&set))
                })
                .collect(),
            // SaaS spells the internet as seven explicit ranges, even the
            // IPv6 one that is really 2000::/3.
            Alias::Auto(AutoGroup::Internet) => {
                let mut v = Vec::new();
                for &(a, b) in &self.internet.v4 {
                    v.push((
                        format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b)),
                        Span::V4(a, b),
                    ));
                }
                for &(a, b) in &self.internet.v6 {
                    v.push((
                        format!("{}-{}", Ipv6Addr::from(a), Ipv6Addr::from(b)),
                        Span::V6(a, b),
                    ));
                }
                v
            }
            Alias::Auto(AutoGroup::DangerAll) => vec![("*".to_string(), Span::All)],
            Alias::Prefix(p) => vec![(render_net(p), Span::from_net(p))],
            Alias::Host(h) => match self.pol.hosts.get(h) {
                Some(p) => vec![(render_net(p), Span::from_net(p))],
                None => vec![],
            },
            _ => {
                let set = self.resolve(a);
                let mut ips: Vec<IpAddr> = self
                    .node_ips
                    .iter()
                    .flatten()
                    .filter(|ip| set.contains(**ip))
                    .cloned()
                    .collect();
                ips.sort_by_key(|ip| ip_sort_key(*ip));
                ips.dedup();
                ips.into_iter()
                    .map(|ip| (ip.to_string(), Span::from_addr(ip)))
                    .collect()
            }
        };
        self.atom_cache.borrow_mut().insert(a.clone(), out.clone());
        out
    }

    /// SrcIPs for a list of source selectors.
    fn src_strings(&self, srcs: &[Alias]) -> Vec<String> {
        if srcs.contains(&Alias::Auto(AutoGroup::DangerAll)) {
            return vec!["*".into()];
        }
        let mut out: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for a in srcs {
            for (s, _) in self.atoms(a) {
                if seen.insert(s.clone()) {
                    out.push(s);
                }
            }
        }
        if srcs.contains(&Alias::Wildcard) {
            for s in self.approved_subnet_strings() {
                if seen.insert(s.clone()) {
                    out.push(s);
                }
            }
        }
        sort_rule_strings(&mut out);
        out
    }

    fn dst_ports(&self, dsts: &[&Alias], ports: &[(u16, u16)]) -> Vec<Dst> {
        let mut out = Vec::new();
        for d in dsts {
            if self.budget.charge(ports.len()) {
                break;
            }
            if **d == Alias::Wildcard {
                for p in ports {
                    out.push(Dst {
                        ip: "*".into(),
                        set: Span::All,
                        ports: *p,
                    });
                }
                continue;
            }
            for (ip, set) in &self.atoms(d) {
                for p in ports {
                    out.push(Dst {
                        ip: ip.clone(),
                        set: *set,
                        ports: *p,
                    });
                }
            }
        }
        // Usually one or two entries (an ACL's grant has one destination):
        // Vec's first allocation holds four, which for 30,000 grants is
        // ~10 MiB of nothing.
        out.shrink_to_fit();
        out
    }

    fn compile_grant(&self, g: &Grant, label: &str) -> Option<CGrant> {
        if self.budget.is_over() {
            return None;
        }
        self.budget.blame(label);
        let self_dst = g.dst.contains(&Alias::Auto(AutoGroup::SelfDevices));
        let other: Vec<&Alias> = g
            .dst
            .iter()
            .filter(|d| **d != Alias::Auto(AutoGroup::SelfDevices))
            .collect();
        let sd = self.src_data(&g.src);
        let mut dst_prefixes = Vec::new();
        let mut dst_internet = false;
        for d in &g.dst {
            match d {
                Alias::Auto(AutoGroup::Internet) => dst_internet = true,
                Alias::Auto(AutoGroup::SelfDevices) => {}
                _ => dst_prefixes.extend(self.resolve(d).prefixes()),
            }
        }
        self.budget.charge(dst_prefixes.len());
        let mut cg = CGrant {
            label: label.to_string(),
            rules: vec![],
            self_data: None,
            via: None,
            src_set: sd.merged.clone(),
            dst_prefixes,
            dst_internet,
            is_via: !g.via.is_empty(),
            via_tags: g.via.clone(),
        };
        if !g.via.is_empty() {
            if g.ip.is_empty() || sd.merged.is_empty() {
                return Some(cg);
            }
            cg.via = Some(ViaData {
                tags: g.via.clone(),
                dsts: cg.dst_prefixes.clone(),
                internet: cg.dst_internet,
                ip: g.ip.clone(),
                src_set: sd.set.clone(),
                src: sd.strings.clone(),
            });
            return Some(cg);
        }
        if g.src.is_empty() || g.dst.is_empty() {
            return None;
        }
        let app = g.app.clone().map(Arc::new);
        if !other.is_empty() {
            for ipp in &g.ip {
                let d = self.dst_ports(&other, &ipp.ports);
                if !d.is_empty() && !sd.strings.is_empty() {
                    cg.rules.push(Rule {
                        src: sd.strings.clone(),
                        src_set: sd.set.clone(),
                        proto: ipp.proto.clone(),
                        dst: d,
                        cap: vec![],
                    });
                }
            }
            if let Some(app) = &app {
                let mut caps = Vec::new();
                let mut dst_strings = Vec::new();
                for d in &other {
                    let s = self.resolve(d);
                    caps.push(CapG {
                        dsts: s.prefixes(),
                        cap_map: app.clone(),
                    });
                    dst_strings.extend(self.atoms(d).into_iter().map(|x| x.0));
                }
                self.budget.charge(caps.len() + dst_strings.len());
                if !caps.is_empty() {
                    let mut src_prefixes = Vec::new();
                    for r in &sd.resolved {
                        src_prefixes.extend(r.prefixes());
                    }
                    cg.rules.push(Rule {
                        src: sd.strings.clone(),
                        src_set: sd.set.clone(),
                        proto: vec![],
                        dst: vec![],
                        cap: caps,
                    });
                    if other.iter().any(|a| **a == Alias::Wildcard) {
                        dst_strings.extend(self.approved_subnet_strings());
                    }
                    cg.rules
                        .extend(companion_rules(self, &dst_strings, &src_prefixes, app));
                }
            }
        }
        // Kept until the compile ends, one per grant: no spare capacity.
        cg.rules.shrink_to_fit();
        cg.dst_prefixes.shrink_to_fit();
        if self_dst {
            cg.self_data = Some(SelfData {
                srcs: sd,
                ip: g.ip.clone(),
                app,
            });
        }
        Some(cg)
    }

    fn self_rules(&self, cg: &CGrant, uid: u64) -> Vec<Rule> {
        let Some(sd) = &cg.self_data else {
            return vec![];
        };
        let Some(same) = self.user_nodes.get(&uid) else {
            return vec![];
        };
        if self.budget.is_over() {
            return vec![];
        }
        let mut src = IpSet::new();
        for r in &sd.srcs.resolved {
            for &i in same {
                if self.node_in(i, r) {
                    self.add_node(&mut src, i);
                }
            }
        }
        src.normalize();
        if src.is_empty() {
            return vec![];
        }
        let src_strings = self.intern(self.node_ip_strings(&src));
        let src = Arc::new(src);
        let mut out = Vec::new();
        for ipp in &sd.ip {
            let mut d = Vec::new();
            for &i in same {
                for p in &ipp.ports {
                    for ip in &self.node_ips[i] {
                        d.push(Dst {
                            ip: ip.to_string(),
                            set: Span::from_addr(*ip),
                            ports: *p,
                        });
                    }
                }
            }
            self.budget.charge(d.len());
            if !d.is_empty() {
                out.push(Rule {
                    src: src_strings.clone(),
                    src_set: src.clone(),
                    proto: ipp.proto.clone(),
                    dst: d,
                    cap: vec![],
                });
            }
        }
        if let Some(app) = &sd.app {
            let mut caps = Vec::new();
            let mut dst_strings = Vec::new();
            for &i in same {
                let dsts: Vec<IpNet> = self.node_ips[i].iter().map(|ip| IpNet::from(*ip)).collect();
                dst_strings.extend(self.node_ips[i].iter().map(|ip| ip.to_string()));
                caps.push(CapG {
                    dsts,
                    cap_map: app.clone(),
                });
            }
            if !caps.is_empty() {
                out.push(Rule {
                    src: src_strings.clone(),
                    src_set: src.clone(),
                    proto: vec![],
                    dst: vec![],
                    cap: caps,
                });
                out.extend(companion_rules(self, &dst_strings, &src.prefixes(), app));
            }
        }
        out
    }

    fn via_rules(&self, cg: &CGrant, i: usize) -> Vec<Rule> {
        let Some(v) = &cg.via else {
            return vec![];
        };
        let node = &self.topo.nodes[i];
        if !v.tags.iter().any(|t| node.tags.contains(t)) {
            return vec![];
        }
        let mut prefixes: Vec<IpNet> = Vec::new();
        for d in &v.dsts {
            if self.subnets[i].iter().any(|r| nets_overlap(r, d)) {
                prefixes.push(*d);
            }
        }
        if v.internet && self.is_exit[i] {
            prefixes.extend(self.internet.prefixes());
        }
        if prefixes.is_empty() {
            return vec![];
        }
        let mut out = Vec::new();
        for ipp in &v.ip {
            let mut d = Vec::new();
            for p in &prefixes {
                let set = Span::from_net(p);
                for port in &ipp.ports {
                    d.push(Dst {
                        ip: p.to_string(),
                        set,
                        ports: *port,
                    });
                }
            }
            out.push(Rule {
                src: v.src.clone(),
                src_set: v.src_set.clone(),
                proto: ipp.proto.clone(),
                dst: d,
                cap: vec![],
            });
        }
        out
    }
}

fn ip_sort_key(ip: IpAddr) -> (u8, u128) {
    match ip {
        IpAddr::V4(a) => (4, u32::from(a) as u128),
        IpAddr::V6(a) => (6, u128::from(a)),
    }
}

fn rule_string_key(s: &str) -> (u8, u128, u128) {
    match ipset::parse_rule_ip(s) {
        Some(set) => {
            if let Some(&(a, b)) = set.v4.first() {
                (4, a as u128, b as u128)
            } else if let Some(&(a, b)) = set.v6.first() {
                (6, a, b)
            } else {
                (9, 0, 0)
            }
        }
        None => (9, 0, 0),
    }
}

/// Canonical order for SrcIPs: IPv4 before IPv6, by address.
fn sort_rule_strings(v: &mut [String]) {
    v.sort_by(|a, b| {
        rule_string_key(a)
            .cmp(&rule_string_key(b))
            .then_with(|| a.cmp(b))
    });
}

pub(crate) fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

// ---------------------------------------------------------------------------
// compiled output

/// Result of compiling a policy against a topology. Per-node accessors take
/// a node ID; unknown IDs yield empty results.
pub struct Compiled {
    allow_all: bool,
    index: HashMap<u64, usize>,
    names: Vec<String>,
    ids: Vec<u64>,
    filters: Vec<Vec<Rule>>,
    /// unreduced rules per node (matchers), shared where possible
    peers: Vec<Vec<usize>>,
    peer_routes: Vec<Vec<(usize, Vec<IpNet>)>>,
    primary: Vec<Vec<IpNet>>,
    ssh: Vec<Option<Value>>,
    cap_maps: Vec<Map<String, Value>>,
    node_ips: Vec<Vec<IpAddr>>,
    is_exit: Vec<bool>,
    tags: Vec<Vec<String>>,
}

fn bit_set(v: &mut [u64], i: usize) {
    v[i / 64] |= 1 << (i % 64);
}
fn bit_get(v: &[u64], i: usize) -> bool {
    v[i / 64] & (1 << (i % 64)) != 0
}

struct Matcher {
    src: Arc<IpSet>,
    dst: IpSet,
}

impl Matcher {
    fn from_rule(r: &Rule) -> Matcher {
        Matcher {
            src: r.src_set.clone(),
            dst: r.dst_union(),
        }
    }
}

struct NodeView<'c> {
    ips: &'c [IpAddr],
    subnets: &'c [IpNet],
    is_exit: bool,
}

fn dests_is_internet(m: &Matcher, internet: &IpSet) -> bool {
    m.dst.covers_net(&"0.0.0.0/0".parse().unwrap())
        || m.dst.covers_net(&"::/0".parse().unwrap())
        || internet.is_subset_of(&m.dst)
}

fn can_access_route(ms: &[&Matcher], v: &NodeView, route: &IpNet, internet: &IpSet) -> bool {
    for m in ms {
        // An exit node forwarding a subnet's traffic to the internet needs
        // the route back to that subnet.
        if v.is_exit && m.src.overlaps_net(route) && dests_is_internet(m, internet) {
            return true;
        }
        let src_ip = v.ips.iter().any(|ip| m.src.contains(*ip));
        let dst_ip = v.ips.iter().any(|ip| m.dst.contains(*ip));
        if src_ip && m.dst.overlaps_net(route) {
            return true;
        }
        if m.src.overlaps_net(route) && dst_ip {
            return true;
        }
        if !v.subnets.is_empty() {
            if v.subnets.iter().any(|r| m.src.overlaps_net(r)) && m.dst.overlaps_net(route) {
                return true;
            }
            if m.src.overlaps_net(route) && v.subnets.iter().any(|r| m.dst.overlaps_net(r)) {
                return true;
            }
        }
    }
    false
}

fn reduce_cap(r: &Rule, n: &NodeView) -> Option<Rule> {
    let mut caps = Vec::new();
    for c in &r.cap {
        let mut m: Vec<IpNet> = Vec::new();
        for d in &c.dsts {
            if d.prefix_len() == d.max_prefix_len() {
                if n.ips.contains(&d.addr()) {
                    m.push(*d);
                }
            } else {
                for ip in n.ips {
                    if d.contains(ip) {
                        m.push(IpNet::from(*ip));
                    }
                }
            }
        }
        for d in &c.dsts {
            for s in n.subnets {
                if nets_overlap(d, s) {
                    m.push(*d);
                }
            }
        }
        if !m.is_empty() {
            m.sort_by(cmp_net);
            m.dedup();
            caps.push(CapG {
                dsts: m,
                cap_map: c.cap_map.clone(),
            });
        }
    }
    if caps.is_empty() {
        return None;
    }
    Some(Rule {
        src: r.src.clone(),
        src_set: Default::default(),
        proto: vec![],
        dst: vec![],
        cap: caps,
    })
}

/// Does a destination entry concern node `n` (its address, one of its
/// approved subnet routes, or the internet when `n` is an exit node)?
fn keep_dst(d: &Dst, n: &NodeView, internet: &IpSet) -> bool {
    n.ips.iter().any(|ip| d.set.contains(*ip))
        || n.subnets.iter().any(|s| d.set.overlaps_net(s))
        || (n.is_exit && d.set.is_subset_of(internet))
}

/// The node's packet filter: the unreduced rule list (grant by grant:
/// shared rules, then this node's autogroup:self and via rules), merged by
/// (SrcIPs, IPProto) in order of first appearance, then reduced to the
/// entries that concern the node.
fn build_filter(
    ctx: &Ctx,
    cgs: &[CGrant],
    keys: &[Vec<RuleKey>],
    hits: &[(u32, u32, u32)],
    self_ex: Option<&[Vec<Rule>]>,
    via_ex: Option<&[Vec<Rule>]>,
    n: &NodeView,
) -> Vec<Rule> {
    let (budget, internet) = (&ctx.budget, &ctx.internet);
    let mut cursor = 0usize;
    enum Slot<'a> {
        Merged(&'a Rule, Vec<Dst>),
        Cap(Option<Rule>),
    }
    let mut slots: Vec<Slot> = Vec::new();
    let mut idx: HashMap<RuleKey, usize> = HashMap::new();
    for (gi, c) in cgs.iter().enumerate() {
        if budget.is_over() {
            return vec![];
        }
        budget.blame(&c.label);
        let extra = self_ex
            .map(|v| v[gi].as_slice())
            .unwrap_or(&[])
            .iter()
            .chain(via_ex.map(|v| v[gi].as_slice()).unwrap_or(&[]).iter());
        let shared = c
            .rules
            .iter()
            .enumerate()
            .map(|(ri, r)| (r, Some((ri, &keys[gi][ri]))));
        for (r, key) in shared.chain(extra.map(|r| (r, None))) {
            if !r.cap.is_empty() {
                slots.push(Slot::Cap(reduce_cap(r, n)));
                continue;
            }
            let k = match key {
                Some((_, k)) => k.clone(),
                None => r.key(),
            };
            let si = *idx.entry(k).or_insert_with(|| {
                slots.push(Slot::Merged(r, Vec::new()));
                slots.len() - 1
            });
            if let Slot::Merged(_, dsts) = &mut slots[si] {
                let n0 = dsts.len();
                match key {
                    // shared rule: the entries concerning this node were
                    // found once for all nodes (see `entry_hits`)
                    Some((ri, _)) => {
                        while cursor < hits.len()
                            && (hits[cursor].0 as usize, hits[cursor].1 as usize) < (gi, ri)
                        {
                            cursor += 1;
                        }
                        while cursor < hits.len()
                            && (hits[cursor].0 as usize, hits[cursor].1 as usize) == (gi, ri)
                        {
                            dsts.push(r.dst[hits[cursor].2 as usize].clone());
                            cursor += 1;
                        }
                    }
                    None => {
                        for d in &r.dst {
                            if keep_dst(d, n, internet) {
                                dsts.push(d.clone());
                            }
                        }
                    }
                }
                budget.charge(dsts.len() - n0);
            }
        }
    }
    slots
        .into_iter()
        .filter_map(|s| match s {
            Slot::Cap(r) => r,
            Slot::Merged(_, d) if d.is_empty() => None,
            Slot::Merged(t, d) => Some(Rule {
                src: t.src.clone(),
                src_set: Default::default(),
                proto: t.proto.clone(),
                dst: d,
                cap: vec![],
            }),
        })
        .collect()
}

/// For every node, the (grant, rule, entry) triples of the shared rules
/// whose destination entry concerns it (same test as [`keep_dst`]),
/// found through the address index instead of testing every entry
/// against every node.
fn entry_hits(
    cgs: &[CGrant],
    index: &NodeIndex,
    views: &[NodeView],
    internet: &IpSet,
) -> Vec<Vec<(u32, u32, u32)>> {
    let mut hits: Vec<Vec<(u32, u32, u32)>> = vec![vec![]; views.len()];
    let mut buf = Vec::new();
    for (gi, c) in cgs.iter().enumerate() {
        for (ri, r) in c.rules.iter().enumerate() {
            for (ei, d) in r.dst.iter().enumerate() {
                buf.clear();
                index.span_nodes(&d.set, &mut buf);
                for &x in &index.routers {
                    if views[x].subnets.iter().any(|s| d.set.overlaps_net(s)) {
                        buf.push(x);
                    }
                }
                if !index.exits.is_empty() && d.set.is_subset_of(internet) {
                    buf.extend(index.exits.iter().cloned());
                }
                buf.sort_unstable();
                buf.dedup();
                for &x in &buf {
                    hits[x].push((gi as u32, ri as u32, ei as u32));
                }
            }
        }
    }
    hits
}

/// Sorted address → node index for finding the nodes inside a set.
struct NodeIndex {
    v4: Vec<(u32, usize)>,
    v6: Vec<(u128, usize)>,
    routers: Vec<usize>,
    exits: Vec<usize>,
    n: usize,
}

impl NodeIndex {
    fn new(views: &[NodeView]) -> NodeIndex {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, v) in views.iter().enumerate() {
            for ip in v.ips {
                match ip {
                    IpAddr::V4(a) => v4.push((u32::from(*a), i)),
                    IpAddr::V6(a) => v6.push((u128::from(*a), i)),
                }
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        NodeIndex {
            v4,
            v6,
            routers: (0..views.len())
                .filter(|&i| !views[i].subnets.is_empty())
                .collect(),
            exits: (0..views.len()).filter(|&i| views[i].is_exit).collect(),
            n: views.len(),
        }
    }

    fn span_nodes(&self, s: &Span, out: &mut Vec<usize>) {
        match *s {
            Span::Empty => {}
            Span::All => {
                out.extend(self.v4.iter().map(|x| x.1));
                out.extend(self.v6.iter().map(|x| x.1));
            }
            Span::V4(a, b) => {
                let lo = self.v4.partition_point(|x| x.0 < a);
                out.extend(self.v4[lo..].iter().take_while(|x| x.0 <= b).map(|x| x.1));
            }
            Span::V6(a, b) => {
                let lo = self.v6.partition_point(|x| x.0 < a);
                out.extend(self.v6[lo..].iter().take_while(|x| x.0 <= b).map(|x| x.1));
            }
        }
    }

    fn in_set(&self, s: &IpSet, out: &mut Vec<usize>) {
        for &(a, b) in &s.v4 {
            let lo = self.v4.partition_point(|x| x.0 < a);
            for &(x, i) in &self.v4[lo..] {
                if x > b {
                    break;
                }
                out.push(i);
            }
        }
        for &(a, b) in &s.v6 {
            let lo = self.v6.partition_point(|x| x.0 < a);
            for &(x, i) in &self.v6[lo..] {
                if x > b {
                    break;
                }
                out.push(i);
            }
        }
    }

    fn finish(&self, mut out: Vec<usize>) -> Vec<usize> {
        if out.len() > self.n {
            let mut seen = vec![false; self.n];
            out.retain(|&i| !std::mem::replace(&mut seen[i], true));
            out.sort_unstable();
        } else {
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    fn src_nodes(&self, m: &Matcher, views: &[NodeView]) -> Vec<usize> {
        let mut out = Vec::new();
        self.in_set(&m.src, &mut out);
        for &r in &self.routers {
            if views[r].subnets.iter().any(|s| m.src.overlaps_net(s)) {
                out.push(r);
            }
        }
        self.finish(out)
    }

    fn dst_nodes(&self, m: &Matcher, views: &[NodeView], internet: &IpSet) -> Vec<usize> {
        let mut out = Vec::new();
        self.in_set(&m.dst, &mut out);
        for &r in &self.routers {
            if views[r].subnets.iter().any(|s| m.dst.overlaps_net(s)) {
                out.push(r);
            }
        }
        if !self.exits.is_empty() && dests_is_internet(m, internet) {
            out.extend(self.exits.iter().cloned());
        }
        self.finish(out)
    }
}

fn cmp_net(a: &IpNet, b: &IpNet) -> std::cmp::Ordering {
    let ka = (matches!(a, IpNet::V6(_)), a.addr(), a.prefix_len());
    let kb = (matches!(b, IpNet::V6(_)), b.addr(), b.prefix_len());
    ka.cmp(&kb)
}

/// Compile `policy` against `topo`.
/// Entries (source strings, destination entries, per-node filter entries)
/// a compile may make for any tailnet: ~100 bytes each, so ~50 MB.
pub const COMPILE_BUDGET: u64 = 500_000;
/// … plus this many per node, since a large tailnet legitimately has
/// large filters (10,000 nodes with autogroup:self: ~105 per node).
pub const COMPILE_BUDGET_PER_NODE: u64 = 200;

/// Compiles without a bound (tests, `policy explain`).
pub fn compile(policy: &Policy, topo: &Topology) -> Compiled {
    compile_within(policy, topo, u64::MAX).expect("a compile without a budget cannot run over it")
}

/// Compiles within [`COMPILE_BUDGET`]: what the server does with a policy
/// it is given. Refused with the rule that would make it too large.
pub fn compile_bounded(policy: &Policy, topo: &Topology) -> Result<Compiled, PolicyError> {
    let limit = COMPILE_BUDGET + COMPILE_BUDGET_PER_NODE * topo.nodes.len() as u64;
    compile_within(policy, topo, limit).map_err(|rule| {
        PolicyError::Invalid(format!(
            "{rule} is too large: the policy would expand to more than {limit} filter \
             entries for this tailnet ({} nodes); use fewer, wider sources and destinations \
             (groups, tags, prefixes) or split it",
            topo.nodes.len()
        ))
    })
}

/// Compiles, or names the rule that took the work past `limit`.
fn compile_within(policy: &Policy, topo: &Topology, limit: u64) -> Result<Compiled, String> {
    let mut ctx = Ctx::new(policy, topo);
    ctx.budget.limit = limit;
    let over = |ctx: &Ctx| ctx.budget.over.borrow().clone().map_or(Ok(()), Err);
    let n = topo.nodes.len();
    let views: Vec<NodeView> = (0..n)
        .map(|i| NodeView {
            ips: &ctx.node_ips[i],
            subnets: &ctx.subnets[i],
            is_exit: ctx.is_exit[i],
        })
        .collect();
    let allow_all = !policy.has_filter_sections();

    // 1. compile grants (grants first, then acls)
    let cgs: Vec<CGrant> = effective_grants_iter(policy)
        .filter_map(|(g, label)| ctx.compile_grant(&g, &label))
        .collect();
    over(&ctx)?;

    // 2. per-node extra rules: autogroup:self (same for all nodes of a
    //    user) and via (per router), kept per grant to preserve order
    let global_keys: Vec<Vec<RuleKey>> = cgs
        .iter()
        .map(|c| c.rules.iter().map(|r| r.key()).collect())
        .collect();
    let global: Vec<Rule> = merge_rules(cgs.iter().flat_map(|c| c.rules.iter().cloned()).collect());
    let global_matchers: Vec<Matcher> = global.iter().map(Matcher::from_rule).collect();
    let has_self = cgs.iter().any(|c| c.self_data.is_some());
    let mut self_extras: HashMap<u64, Vec<Vec<Rule>>> = HashMap::new();
    if has_self {
        for &uid in ctx.user_nodes.keys() {
            let per_grant: Vec<Vec<Rule>> = cgs.iter().map(|c| ctx.self_rules(c, uid)).collect();
            self_extras.insert(uid, per_grant);
        }
    }
    let self_matchers: HashMap<u64, Vec<Matcher>> = self_extras
        .iter()
        .map(|(u, pg)| (*u, pg.iter().flatten().map(Matcher::from_rule).collect()))
        .collect();
    let via_extras: Vec<Option<Vec<Vec<Rule>>>> = (0..n)
        .map(|i| {
            let node = &topo.nodes[i];
            let relevant = cgs.iter().any(|c| {
                c.via
                    .as_ref()
                    .is_some_and(|v| v.tags.iter().any(|t| node.tags.contains(t)))
            });
            relevant.then(|| cgs.iter().map(|c| ctx.via_rules(c, i)).collect())
        })
        .collect();
    let via_matchers: Vec<Vec<Matcher>> = via_extras
        .iter()
        .map(|v| match v {
            Some(pg) => pg.iter().flatten().map(Matcher::from_rule).collect(),
            None => vec![],
        })
        .collect();
    let self_of = |i: usize| -> Option<u64> {
        let node = &topo.nodes[i];
        if node.is_tagged() {
            None
        } else {
            node.user_id
        }
    };

    // 3. reduced filters
    let index = NodeIndex::new(&views);
    let hits = entry_hits(&cgs, &index, &views, &ctx.internet);
    let filters: Vec<Vec<Rule>> = (0..n)
        .map(|i| {
            let se = self_of(i)
                .and_then(|u| self_extras.get(&u))
                .map(|v| v.as_slice());
            let ve = via_extras[i].as_deref();
            build_filter(&ctx, &cgs, &global_keys, &hits[i], se, ve, &views[i])
        })
        .collect();
    drop(hits);
    over(&ctx)?;

    // 4. peers (symmetric)
    let words = n.div_ceil(64).max(1);
    let mut rows = vec![vec![0u64; words]; n];
    {
        let handle = |ms: &[Matcher], only_for: Option<usize>, rows: &mut Vec<Vec<u64>>| {
            for m in ms {
                let srcs = index.src_nodes(m, &views);
                if srcs.is_empty() {
                    continue;
                }
                let dsts = index.dst_nodes(m, &views, &ctx.internet);
                if dsts.is_empty() {
                    continue;
                }
                let mut dst_bits = vec![0u64; words];
                for &b in &dsts {
                    bit_set(&mut dst_bits, b);
                }
                for &a in &srcs {
                    match only_for {
                        None => {
                            for (w, d) in rows[a].iter_mut().zip(dst_bits.iter()) {
                                *w |= *d;
                            }
                        }
                        Some(x) => {
                            // per-node matchers only count for pairs
                            // involving node x
                            if a == x {
                                for (w, d) in rows[a].iter_mut().zip(dst_bits.iter()) {
                                    *w |= *d;
                                }
                            } else if bit_get(&dst_bits, x) {
                                bit_set(&mut rows[a], x);
                            }
                        }
                    }
                }
            }
        };
        handle(&global_matchers, None, &mut rows);
        // self rules only relate a user's own nodes: every src×dst pair
        // involves one of them, so evaluate them once per user
        for ms in self_matchers.values() {
            handle(ms, None, &mut rows);
        }
        for (i, ms) in via_matchers.iter().enumerate() {
            if !ms.is_empty() {
                handle(ms, Some(i), &mut rows);
            }
        }
        // via grants: sources see the via-tagged routers that serve the
        // destination (also for app-only via grants, which emit no rules)
        for c in cgs.iter().filter(|c| c.is_via) {
            let routers: Vec<usize> = (0..n)
                .filter(|&v| {
                    let node = &topo.nodes[v];
                    c.via_tags.iter().any(|t| node.tags.contains(t))
                        && (c
                            .dst_prefixes
                            .iter()
                            .any(|d| ctx.subnets[v].iter().any(|r| nets_overlap(r, d)))
                            || (c.dst_internet && ctx.is_exit[v]))
                })
                .collect();
            if routers.is_empty() {
                continue;
            }
            let m = Matcher {
                src: c.src_set.clone(),
                dst: IpSet::new(),
            };
            for a in index.src_nodes(&m, &views) {
                for &v in &routers {
                    if v != a {
                        bit_set(&mut rows[a], v);
                    }
                }
            }
        }
    }
    // Symmetric: b sees a whenever a sees b. Walks the set bits only
    // (O(N²/64 + pairs)); testing every (a, b) both ways was 2·10⁸ bit
    // tests at 10,000 nodes, most of a restart's policy compile.
    for a in 0..n {
        for w in 0..words {
            let mut bits = rows[a][w];
            while bits != 0 {
                let b = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if b != a {
                    bit_set(&mut rows[b], a);
                }
            }
        }
    }
    let peers: Vec<Vec<usize>> = rows
        .iter()
        .enumerate()
        .map(|(a, row)| {
            let mut pa = Vec::new();
            for (w, &word) in row.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let b = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if b != a {
                        pa.push(b);
                    }
                }
            }
            pa.shrink_to_fit();
            pa
        })
        .collect();
    drop(rows);

    // 5. primary routes (lowest node ID among approved advertisers)
    let mut primary_of: BTreeMap<IpNet, usize> = BTreeMap::new();
    for (i, node) in topo.nodes.iter().enumerate() {
        for r in &ctx.subnets[i] {
            match primary_of.get(r) {
                Some(&j) if topo.nodes[j].id <= node.id => {}
                _ => {
                    primary_of.insert(*r, i);
                }
            }
        }
    }
    let primary: Vec<Vec<IpNet>> = (0..n)
        .map(|i| {
            ctx.subnets[i]
                .iter()
                .filter(|r| primary_of.get(r) == Some(&i))
                .cloned()
                .collect()
        })
        .collect();

    // 6. allowed IPs per (viewer, peer)
    // Only peers that serve routes can have more than their addresses.
    let mut peer_routes: Vec<Vec<(usize, Vec<IpNet>)>> = vec![vec![]; n];
    for v in 0..n {
        let empty: Vec<Matcher> = vec![];
        let sm = self_of(v)
            .and_then(|u| self_matchers.get(&u))
            .unwrap_or(&empty);
        let ms: Vec<&Matcher> = global_matchers
            .iter()
            .chain(sm.iter())
            .chain(via_matchers[v].iter())
            .collect();
        let ms = ms.as_slice();
        let mut per_peer = Vec::new();
        for &p in &peers[v] {
            if ctx.subnets[p].is_empty() && !ctx.is_exit[p] {
                continue;
            }
            let exit = topo.nodes[p].exit_routes();
            let candidates: Vec<IpNet> = primary[p].iter().cloned().chain(exit).collect();
            let mut routes: Vec<IpNet> = Vec::new();
            for r in &candidates {
                if can_access_route(ms, &views[v], r, &ctx.internet) {
                    routes.push(*r);
                }
            }
            for r in &primary[p] {
                if ctx.subnets[v].contains(r) && !routes.contains(r) {
                    routes.push(*r);
                }
            }
            let via = via_routes_for_peer(&ctx, &cgs, v, p);
            if !via.include.is_empty() || !via.exclude.is_empty() {
                routes.retain(|r| !via.exclude.contains(r) || via.include.contains(r));
                for r in &via.include {
                    if routes.contains(r) {
                        continue;
                    }
                    if primary[p].contains(r) || !via.use_primary.contains(r) {
                        routes.push(*r);
                    }
                }
            }
            if !routes.is_empty() {
                per_peer.push((p, routes));
            }
        }
        peer_routes[v] = per_peer;
    }

    // 7. SSH
    let prepared = super::ssh::prepare(&ctx, "https://unused");
    let ssh: Vec<Option<Value>> = (0..n)
        .map(|i| {
            prepared
                .as_ref()
                .map(|p| super::ssh::ssh_for_node(&ctx, p, i))
        })
        .collect();

    // 8. CapMap
    let cap_maps = super::nodeattrs::cap_maps(&ctx);

    Ok(Compiled {
        allow_all,
        index: topo
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id, i))
            .collect(),
        names: topo.nodes.iter().map(|n| n.name.clone()).collect(),
        ids: topo.nodes.iter().map(|n| n.id).collect(),
        filters,
        peers,
        peer_routes,
        primary,
        ssh,
        cap_maps,
        node_ips: ctx.node_ips.clone(),
        is_exit: ctx.is_exit.clone(),
        tags: topo.nodes.iter().map(|n| n.tags.clone()).collect(),
    })
}

#[derive(Default)]
struct ViaResult {
    include: Vec<IpNet>,
    exclude: Vec<IpNet>,
    use_primary: Vec<IpNet>,
}

fn via_routes_for_peer(ctx: &Ctx, cgs: &[CGrant], v: usize, p: usize) -> ViaResult {
    let mut res = ViaResult::default();
    if !cgs.iter().any(|c| c.is_via) {
        return res;
    }
    let viewer_match: Vec<bool> = cgs.iter().map(|c| ctx.node_in(v, &c.src_set)).collect();
    let peer = &ctx.topo.nodes[p];
    for (k, c) in cgs.iter().enumerate() {
        if !c.is_via || !viewer_match[k] {
            continue;
        }
        let mut matched: Vec<IpNet> = Vec::new();
        for d in &c.dst_prefixes {
            for r in &ctx.subnets[p] {
                if nets_overlap(d, r) {
                    matched.push(*r);
                }
            }
        }
        if c.dst_internet && ctx.is_exit[p] {
            matched.extend(peer.exit_routes());
        }
        if matched.is_empty() {
            continue;
        }
        if c.via_tags.iter().any(|t| peer.tags.contains(t)) {
            res.include.extend(matched);
        } else {
            res.exclude.extend(matched);
        }
    }
    if res.include.is_empty() && res.exclude.is_empty() {
        return res;
    }
    for (k, c) in cgs.iter().enumerate() {
        if !c.is_via || !viewer_match[k] {
            continue;
        }
        for d in &c.dst_prefixes {
            for inc in res.include.clone() {
                if !nets_overlap(d, &inc) {
                    continue;
                }
                let mut best: Option<u64> = None;
                for (j, node) in ctx.topo.nodes.iter().enumerate() {
                    if c.via_tags.iter().any(|t| node.tags.contains(t))
                        && ctx.subnets[j].contains(&inc)
                    {
                        best = Some(best.map_or(node.id, |b| b.min(node.id)));
                    }
                }
                if let Some(b) = best {
                    if peer.id != b {
                        res.include.retain(|x| *x != inc);
                        if !res.exclude.contains(&inc) {
                            res.exclude.push(inc);
                        }
                    }
                }
            }
        }
    }
    for (k, c) in cgs.iter().enumerate() {
        if c.is_via || !viewer_match[k] {
            continue;
        }
        for d in &c.dst_prefixes {
            for inc in &res.include {
                if nets_overlap(d, inc) && !res.use_primary.contains(inc) {
                    res.use_primary.push(*inc);
                }
            }
            res.exclude.retain(|x| !nets_overlap(d, x));
        }
    }
    res
}

impl Compiled {
    /// Allow-all result for "no policy at all": every node may reach every
    /// other node on every port and everybody sees everybody.
    pub fn allow_all(topo: &Topology) -> Compiled {
        compile(&Policy::default(), topo)
    }

    /// True when compiled from no policy / a policy without acls and grants.
    pub fn is_allow_all(&self) -> bool {
        self.allow_all
    }

    fn idx(&self, id: u64) -> Option<usize> {
        self.index.get(&id).copied()
    }

    /// The node's packet filter as tailcfg `[]FilterRule` JSON. An empty
    /// array means "deny all inbound" and must be sent as such.
    pub fn packet_filter(&self, node_id: u64) -> Value {
        match self.idx(node_id) {
            Some(i) => Value::Array(self.filters[i].iter().map(|r| r.to_json()).collect()),
            None => Value::Array(vec![]),
        }
    }

    /// IDs of the peers this node may see (symmetric), in no set order:
    /// for walking them without the allocation and sort of [`Self::peers`].
    pub fn peers_unsorted(&self, node_id: u64) -> impl Iterator<Item = u64> + '_ {
        let list = self.idx(node_id).map_or(&[][..], |i| &self.peers[i][..]);
        list.iter().map(|&j| self.ids[j])
    }

    /// IDs of the peers this node may see (symmetric), sorted by ID.
    pub fn peers(&self, node_id: u64) -> Vec<u64> {
        let Some(i) = self.idx(node_id) else {
            return vec![];
        };
        let mut v: Vec<u64> = self.peers[i].iter().map(|&j| self.ids[j]).collect();
        v.sort_unstable();
        v
    }

    /// `AllowedIPs` of `peer_id` as seen by `viewer_id`: the peer's addresses,
    /// then the primary subnet routes and exit routes the viewer may use.
    pub fn peer_allowed_ips(&self, viewer_id: u64, peer_id: u64) -> Vec<IpNet> {
        let (Some(v), Some(p)) = (self.idx(viewer_id), self.idx(peer_id)) else {
            return vec![];
        };
        if self.peers[v].binary_search(&p).is_err() {
            return vec![];
        }
        let mut out: Vec<IpNet> = self.node_ips[p].iter().map(|ip| IpNet::from(*ip)).collect();
        if let Some((_, r)) = self.peer_routes[v].iter().find(|(x, _)| *x == p) {
            out.extend(r.iter().cloned());
        }
        out
    }

    /// `PrimaryRoutes` of `peer_id` as seen by `viewer_id`: the peer's
    /// primary subnet routes that are in the viewer's `AllowedIPs` for it.
    pub fn peer_primary_routes(&self, viewer_id: u64, peer_id: u64) -> Vec<IpNet> {
        let Some(p) = self.idx(peer_id) else {
            return vec![];
        };
        self.peer_allowed_ips(viewer_id, peer_id)
            .into_iter()
            .filter(|r| {
                !is_exit_route(r) && !self.node_ips[p].iter().any(|ip| IpNet::from(*ip) == *r)
            })
            .collect()
    }

    /// Subnet routes for which this node is the elected primary
    /// (`PrimaryRoutes` of the node's self view).
    pub fn primary_routes(&self, node_id: u64) -> Vec<IpNet> {
        self.idx(node_id)
            .map(|i| self.primary[i].clone())
            .unwrap_or_default()
    }

    /// The node's own `AllowedIPs`: addresses plus its approved routes.
    pub fn self_allowed_ips(&self, node_id: u64, topo: &Topology) -> Vec<IpNet> {
        let Some(i) = self.idx(node_id) else {
            return vec![];
        };
        let mut v: Vec<IpNet> = self.node_ips[i].iter().map(|ip| IpNet::from(*ip)).collect();
        let n = &topo.nodes[i];
        v.extend(n.subnet_routes());
        v.extend(n.exit_routes());
        v
    }

    /// The node's `SSHPolicy` (`{"rules": [...]}`), or `None` when the policy
    /// has no `ssh` section (send no SSHPolicy then).
    pub fn ssh_policy(&self, node_id: u64) -> Option<Value> {
        self.idx(node_id).and_then(|i| self.ssh[i].clone())
    }

    /// Like [`Compiled::ssh_policy`] with the check URL rewritten to
    /// `server_url` (e.g. `https://ctl.example.net`).
    pub fn ssh_policy_with_url(&self, node_id: u64, server_url: &str) -> Option<Value> {
        let v = self.ssh_policy(node_id)?;
        let s = serde_json::to_string(&v).ok()?;
        let s = s.replace(
            "https://unused/machine/ssh/action/",
            &format!("{}/machine/ssh/action/", server_url.trim_end_matches('/')),
        );
        serde_json::from_str(&s).ok()
    }

    /// The node's self `CapMap` (baseline caps + nodeAttrs).
    pub fn cap_map(&self, node_id: u64) -> Value {
        match self.idx(node_id) {
            Some(i) => Value::Object(self.cap_maps[i].clone()),
            None => Value::Object(Map::new()),
        }
    }

    /// CapMap to put on this node when it is sent as a *peer*: SaaS marks
    /// every approved exit node with `suggest-exit-node` (in all 141
    /// captured peer views of an approved exit node, and nowhere else);
    /// `None` for other nodes.
    pub fn peer_cap_map(&self, node_id: u64) -> Option<Value> {
        let i = self.idx(node_id)?;
        if !self.is_exit[i] {
            return None;
        }
        let v = self.cap_maps[i]
            .get("suggest-exit-node")
            .cloned()
            .unwrap_or(Value::Null);
        let mut m = Map::new();
        m.insert("suggest-exit-node".into(), v);
        Some(Value::Object(m))
    }

    pub(crate) fn name_of(&self, i: usize) -> &str {
        &self.names[i]
    }
    pub(crate) fn tags_of(&self, i: usize) -> &[String] {
        &self.tags[i]
    }
}

/// The merged global (unreduced, non-self, non-via) rule list, used by
/// policy `tests`.
pub(crate) fn global_rules(ctx: &Ctx) -> Vec<Rule> {
    let grants = effective_grants(ctx.pol);
    let cgs: Vec<CGrant> = grants
        .iter()
        .filter_map(|(g, label)| ctx.compile_grant(g, label))
        .collect();
    merge_rules(cgs.iter().flat_map(|c| c.rules.iter().cloned()).collect())
}

/// Grants in evaluation order (grants, then ACLs), each with the rule it
/// came from; a policy without acls and grants behaves like
/// `src:["*"] → dst:["*"], ip:["*"]`.
fn effective_grants(policy: &Policy) -> Vec<(Grant, String)> {
    effective_grants_iter(policy).collect()
}

/// [`effective_grants`] made one ACL at a time: an ACL expands to one grant
/// per destination, so a policy of large ACLs need not hold every grant at
/// once while it compiles (25 ACLs of 1,200 destinations: 30,000 grants).
fn effective_grants_iter(policy: &Policy) -> impl Iterator<Item = (Grant, String)> + '_ {
    let default = (!policy.has_filter_sections()).then(|| {
        (
            Grant {
                src: Arc::new([Alias::Wildcard]),
                dst: vec![Alias::Wildcard],
                ip: vec![ProtoPorts {
                    proto: vec![],
                    ports: vec![(0, 65535)],
                }],
                app: None,
                via: vec![],
            },
            "the default rule".to_string(),
        )
    });
    let grants = (policy.grants.iter().flatten().enumerate())
        .map(|(i, g)| (g.clone(), format!("grants[{i}]")));
    let acls = policy
        .acls
        .iter()
        .flatten()
        .enumerate()
        .flat_map(|(i, acl)| {
            let label = format!("acls[{i}]");
            super::acl_to_grants(acl)
                .into_iter()
                .map(move |g| (g, label.clone()))
        });
    // Without filter sections there are no grants or ACLs to chain.
    default.into_iter().chain(grants).chain(acls)
}
