//! Self `CapMap` per node: baseline capabilities + `nodeAttrs` +
//! `randomizeClientPort`.

use super::compile::Ctx;
use super::ipset::IpSet;
use serde_json::{json, Map, Value};

pub(crate) fn cap_maps(ctx: &Ctx) -> Vec<Map<String, Value>> {
    let n = ctx.topo.nodes.len();
    let mut out: Vec<Map<String, Value>> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut m = Map::new();
        m.insert("https://tailscale.com/cap/ssh".into(), Value::Null);
        if ctx.topo.settings.file_sharing {
            m.insert("https://tailscale.com/cap/file-sharing".into(), Value::Null);
        }
        m.insert(
            "default-auto-update".into(),
            json!([ctx.topo.settings.auto_update]),
        );
        if ctx.pol.randomize_client_port {
            m.insert("randomize-client-port".into(), Value::Null);
        }
        out.push(m);
    }
    for na in &ctx.pol.node_attrs {
        if na.attr.is_empty() && na.app.is_none() {
            continue;
        }
        let mut set = IpSet::new();
        for t in &na.target {
            set.union_with(&ctx.resolve(t));
        }
        for (i, m) in out.iter_mut().enumerate() {
            if !ctx.node_in(i, &set) {
                continue;
            }
            for a in &na.attr {
                m.entry(a.clone()).or_insert(Value::Null);
            }
            if let Some(app) = &na.app {
                for (k, v) in app {
                    let entry = m.entry(k.clone()).or_insert(Value::Array(vec![]));
                    if let (Value::Array(dst), Value::Array(src)) = (entry, v) {
                        dst.extend(src.iter().cloned());
                    }
                }
            }
        }
    }
    out
}
