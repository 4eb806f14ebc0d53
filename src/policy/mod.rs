//! Policy engine: Tailscale ACL / grant / SSH / nodeAttrs semantics,
//! checked against 866 captures of Tailscale's own control plane
//! (`tests/corpus.rs`).
//!
//! # API for the control plane
//!
//! ```ignore
//! use tinyscale::policy::{self, Compiled, Policy, TailnetSettings, TopoNode, TopoUser, Topology};
//!
//! // 1. Describe the tailnet, independent of server state. A node with any
//! //    tag is tagged (ownerless); `approved_routes` ∩ `advertised_routes`
//! //    are the routes it serves. Lower node IDs win HA primary elections.
//! let topo = Topology {
//!     users: vec![TopoUser { id: 1, name: "alice".into(), email: Some("alice@example.com".into()) }],
//!     nodes: vec![TopoNode { id: 1, name: "laptop".into(), user_id: Some(1),
//!                            ipv4: Some(v4), ipv6: Some(v6), ..Default::default() }],
//!     settings: TailnetSettings::default(), // file_sharing, auto_update, owner_user_id,
//!                                           // admin_user_ids, domains (user:*@domain)
//! };
//!
//! // 2. On a policy write: parse (HuJSON, ≤ 4 MiB), validate against the
//! //    tailnet and run the policy's `tests`/`sshTests`. Errors use
//! //    Tailscale's wording; syntax errors carry line:column.
//! let pol: Policy = policy::parse_and_check(&text, &topo)?;   // Result<Policy, PolicyError>
//! //    (or Policy::parse(&text)? + policy::check_tests(&pol, &topo)? separately;
//! //     skip the tests when re-loading an already stored policy at boot)
//!
//! // 3. Compile once per policy or topology change (≈0.2 s for 1000 nodes ×
//! //    100 rules at opt-level 3), then answer per node:
//! let c: Compiled = policy::compile(&pol, &topo);  // no policy at all: Compiled::allow_all(&topo)
//! c.packet_filter(id) -> serde_json::Value      // []tailcfg.FilterRule; `[]` = deny all, send it
//! c.peers(id) -> Vec<u64>                       // visible peers (symmetric), sorted
//! c.peer_allowed_ips(viewer, peer) -> Vec<IpNet>    // peer's AllowedIPs for this viewer
//! c.peer_primary_routes(viewer, peer) -> Vec<IpNet> // peer's PrimaryRoutes for this viewer
//! c.primary_routes(id) -> Vec<IpNet>            // self PrimaryRoutes
//! c.self_allowed_ips(id, &topo) -> Vec<IpNet>   // self AllowedIPs
//! c.ssh_policy_with_url(id, server_url) -> Option<Value> // {"rules": [...]}; None: no ssh section
//! c.cap_map(id) -> Value                        // self CapMap (baseline caps + nodeAttrs)
//! c.peer_cap_map(id) -> Option<Value>           // CapMap when sent as a peer
//!
//! // Route auto-approval, when a node advertises routes:
//! policy::auto_approves(&pol, &topo, node_id, &route) -> bool
//! pol.ssh_check_periods() -> Vec<Option<i64>>   // checkPeriod per ssh rule (ns)
//! ```
//!
//! Semantics worth knowing: a policy with neither `acls` nor `grants`
//! compiles like `src:["*"] → dst:["*"]` (allow-all), while `"acls": []`
//! is deny-all (empty filters, no peers). Users are matched by email when
//! they have one, else by `name@`. Rule spelling follows SaaS byte for
//! byte: every node address is listed on its own, `*` sources expand to the
//! CGNAT/ULA ranges plus approved subnet routes, `autogroup:internet` is
//! seven explicit ranges.
//!
//! [`explain`] compiles against a corpus capture's topology and renders
//! the per-node view in the corpus shape; the `policy` CLI subcommand
//! (`explain`, `check`) is in [`cli`].

pub mod cli;
mod compile;
pub mod explain;
pub mod hujson;
mod ipset;
mod model;
mod nodeattrs;
mod ssh;
mod testeval;
#[cfg(test)]
mod tests;

pub use compile::{
    compile, compile_bounded, Compiled, TailnetSettings, TopoNode, TopoUser, Topology,
    COMPILE_BUDGET, COMPILE_BUDGET_PER_NODE,
};
pub use explain::explain;
pub use model::{Policy, PolicyError};

use ipnet::IpNet;
use model::{Acl, Alias, AutoGroup, Grant, ProtoPorts};

/// ACL entry → grants (one per destination; non-self destinations first
/// unless every destination is an autogroup).
pub(crate) fn acl_to_grants(acl: &Acl) -> Vec<Grant> {
    let mk = |a: &Alias, ports: &Vec<(u16, u16)>| Grant {
        src: acl.src.clone(),
        dst: vec![a.clone()],
        ip: vec![ProtoPorts {
            proto: acl.proto.clone(),
            ports: ports.clone(),
        }],
        app: None,
        via: vec![],
    };
    let all_auto = acl
        .dst
        .iter()
        .all(|(a, _)| matches!(a, Alias::Auto(_) | Alias::UnknownAuto(_)));
    let is_self = |a: &Alias| *a == Alias::Auto(AutoGroup::SelfDevices);
    if all_auto {
        acl.dst.iter().map(|(a, p)| mk(a, p)).collect()
    } else {
        let mut v: Vec<Grant> = acl
            .dst
            .iter()
            .filter(|(a, _)| !is_self(a))
            .map(|(a, p)| mk(a, p))
            .collect();
        v.extend(
            acl.dst
                .iter()
                .filter(|(a, _)| is_self(a))
                .map(|(a, p)| mk(a, p)),
        );
        v
    }
}

/// Validate the parts of a policy that depend on the tailnet (domains in
/// `user:*@domain` / `localpart:*@domain`) and run its `tests` and
/// `sshTests` against `topo`.
pub fn check_tests(policy: &Policy, topo: &Topology) -> Result<(), PolicyError> {
    if let Some(e) = policy.domain_error(&topo.settings.domains) {
        return Err(PolicyError::Invalid(e));
    }
    let ctx = compile::Ctx::new(policy, topo);
    let mut fails = testeval::run_tests(&ctx);
    fails.extend(testeval::run_ssh_tests(&ctx));
    if fails.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::TestsFailed(fails.join("\n")))
    }
}

/// Parse a policy and run its tests against `topo` (what a policy write
/// should do before activating it).
pub fn parse_and_check(text: &str, topo: &Topology) -> Result<Policy, PolicyError> {
    let p = Policy::parse(text)?;
    check_tests(&p, topo)?;
    Ok(p)
}

/// May `autoApprovers` approve `route` advertised by node `node_id`?
/// Exit routes (`0.0.0.0/0`, `::/0`) are approved only via `exitNode`;
/// other routes by any `routes` key that contains them.
pub fn auto_approves(policy: &Policy, topo: &Topology, node_id: u64, route: &IpNet) -> bool {
    let Some(i) = topo.nodes.iter().position(|n| n.id == node_id) else {
        return false;
    };
    let ctx = compile::Ctx::new(policy, topo);
    let aa = &policy.auto_approvers;
    if route.prefix_len() == 0 {
        return aa.exit_node.iter().any(|a| ctx.node_in(i, &ctx.resolve(a)));
    }
    for (key, approvers) in &aa.routes {
        if key.prefix_len() <= route.prefix_len()
            && compile::nets_overlap(key, route)
            && approvers.iter().any(|a| ctx.node_in(i, &ctx.resolve(a)))
        {
            return true;
        }
    }
    false
}
