//! Policy engine: Tailscale ACL/grant/SSH/nodeAttrs semantics.
//!
//! # Using it from the control plane
//!
//! ```ignore
//! use tinyscale::policy::{self, Policy, Topology, TopoNode, TopoUser, Compiled};
//!
//! // 1. Parse (HuJSON; comments and trailing commas allowed). Syntax errors
//! //    carry line:column; semantic errors use Tailscale's wording.
//! let pol: Policy = Policy::parse(&text)?;
//!
//! // 2. Describe the tailnet, independent of server state.
//! let topo = Topology { users: vec![TopoUser { id: 1, name: "alice".into(),
//!                          email: Some("alice@example.com".into()) }],
//!                       nodes: vec![TopoNode { id: 1, name: "laptop".into(),
//!                          user_id: Some(1), ipv4: Some(..), ipv6: Some(..),
//!                          ..Default::default() }],
//!                       settings: Default::default() };
//!
//! // 3. Before activating a policy written by a user, run its tests:
//! policy::check_tests(&pol, &topo)?;       // Err(PolicyError::TestsFailed)
//!
//! // 4. Compile once per policy or topology change.
//! let c: Compiled = policy::compile(&pol, &topo);   // or Compiled::allow_all(&topo)
//! c.packet_filter(node_id)        // serde_json::Value: []tailcfg.FilterRule
//! c.peers(node_id)                // Vec<u64>: visible peers (symmetric)
//! c.peer_allowed_ips(viewer, peer)// Vec<IpNet>: AllowedIPs of peer for viewer
//! c.primary_routes(node_id)       // Vec<IpNet>: PrimaryRoutes
//! c.ssh_policy_with_url(node_id, "https://ctl.example") // Option<Value>
//! c.cap_map(node_id)              // Value: self CapMap
//! c.peer_cap_map(node_id)         // Option<Value>: CapMap when sent as a peer
//!
//! // Route auto-approval (call when a node advertises routes):
//! policy::auto_approves(&pol, &topo, node_id, &route) -> bool
//! ```
//!
//! With no policy at all use [`Compiled::allow_all`]. A policy with neither
//! `acls` nor `grants` also compiles to allow-all; `"acls": []` is deny-all
//! (empty filters, no peers).
//!
//! Users are matched by email when they have one, else by `name@`.
//!
//! `explain` reads a corpus capture (topology) and produces the per-node
//! view in the corpus shape; the `policy` CLI subcommand is in [`cli`].

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

pub use compile::{compile, Compiled, TailnetSettings, TopoNode, TopoUser, Topology};
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
