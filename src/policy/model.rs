//! Policy model: parsing a HuJSON policy into typed sections and validating
//! it. Error texts follow Tailscale's wording where it is known.

use super::hujson;
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Why a policy was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// HuJSON/JSON syntax error at a 1-based line:column.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// The policy is well-formed JSON but semantically invalid.
    Invalid(String),
    /// The policy's `tests` / `sshTests` did not pass.
    TestsFailed(String),
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Syntax {
                line,
                column,
                message,
            } => write!(f, "syntax error at {line}:{column}: {message}"),
            PolicyError::Invalid(m) => f.write_str(m),
            PolicyError::TestsFailed(m) => {
                if m.is_empty() {
                    f.write_str("test(s) failed")
                } else {
                    write!(f, "test(s) failed:\n{m}")
                }
            }
        }
    }
}

impl std::error::Error for PolicyError {}

impl From<hujson::SyntaxError> for PolicyError {
    fn from(e: hujson::SyntaxError) -> Self {
        PolicyError::Syntax {
            line: e.line,
            column: e.column,
            message: e.message,
        }
    }
}

/// A filter section (`acls`, `grants`): an array of rules, each parsed by
/// `parse`; `null` is an empty section, anything else an error.
fn rule_list<T>(
    v: &Value,
    name: &str,
    mut parse: impl FnMut(&Value) -> Result<T, PolicyError>,
) -> Result<Vec<T>, PolicyError> {
    match v {
        Value::Array(items) => items.iter().map(&mut parse).collect(),
        Value::Null => Ok(Vec::new()),
        _ => inv(format!("{name} must be an array")),
    }
}

fn inv<T>(msg: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError::Invalid(msg.into()))
}

/// Autogroups known to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AutoGroup {
    Member,
    Tagged,
    SelfDevices,
    Internet,
    NonRoot,
    DangerAll,
    /// Nodes of users with the admin role.
    Admin,
    /// Nodes of the tailnet owner.
    Owner,
}

impl AutoGroup {
    fn parse(s: &str) -> Option<AutoGroup> {
        Some(match s {
            "autogroup:member" => AutoGroup::Member,
            "autogroup:tagged" => AutoGroup::Tagged,
            "autogroup:self" => AutoGroup::SelfDevices,
            "autogroup:internet" => AutoGroup::Internet,
            "autogroup:nonroot" => AutoGroup::NonRoot,
            "autogroup:danger-all" => AutoGroup::DangerAll,
            "autogroup:admin" => AutoGroup::Admin,
            "autogroup:owner" => AutoGroup::Owner,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            AutoGroup::Member => "autogroup:member",
            AutoGroup::Tagged => "autogroup:tagged",
            AutoGroup::SelfDevices => "autogroup:self",
            AutoGroup::Internet => "autogroup:internet",
            AutoGroup::NonRoot => "autogroup:nonroot",
            AutoGroup::DangerAll => "autogroup:danger-all",
            AutoGroup::Admin => "autogroup:admin",
            AutoGroup::Owner => "autogroup:owner",
        }
    }
}

/// One selector ("alias") as written in src/dst/targets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alias {
    Wildcard,
    Prefix(IpNet),
    User(String),
    Group(String),
    Tag(String),
    Host(String),
    Auto(AutoGroup),
    /// An autogroup we do not implement (SaaS roles such as autogroup:admin).
    UnknownAuto(String),
    /// `user:*@domain` (SaaS domain wildcard).
    UserDomain(String),
}

impl fmt::Display for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alias::Wildcard => f.write_str("*"),
            Alias::Prefix(p) => write!(f, "{p}"),
            Alias::User(s)
            | Alias::Group(s)
            | Alias::Tag(s)
            | Alias::Host(s)
            | Alias::UnknownAuto(s) => f.write_str(s),
            Alias::Auto(a) => f.write_str(a.name()),
            Alias::UserDomain(d) => write!(f, "user:*@{d}"),
        }
    }
}

pub(crate) fn parse_prefix_or_ip(s: &str) -> Option<IpNet> {
    if s.contains('/') {
        s.parse::<IpNet>().ok().map(|n| n.trunc())
    } else {
        s.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

/// Parse one selector string.
pub fn parse_alias(raw: &str) -> Result<Alias, PolicyError> {
    let s = raw.trim();
    if let Some(p) = parse_prefix_or_ip(s) {
        return Ok(Alias::Prefix(p));
    }
    if s == "*" {
        return Ok(Alias::Wildcard);
    }
    if let Some(rest) = s.strip_prefix("user:") {
        if let Some(d) = rest.strip_prefix("*@") {
            return Ok(Alias::UserDomain(d.to_string()));
        }
    }
    if s.contains('@') {
        return Ok(Alias::User(s.to_string()));
    }
    if s.starts_with("group:") {
        return Ok(Alias::Group(s.to_string()));
    }
    if s.starts_with("tag:") {
        return Ok(Alias::Tag(s.to_string()));
    }
    if s.starts_with("autogroup:") {
        return Ok(match AutoGroup::parse(s) {
            Some(a) => Alias::Auto(a),
            None => Alias::UnknownAuto(s.to_string()),
        });
    }
    if s.is_empty() || s.contains(':') {
        return inv(format!("{s:?}: invalid address"));
    }
    if s.contains('%') || s.contains(' ') {
        return inv(format!("{s:?}: invalid address"));
    }
    Ok(Alias::Host(s.to_string()))
}

pub type PortRange = (u16, u16);

fn parse_port(s: &str) -> Result<u16, String> {
    let n: i64 = s.parse().map_err(|_| "invalid first integer".to_string())?;
    if !(0..=65535).contains(&n) {
        return Err("port number out of range".into());
    }
    Ok(n as u16)
}

/// Parse a port list (`*`, `22`, `80,443`, `8000-8999`).
pub fn parse_ports(def: &str) -> Result<Vec<PortRange>, String> {
    if def == "*" {
        return Ok(vec![(0, 65535)]);
    }
    let mut out = Vec::new();
    for part in def.split(',') {
        if part.contains('-') {
            let bits: Vec<&str> = part.split('-').filter(|x| !x.is_empty()).collect();
            if bits.len() != 2 {
                return Err("invalid port range format".into());
            }
            let a = parse_port(bits[0])?;
            let b = parse_port(bits[1])?;
            if a > b {
                return Err("invalid port range: first port is greater than last port".into());
            }
            out.push((a, b));
        } else {
            let p = parse_port(part)?;
            if p < 1 {
                return Err("first port must be >0, or use '*' for wildcard".into());
            }
            out.push((p, p));
        }
    }
    Ok(out)
}

/// Split `selector:ports` at the last colon (handles `[v6]:port`).
pub fn split_dst_port(input: &str) -> Result<(String, String), String> {
    let mut input = input.to_string();
    if input.starts_with('[') {
        let close = input
            .find(']')
            .ok_or("square brackets are only valid around IPv6 addresses")?;
        let host = &input[1..close];
        let ok = matches!(host.parse::<IpAddr>(), Ok(IpAddr::V6(_)));
        let rest = &input[close + 1..];
        if !ok || !(rest.starts_with(':') || rest.starts_with('/')) {
            return Err(format!(
                "square brackets are only valid around IPv6 addresses: {host:?}"
            ));
        }
        input = format!("{host}{rest}");
    }
    let idx = input
        .rfind(':')
        .ok_or("input must contain a colon character separating destination and port")?;
    if idx == 0 {
        return Err("input cannot start with a colon character".into());
    }
    if idx == input.len() - 1 {
        return Err("input cannot end with a colon character".into());
    }
    Ok((input[..idx].to_string(), input[idx + 1..].to_string()))
}

/// Map a protocol spelling to its IANA numbers (empty = default set).
pub fn parse_proto(p: &str) -> Result<Vec<u8>, String> {
    let l = p.to_ascii_lowercase();
    let n: u8 = match l.as_str() {
        "" => return Ok(vec![]),
        "icmp" => 1,
        "igmp" => 2,
        "ipv4" | "ip-in-ip" => 4,
        "tcp" => 6,
        "egp" => 8,
        "igp" => 9,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "ipv6-icmp" => 58,
        "sctp" => 132,
        "fc" => 133,
        "*" => {
            return Err("proto name \"*\" not known; use protocol number 0-255 or protocol name (icmp, tcp, udp, etc.)".into())
        }
        _ => {
            if l.len() > 1 && l.starts_with('0') {
                return Err(format!("leading 0 not permitted in protocol number: {p:?}"));
            }
            match l.parse::<i64>() {
                Ok(v) if (0..=255).contains(&v) => v as u8,
                Ok(v) => return Err(format!("protocol number out of range (0-255): {v}")),
                Err(_) => {
                    return Err(format!(
                        "invalid protocol number: {p:?} must be a known protocol name or valid protocol number 0-255"
                    ))
                }
            }
        }
    };
    Ok(vec![n])
}

fn proto_allows_ports(p: &[u8]) -> bool {
    p.is_empty() || matches!(p, [6] | [17] | [132])
}

/// `localpart:*@<domain>` → domain; anything else (including malformed
/// localpart entries, which SaaS treats as literal user names) → None.
pub fn localpart_domain(u: &str) -> Option<&str> {
    let d = u.strip_prefix("localpart:*@")?;
    if d.is_empty() {
        None
    } else {
        Some(d)
    }
}

/// One `ip` element of a grant (or the ports of an ACL destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoPorts {
    pub proto: Vec<u8>,
    pub ports: Vec<PortRange>,
}

#[derive(Debug, Clone)]
pub struct Grant {
    /// Shared: an ACL entry becomes one grant per destination, all with
    /// the entry's sources (cloning them would cost |src| × |dst|).
    pub src: std::sync::Arc<[Alias]>,
    pub dst: Vec<Alias>,
    pub ip: Vec<ProtoPorts>,
    pub app: Option<Map<String, Value>>,
    pub via: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Acl {
    pub src: std::sync::Arc<[Alias]>,
    pub dst: Vec<(Alias, Vec<PortRange>)>,
    pub proto: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshAction {
    Accept,
    Check,
}

#[derive(Debug, Clone)]
pub struct SshRule {
    pub action: SshAction,
    pub src: Vec<Alias>,
    pub dst: Vec<Alias>,
    pub users: Vec<String>,
    pub accept_env: Vec<String>,
    /// Nanoseconds; None = default.
    pub check_period: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct NodeAttr {
    pub target: Vec<Alias>,
    pub attr: Vec<String>,
    /// `app` style attributes with values (`{"cap": [values]}`).
    pub app: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Default)]
pub struct AutoApprovers {
    pub routes: Vec<(IpNet, Vec<Alias>)>,
    pub exit_node: Vec<Alias>,
}

#[derive(Debug, Clone)]
pub struct PolicyTest {
    pub src: String,
    pub proto: String,
    pub accept: Vec<String>,
    pub deny: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SshPolicyTest {
    pub src: String,
    pub dst: Vec<Alias>,
    pub accept: Vec<String>,
    pub deny: Vec<String>,
    pub check: Vec<String>,
}

/// A parsed, validated policy. See the module docs for the API.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub(crate) groups: BTreeMap<String, Vec<String>>,
    pub(crate) hosts: BTreeMap<String, IpNet>,
    pub(crate) tag_owners: BTreeMap<String, Vec<String>>,
    pub(crate) acls: Option<Vec<Acl>>,
    pub(crate) grants: Option<Vec<Grant>>,
    pub(crate) ssh: Option<Vec<SshRule>>,
    pub(crate) node_attrs: Vec<NodeAttr>,
    pub(crate) auto_approvers: AutoApprovers,
    pub(crate) tests: Vec<PolicyTest>,
    /// Shape errors found in `tests`; they make the tests fail.
    pub(crate) test_errors: Vec<String>,
    pub(crate) ssh_tests: Vec<SshPolicyTest>,
    pub(crate) randomize_client_port: bool,
}

fn as_str_list(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match v {
        Value::Null => Ok(vec![]),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                other => inv(format!("{what}: expected string, got {other}")),
            })
            .collect(),
        Value::String(s) => inv(format!("{what}: expected an array, got string {s:?}")),
        other => inv(format!("{what}: expected an array, got {other}")),
    }
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, PolicyError> {
    match v {
        Value::Object(m) => Ok(m),
        _ => inv(format!("{what}: expected an object")),
    }
}

/// Case-insensitive key lookup helper over an object.
struct Fields<'a> {
    items: Vec<(String, &'a Value)>,
}

impl<'a> Fields<'a> {
    fn new(m: &'a Map<String, Value>) -> Self {
        Fields {
            items: m.iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect(),
        }
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.items.iter().find(|(n, _)| n == k).map(|(_, v)| *v)
    }
    fn check_known(&self, known: &[&str], ignore_hash: bool) -> Result<(), PolicyError> {
        for (k, _) in &self.items {
            if ignore_hash && k.starts_with('#') {
                continue;
            }
            if !known.contains(&k.as_str()) {
                return inv(format!("unknown field {k:?}"));
            }
        }
        Ok(())
    }
}

fn valid_tag_name(t: &str) -> Result<(), String> {
    let name = t.strip_prefix("tag:").unwrap_or("");
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {}
        _ => return Err("tag names must start with a letter, after 'tag:'".into()),
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("tag names can only contain numbers, letters, or dashes".into());
    }
    Ok(())
}

fn parse_go_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("time: invalid duration {s:?}");
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix('-') {
        neg = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return Err(bad());
        }
        let num: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let mult: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += num * mult;
    }
    let v = total.round() as i64;
    Ok(if neg { -v } else { v })
}

/// Format nanoseconds like Go's `time.Duration.String` (whole seconds only
/// need to be exact for our error messages).
pub fn go_duration_string(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let mut n = ns.unsigned_abs();
    let mut out = String::new();
    if n < 1_000_000_000 {
        // sub-second: keep it simple
        out = if n % 1_000_000 == 0 {
            format!("{}ms", n / 1_000_000)
        } else if n % 1000 == 0 {
            format!("{}µs", n / 1000)
        } else {
            format!("{n}ns")
        };
    } else {
        let frac = n % 1_000_000_000;
        n /= 1_000_000_000;
        let secs = n % 60;
        n /= 60;
        let mins = n % 60;
        let hours = n / 60;
        let mut sec_s = secs.to_string();
        if frac != 0 {
            let f = format!("{frac:09}");
            sec_s = format!("{secs}.{}", f.trim_end_matches('0'));
        }
        if hours > 0 {
            out.push_str(&format!("{hours}h{mins}m{sec_s}s"));
        } else if mins > 0 {
            out.push_str(&format!("{mins}m{sec_s}s"));
        } else {
            out.push_str(&format!("{sec_s}s"));
        }
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

const TS_CAP_ALLOW: &[&str] = &[
    "tailscale.com/cap/drive",
    "tailscale.com/cap/relay",
    "tailscale.com/cap/webui",
    "tailscale.com/cap/kubernetes",
    "tailscale.com/cap/tsidp",
    "tailscale.com/cap/secrets",
];

impl Policy {
    /// Parse and validate a HuJSON policy. Does not run `tests`/`sshTests`
    /// (those need a topology; see [`crate::policy::check_tests`]).
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.trim().is_empty() {
            return Ok(Policy::default());
        }
        let v = hujson::parse(text)?;
        let top = match &v {
            Value::Object(m) => m,
            Value::Null => return Ok(Policy::default()),
            _ => return inv("policy must be a JSON object"),
        };
        let f = Fields::new(top);
        f.check_known(
            &[
                "acls",
                "grants",
                "ssh",
                "groups",
                "hosts",
                "tagowners",
                "autoapprovers",
                "nodeattrs",
                "tests",
                "sshtests",
                "randomizeclientport",
                "postures",
                "defaultsrcposture",
                "ipsets",
                "derpmap",
                "disableipv4",
                "onecgnatroute",
            ],
            false,
        )?;
        let mut p = Policy::default();

        // groups
        if let Some(g) = f.get("groups") {
            for (k, v) in obj(g, "groups")? {
                if !k.starts_with("group:") {
                    return inv(format!("group must start with 'group:', got: {k:?}"));
                }
                let members = match v {
                    Value::Array(_) | Value::Null => as_str_list(v, k)?,
                    Value::String(s) => {
                        return inv(format!(
                            "group value must be an array of users: group {k:?} got string: {s:?}"
                        ))
                    }
                    _ => {
                        return inv(format!(
                            "group value must be an array of users: group {k:?}"
                        ))
                    }
                };
                p.groups.insert(k.clone(), members);
            }
            // SaaS reports the last group (by name) that has a group member.
            for (k, members) in p.groups.iter().rev() {
                if let Some(m) = members.iter().find(|m| m.starts_with("group:")) {
                    return inv(format!(
                        "groups[{k:?}]: {m:?}: group members cannot be recursive"
                    ));
                }
            }
        }
        // hosts
        if let Some(h) = f.get("hosts") {
            for (k, v) in obj(h, "hosts")? {
                let s = v.as_str().unwrap_or_default();
                match parse_prefix_or_ip(s) {
                    Some(n) => {
                        p.hosts.insert(k.clone(), n);
                    }
                    None => {
                        return inv(format!(
                            "hostname contains invalid IP address: hostname {k:?} address {s:?}"
                        ))
                    }
                }
            }
        }
        // tagOwners
        if let Some(t) = f.get("tagowners") {
            for (k, v) in obj(t, "tagOwners")? {
                if !k.starts_with("tag:") {
                    return inv(format!("tag must start with 'tag:', got: {k:?}"));
                }
                if let Err(e) = valid_tag_name(k) {
                    return inv(format!("tagOwners[{k:?}]: {e}"));
                }
                p.tag_owners.insert(k.clone(), as_str_list(v, k)?);
            }
        }
        // acls
        if let Some(a) = f.get("acls") {
            p.acls = Some(rule_list(a, "acls", |it| p.parse_acl(it))?);
        }
        if let Some(g) = f.get("grants") {
            p.grants = Some(rule_list(g, "grants", |it| p.parse_grant(it))?);
        }
        if let Some(s) = f.get("ssh") {
            let mut rules = Vec::new();
            if let Value::Array(items) = s {
                for it in items {
                    rules.push(p.parse_ssh(it)?);
                }
            }
            p.ssh = Some(rules);
        }
        if let Some(Value::Array(items)) = f.get("nodeattrs") {
            for it in items {
                p.node_attrs.push(p.parse_node_attr(it)?);
            }
        }
        if let Some(a) = f.get("autoapprovers") {
            let af = Fields::new(obj(a, "autoApprovers")?);
            af.check_known(&["routes", "exitnode", "services"], false)?;
            if let Some(r) = af.get("routes") {
                for (k, v) in obj(r, "autoApprovers.routes")? {
                    let net = match parse_prefix_or_ip(k) {
                        Some(n) => n,
                        None => return inv(format!("invalid prefix: {k:?}")),
                    };
                    let mut approvers = Vec::new();
                    for s in as_str_list(v, k)? {
                        approvers.push(p.approver_alias(&s)?);
                    }
                    p.auto_approvers.routes.push((net, approvers));
                }
            }
            if let Some(e) = af.get("exitnode") {
                for s in as_str_list(e, "exitNode")? {
                    let a = p.approver_alias(&s)?;
                    p.auto_approvers.exit_node.push(a);
                }
            }
        }
        if let Some(r) = f.get("randomizeclientport") {
            p.randomize_client_port = r.as_bool().unwrap_or(false);
        }
        if let Some(Value::Array(items)) = f.get("tests") {
            for (i, it) in items.iter().enumerate() {
                p.parse_test(i, it)?;
            }
        }
        if let Some(Value::Array(items)) = f.get("sshtests") {
            for it in items {
                let st = p.parse_ssh_test(it)?;
                p.ssh_tests.push(st);
            }
        }
        p.validate_tag_owner_refs()?;
        Ok(p)
    }

    /// `checkPeriod` of each `ssh` rule in nanoseconds (`Some(0)` =
    /// "always", `None` = default 12h), for answering check-mode callbacks.
    pub fn ssh_check_periods(&self) -> Vec<Option<i64>> {
        self.ssh.iter().flatten().map(|r| r.check_period).collect()
    }

    /// `{"acls": []}`: no node may reach any other. What the server runs
    /// when the configured policy cannot be used (never allow-all).
    pub fn deny_all() -> Policy {
        Policy {
            acls: Some(Vec::new()),
            ..Policy::default()
        }
    }

    pub(crate) fn has_filter_sections(&self) -> bool {
        self.acls.is_some() || self.grants.is_some()
    }

    fn check_tag(&self, t: &str) -> Result<(), String> {
        if self.tag_owners.contains_key(t) {
            Ok(())
        } else {
            Err(format!("tag not found: {t:?}"))
        }
    }

    fn check_group(&self, g: &str) -> Result<(), String> {
        if self.groups.contains_key(g) {
            Ok(())
        } else {
            Err(format!("group not defined in policy: {g:?}"))
        }
    }

    fn check_host(&self, h: &str) -> Result<(), String> {
        if self.hosts.contains_key(h) {
            Ok(())
        } else {
            Err(format!("host not defined in policy: {h:?}"))
        }
    }

    fn check_user_domain(&self, _d: &str) -> Result<(), String> {
        // Domains are checked against the tailnet in `domain_errors`.
        Ok(())
    }

    /// `user:*@<domain>` / `localpart:*@<domain>` references whose domain
    /// is not one of `domains` (checked once the tailnet is known).
    pub(crate) fn domain_error(&self, domains: &[String]) -> Option<String> {
        if domains.is_empty() {
            return None;
        }
        let bad = |d: &str| !domains.iter().any(|x| x == d);
        let msg = |d: &str| {
            format!("{d} is not associated with this Tailnet and cannot be used in user:*@<domain> expressions")
        };
        let check_list = |aliases: &[Alias], prefix: &str| -> Option<String> {
            aliases.iter().find_map(|a| match a {
                Alias::UserDomain(d) if bad(d) => Some(format!("{prefix}{}", msg(d))),
                _ => None,
            })
        };
        for a in self.acls.iter().flatten() {
            if let Some(e) = check_list(&a.src, "") {
                return Some(e);
            }
            let dsts: Vec<Alias> = a.dst.iter().map(|x| x.0.clone()).collect();
            if let Some(e) = check_list(&dsts, "") {
                return Some(e);
            }
        }
        for g in self.grants.iter().flatten() {
            if let Some(e) = check_list(&g.src, "").or_else(|| check_list(&g.dst, "")) {
                return Some(e);
            }
        }
        for r in self.ssh.iter().flatten() {
            if let Some(e) = check_list(&r.src, "[ssh] ").or_else(|| check_list(&r.dst, "[ssh] ")) {
                return Some(e);
            }
            for u in &r.users {
                if let Some(d) = localpart_domain(u) {
                    if bad(d) {
                        return Some(msg(d));
                    }
                }
            }
        }
        None
    }

    fn approver_alias(&self, s: &str) -> Result<Alias, PolicyError> {
        let a = parse_alias(s)?;
        match &a {
            Alias::Group(g) => self.check_group(g).or_else(inv)?,
            Alias::Tag(t) => self.check_tag(t).or_else(inv)?,
            _ => {}
        }
        Ok(a)
    }

    fn validate_tag_owner_refs(&self) -> Result<(), PolicyError> {
        for owners in self.tag_owners.values() {
            for o in owners {
                if o.starts_with("group:") {
                    self.check_group(o).or_else(inv)?;
                } else if o.starts_with("tag:") {
                    self.check_tag(o).or_else(inv)?;
                }
            }
        }
        Ok(())
    }

    /// Validate a src selector shared by acls and grants.
    fn check_src(&self, a: &Alias) -> Result<(), String> {
        match a {
            Alias::Host(h) => self.check_host(h),
            Alias::Group(g) => self.check_group(g),
            Alias::Tag(t) => self.check_tag(t).map_err(|e| format!("src={e}")),
            Alias::Auto(AutoGroup::SelfDevices) => {
                Err("\"autogroup:self\" not valid on the src side of a rule".into())
            }
            Alias::Auto(AutoGroup::Internet) => {
                Err("autogroup:internet can only be used in ACL destinations".into())
            }
            Alias::Auto(AutoGroup::NonRoot) => {
                Err("autogroup not supported for ACL sources: \"autogroup:nonroot\"".into())
            }
            Alias::UnknownAuto(s) => Err(format!("autogroup not supported: {s:?}")),
            Alias::UserDomain(d) => self.check_user_domain(d),
            _ => Ok(()),
        }
    }

    fn check_dst(&self, a: &Alias, tag_err_prefix: bool) -> Result<(), String> {
        match a {
            Alias::Host(h) => self.check_host(h),
            Alias::Group(g) => self.check_group(g),
            Alias::Tag(t) => self.check_tag(t).map_err(|e| {
                if tag_err_prefix {
                    format!("dst={t:?}: {e}")
                } else {
                    e
                }
            }),
            Alias::Auto(AutoGroup::DangerAll) => {
                Err("cannot use autogroup:danger-all as a dst".into())
            }
            Alias::Auto(AutoGroup::NonRoot) => {
                Err("autogroup not supported for ACL destinations: \"autogroup:nonroot\"".into())
            }
            Alias::UnknownAuto(s) => Err(format!("autogroup not supported: {s:?}")),
            Alias::UserDomain(d) => self.check_user_domain(d),
            _ => Ok(()),
        }
    }

    fn parse_acl(&self, v: &Value) -> Result<Acl, PolicyError> {
        let m = obj(v, "acls[]")?;
        let f = Fields::new(m);
        f.check_known(&["action", "src", "dst", "proto", "users", "ports"], true)?;
        let action = f.get("action").and_then(|x| x.as_str()).unwrap_or("");
        if action != "accept" {
            return inv(format!("action={action:?} is not supported"));
        }
        let src_v = f.get("src").or_else(|| f.get("users"));
        let dst_v = f.get("dst").or_else(|| f.get("ports"));
        let src_s = match src_v {
            Some(v) => as_str_list(v, "src")?,
            None => vec![],
        };
        let dst_s = match dst_v {
            Some(v) => as_str_list(v, "dst")?,
            None => vec![],
        };
        let proto_s = f.get("proto").and_then(|x| x.as_str()).unwrap_or("");
        let proto = parse_proto(proto_s).or_else(inv)?;
        let mut src = Vec::new();
        for s in &src_s {
            src.push(parse_alias(s)?);
        }
        let mut dst = Vec::new();
        for d in &dst_s {
            let (sel, ports) = split_dst_port(d).or_else(inv)?;
            let ports = parse_ports(&ports).map_err(|e| {
                PolicyError::Invalid(format!("dst={d:?}: port range {ports:?}: {e}"))
            })?;
            let a = parse_alias(&sel)?;
            dst.push((a, ports));
        }
        for a in &src {
            self.check_src(a).or_else(inv)?;
        }
        for (a, _) in &dst {
            self.check_dst(a, true).or_else(inv)?;
        }
        if !proto_allows_ports(&proto) {
            for (_, ports) in &dst {
                if ports.iter().any(|&p| p != (0, 65535)) {
                    return inv(format!(
                        "protocol does not support specific ports: {proto_s:?}, only \"*\" is allowed"
                    ));
                }
            }
        }
        if dst
            .iter()
            .any(|(a, _)| *a == Alias::Auto(AutoGroup::SelfDevices))
        {
            for a in &src {
                match a {
                    Alias::User(_)
                    | Alias::Group(_)
                    | Alias::Wildcard
                    | Alias::Auto(AutoGroup::Member) => {}
                    _ => {
                        return inv(
                            "autogroup:self can only be used with users, groups, or supported autogroups",
                        )
                    }
                }
            }
        }
        Ok(Acl {
            src: src.into(),
            dst,
            proto,
        })
    }

    fn parse_grant(&self, v: &Value) -> Result<Grant, PolicyError> {
        let m = obj(v, "grants[]")?;
        let f = Fields::new(m);
        f.check_known(&["src", "dst", "ip", "app", "via", "srcposture"], true)?;
        let mut src = Vec::new();
        for s in as_str_list(f.get("src").unwrap_or(&Value::Null), "src")? {
            src.push(parse_alias(&s)?);
        }
        let mut dst = Vec::new();
        for s in as_str_list(f.get("dst").unwrap_or(&Value::Null), "dst")? {
            dst.push(parse_alias(&s)?);
        }
        let mut ip = Vec::new();
        for s in as_str_list(f.get("ip").unwrap_or(&Value::Null), "ip")? {
            if s == "*" {
                ip.push(ProtoPorts {
                    proto: vec![],
                    ports: vec![(0, 65535)],
                });
                continue;
            }
            if !s.contains(':') {
                let ports = parse_ports(&s)
                    .map_err(|e| PolicyError::Invalid(format!("port range {s:?}: {e}")))?;
                ip.push(ProtoPorts {
                    proto: vec![],
                    ports,
                });
                continue;
            }
            let parts: Vec<&str> = s.split(':').collect();
            if parts.len() != 2 {
                return inv(format!(
                    "expected only one colon in Internet protocol and port type, got: {s:?}"
                ));
            }
            let proto = parse_proto(parts[0]).or_else(inv)?;
            let ports = parse_ports(parts[1])
                .map_err(|e| PolicyError::Invalid(format!("port range {:?}: {e}", parts[1])))?;
            if !proto_allows_ports(&proto) && ports.iter().any(|&p| p != (0, 65535)) {
                return inv(format!(
                    "protocol does not support specific ports: {:?}, only \"*\" is allowed",
                    parts[0]
                ));
            }
            ip.push(ProtoPorts { proto, ports });
        }
        let app = match f.get("app") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return inv("app must be an object"),
        };
        let via = as_str_list(f.get("via").unwrap_or(&Value::Null), "via")?;

        let has_app = app.as_ref().is_some_and(|a| !a.is_empty());
        if ip.is_empty() && !has_app {
            return inv("ip and app can not both be empty");
        }
        if let Some(a) = &app {
            for k in a.keys() {
                if k.contains("://") || !k.contains('/') {
                    return inv("capability name must have the form {domain}/{path}");
                }
                if k.starts_with("tailscale.com/") && !TS_CAP_ALLOW.contains(&k.as_str()) {
                    return inv("capability name must not be in the tailscale.com domain");
                }
            }
            if has_app && dst.contains(&Alias::Auto(AutoGroup::Internet)) {
                return inv("cannot use app grants with autogroup:internet");
            }
        }
        for d in &dst {
            if let Alias::Prefix(n) = d {
                if n.prefix_len() == 0 {
                    return inv(format!(
                        "dst {:?}: to allow all IP addresses, use \"*\" or \"autogroup:internet\"",
                        n.to_string()
                    ));
                }
            }
        }
        for a in &src {
            self.check_src(a).or_else(inv)?;
        }
        for a in &dst {
            self.check_dst(a, false).or_else(inv)?;
        }
        for t in &via {
            if !t.starts_with("tag:") {
                return inv("via can only be a tag");
            }
            if !self.tag_owners.contains_key(t) {
                return inv(format!("tag {t:?} not found"));
            }
        }
        if dst.contains(&Alias::Auto(AutoGroup::SelfDevices)) {
            for a in &src {
                match a {
                    Alias::User(_) | Alias::Group(_) | Alias::Auto(AutoGroup::Member) => {}
                    _ => {
                        return inv(
                            "autogroup:self can only be used with users, groups, or supported autogroups",
                        )
                    }
                }
            }
        }
        Ok(Grant {
            src: src.into(),
            dst,
            ip,
            app,
            via,
        })
    }

    fn parse_ssh(&self, v: &Value) -> Result<SshRule, PolicyError> {
        let m = obj(v, "ssh[]")?;
        let f = Fields::new(m);
        f.check_known(
            &[
                "action",
                "src",
                "dst",
                "users",
                "checkperiod",
                "acceptenv",
                "srcposture",
            ],
            true,
        )?;
        let action_s = f.get("action").and_then(|x| x.as_str()).unwrap_or("");
        let action = match action_s.trim() {
            "" => return inv("action must be specified"),
            "accept" => SshAction::Accept,
            "check" => SshAction::Check,
            _ => return inv(format!("{action_s:?} is not a valid action")),
        };
        let mut src = Vec::new();
        for s in as_str_list(f.get("src").unwrap_or(&Value::Null), "src")? {
            src.push(parse_alias(&s)?);
        }
        let mut dst = Vec::new();
        for s in as_str_list(f.get("dst").unwrap_or(&Value::Null), "dst")? {
            dst.push(parse_alias(&s)?);
        }
        let users: Vec<String> = as_str_list(f.get("users").unwrap_or(&Value::Null), "users")?
            .into_iter()
            .map(|u| u.trim().to_string())
            .collect();
        if users.is_empty() {
            return inv("users must be specified");
        }
        for u in &users {
            if u.is_empty() || u == "*" {
                return inv(format!("user {u:?} is not valid"));
            }
        }
        let accept_env = as_str_list(f.get("acceptenv").unwrap_or(&Value::Null), "acceptEnv")?;
        if accept_env.iter().any(|e| e.is_empty()) {
            return inv("acceptEnv values cannot be empty");
        }
        for a in &src {
            match a {
                Alias::Group(g) => self.check_group(g).or_else(inv)?,
                Alias::Tag(t) => self.check_tag(t).or_else(inv)?,
                Alias::Auto(
                    AutoGroup::Member | AutoGroup::Tagged | AutoGroup::Admin | AutoGroup::Owner,
                ) => {}
                Alias::Auto(a) => {
                    return inv(format!(
                        "autogroup not supported for SSH sources: {:?}",
                        a.name()
                    ))
                }
                Alias::UnknownAuto(s) => return inv(format!("autogroup not supported: {s:?}")),
                Alias::UserDomain(d) => self.check_user_domain(d).or_else(inv)?,
                Alias::Host(h) => self.check_host(h).or_else(inv)?,
                _ => {}
            }
        }
        for a in &dst {
            match a {
                Alias::Tag(t) => self.check_tag(t).or_else(inv)?,
                Alias::Group(g) => self.check_group(g).or_else(inv)?,
                Alias::Auto(AutoGroup::Member | AutoGroup::Tagged | AutoGroup::SelfDevices) => {}
                Alias::Auto(a) => {
                    return inv(format!(
                        "autogroup not supported for SSH destinations: {:?}",
                        a.name()
                    ))
                }
                Alias::UnknownAuto(s) => return inv(format!("autogroup not supported: {s:?}")),
                Alias::Host(h) => return inv(format!("invalid dst {h:?}")),
                Alias::Wildcard => return inv("wildcard (*) is not supported as SSH destination"),
                Alias::UserDomain(d) => self.check_user_domain(d).or_else(inv)?,
                _ => {}
            }
        }
        // src/dst combination rules
        let src_tagged = src
            .iter()
            .any(|a| matches!(a, Alias::Tag(_) | Alias::Auto(AutoGroup::Tagged)));
        let src_groupish = src
            .iter()
            .any(|a| matches!(a, Alias::Group(_) | Alias::Auto(AutoGroup::Member)));
        let src_users: BTreeSet<&str> = src
            .iter()
            .filter_map(|a| match a {
                Alias::User(u) => Some(u.as_str()),
                _ => None,
            })
            .collect();
        for d in &dst {
            match d {
                Alias::User(u) => {
                    if src_tagged {
                        return inv(format!("tags in SSH source cannot access user-owned devices ({u}); use autogroup:tagged or specific tags as destinations instead"));
                    }
                    if src_groupish || src_users.len() != 1 || !src_users.contains(u.as_str()) {
                        return inv(format!("user destination requires source to contain only that same user {u:?}; use autogroup:self instead for same-user SSH access"));
                    }
                }
                Alias::Auto(AutoGroup::SelfDevices) if src_tagged => {
                    return inv("autogroup:self destination requires source to contain only users or groups, not tags or autogroup:tagged")
                }
                Alias::Auto(AutoGroup::Member) if src_tagged => {
                    return inv("tags in SSH source cannot access autogroup:member (user-owned devices)")
                }
                _ => {}
            }
        }
        let check_period = match f.get("checkperiod") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                if action != SshAction::Check {
                    return inv("checkPeriod is only valid with action \"check\"");
                }
                if s == "always" {
                    Some(0)
                } else {
                    let d = parse_go_duration(s).or_else(inv)?;
                    if d < 0 {
                        return inv(format!(
                            "checkPeriod {} must be a positive duration",
                            go_duration_string(d)
                        ));
                    }
                    if d > 168 * 3600 * 1_000_000_000 {
                        return inv(format!(
                            "checkPeriod {} is above the max (168h)",
                            go_duration_string(d)
                        ));
                    }
                    Some(d)
                }
            }
            Some(_) => return inv("checkPeriod must be a string"),
        };
        Ok(SshRule {
            action,
            src,
            dst,
            users,
            accept_env,
            check_period,
        })
    }

    fn parse_node_attr(&self, v: &Value) -> Result<NodeAttr, PolicyError> {
        let m = obj(v, "nodeAttrs[]")?;
        let f = Fields::new(m);
        f.check_known(&["target", "attr", "app", "ippool"], true)?;
        let mut target = Vec::new();
        for s in as_str_list(f.get("target").unwrap_or(&Value::Null), "target")? {
            target.push(parse_alias(&s)?);
        }
        let attr = as_str_list(f.get("attr").unwrap_or(&Value::Null), "attr")?;
        let app = match f.get("app") {
            Some(Value::Object(m)) => Some(m.clone()),
            _ => None,
        };
        for t in &target {
            match t {
                Alias::Host(h) => self.check_host(h).or_else(inv)?,
                Alias::Group(g) => self.check_group(g).or_else(inv)?,
                Alias::Tag(t) => self.check_tag(t).or_else(inv)?,
                Alias::Auto(
                    AutoGroup::Member | AutoGroup::Tagged | AutoGroup::Admin | AutoGroup::Owner,
                ) => {}
                Alias::Auto(a) => {
                    return inv(format!(
                        "nodeAttrs target does not support this autogroup: {:?}",
                        a.name()
                    ))
                }
                Alias::UnknownAuto(s) => return inv(format!("autogroup not supported: {s:?}")),
                _ => {}
            }
        }
        if let Some(pool) = f.get("ippool") {
            for s in as_str_list(pool, "ipPool")? {
                let n = parse_prefix_or_ip(&s);
                let Some(n) = n else {
                    return inv(format!("invalid prefix: {s:?}"));
                };
                let reserved: IpNet = "100.100.100.0/24".parse().unwrap();
                let cgnat: IpNet = "100.64.0.0/10".parse().unwrap();
                if reserved.contains(&n) || n.contains(&reserved) {
                    return inv(format!("IPPool({n}): network within reserved range"));
                }
                if !cgnat.contains(&n) {
                    return inv(format!(
                        "nodeAttrs ipPool must be within 100.64.0.0/10: {s:?}"
                    ));
                }
            }
            // Accepted but not acted upon: there is no IP pool allocator.
        }
        Ok(NodeAttr { target, attr, app })
    }

    fn parse_test(&mut self, i: usize, v: &Value) -> Result<(), PolicyError> {
        let m = obj(v, "tests[]")?;
        let f = Fields::new(m);
        f.check_known(&["src", "proto", "accept", "deny"], false)?;
        let src = f
            .get("src")
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string();
        let proto = f
            .get("proto")
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string();
        let accept = as_str_list(f.get("accept").unwrap_or(&Value::Null), "accept")?;
        let deny = as_str_list(f.get("deny").unwrap_or(&Value::Null), "deny")?;
        if accept.is_empty() && deny.is_empty() {
            self.test_errors.push(format!(
                "test {i}: test entry must have at least one of \"accept\" or \"deny\""
            ));
        }
        if !matches!(parse_proto(&proto).as_deref(), Ok([] | [6] | [17] | [132])) {
            self.test_errors.push(format!(
                "test {i}: test protocol must be tcp, udp, sctp, or empty: {proto:?}"
            ));
        }
        for d in accept.iter().chain(deny.iter()) {
            if let Err(e) = self.validate_test_dst(d) {
                self.test_errors.push(format!("test {i}, {d:?}: {e}"));
            }
        }
        self.tests.push(PolicyTest {
            src,
            proto,
            accept,
            deny,
        });
        Ok(())
    }

    fn validate_test_dst(&self, d: &str) -> Result<(), String> {
        let (sel, ports) = split_dst_port(d)?;
        let ports = parse_ports(&ports)?;
        let a = parse_alias(&sel).map_err(|e| e.to_string())?;
        if a == Alias::Auto(AutoGroup::Internet) {
            return Err("autogroup:internet not valid as a test destination".into());
        }
        if ports.len() != 1 || ports[0].0 != ports[0].1 {
            return Err("test destination port must be a single port".into());
        }
        if matches!(a, Alias::Prefix(_)) && sel.contains('/') {
            return Err("test destination must be a single host, not a CIDR range".into());
        }
        if let Alias::Host(h) = &a {
            if let Some(n) = self.hosts.get(h) {
                if n.prefix_len() < n.max_prefix_len() {
                    return Err("test destination must be a single host, not a CIDR range".into());
                }
            }
        }
        Ok(())
    }

    fn parse_ssh_test(&self, v: &Value) -> Result<SshPolicyTest, PolicyError> {
        let m = obj(v, "sshTests[]")?;
        let f = Fields::new(m);
        f.check_known(&["src", "dst", "accept", "deny", "check"], false)?;
        let src = f
            .get("src")
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .trim()
            .to_string();
        let mut dst = Vec::new();
        for s in as_str_list(f.get("dst").unwrap_or(&Value::Null), "dst")? {
            let a = parse_alias(&s)?;
            match &a {
                Alias::Auto(AutoGroup::Internet) => {
                    return inv(format!("SSH tests dst contains disallowed element {s:?}"))
                }
                Alias::Prefix(n) if n.prefix_len() < n.max_prefix_len() => {
                    return inv(format!("SSH tests dst contains disallowed element {s:?}"))
                }
                Alias::Tag(t) if !self.tag_owners.contains_key(t) => {
                    return inv(format!("SSH tests dst contains unknown tag {t:?}"))
                }
                Alias::Host(h) => {
                    if let Some(n) = self.hosts.get(h) {
                        if n.prefix_len() < n.max_prefix_len() {
                            return inv(format!("SSH tests dst contains disallowed element {s:?}"));
                        }
                    }
                }
                _ => {}
            }
            dst.push(a);
        }
        let accept = as_str_list(f.get("accept").unwrap_or(&Value::Null), "accept")?;
        let deny = as_str_list(f.get("deny").unwrap_or(&Value::Null), "deny")?;
        let check = as_str_list(f.get("check").unwrap_or(&Value::Null), "check")?;
        for u in accept.iter().chain(deny.iter()).chain(check.iter()) {
            if u == "*" {
                return inv(format!("user {u:?} is not valid"));
            }
        }
        Ok(SshPolicyTest {
            src,
            dst,
            accept,
            deny,
            check,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(go_duration_string(-60_000_000_000), "-1m0s");
        assert_eq!(
            go_duration_string(parse_go_duration("168h1s").unwrap()),
            "168h0m1s"
        );
        assert_eq!(
            go_duration_string(parse_go_duration("200h").unwrap()),
            "200h0m0s"
        );
        assert!(parse_go_duration("abc").is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("*").unwrap(), vec![(0, 65535)]);
        assert_eq!(parse_ports("22,80-90").unwrap(), vec![(22, 22), (80, 90)]);
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("90-80").is_err());
        assert!(parse_ports("ssh").is_err());
        assert_eq!(
            split_dst_port("fd7a:115c:a1e0::40:22").unwrap(),
            ("fd7a:115c:a1e0::40".to_string(), "22".to_string())
        );
        assert_eq!(
            split_dst_port("[fd7a::1]:22").unwrap(),
            ("fd7a::1".to_string(), "22".to_string())
        );
    }

    #[test]
    fn rejections_use_tailscale_words() {
        let e =
            Policy::parse(r#"{"acls":[{"action":"deny","src":["*"],"dst":["*:*"]}]}"#).unwrap_err();
        assert!(e.to_string().contains("action=\"deny\" is not supported"));
        let e = Policy::parse(r#"{"acls":[{"action":"accept","src":["tag:x"],"dst":["*:*"]}]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("src=tag not found: \"tag:x\""));
        let e = Policy::parse("{\n \"acls\": [\n}").unwrap_err();
        assert!(matches!(e, PolicyError::Syntax { line: 3, .. }));
        assert!(Policy::parse("").unwrap().acls.is_none());
    }
}
