//! Applies map messages the way the client does (map.md §5), so tests can
//! ask "what does this node believe now?".

use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Default, Debug, Clone)]
pub struct NetMap {
    pub self_node: Value,
    pub peers: BTreeMap<u64, Value>,
    pub packet_filter: Value,
    pub dns: Value,
    pub derp_map: Value,
    pub messages: u64,
}

fn id_of(v: &Value) -> Option<u64> {
    v.get("ID").and_then(|i| i.as_u64())
}

impl NetMap {
    pub fn apply(&mut self, m: &Value) {
        self.messages += 1;
        if m.get("KeepAlive").and_then(|k| k.as_bool()) == Some(true) {
            return;
        }
        if let Some(n) = m.get("Node").filter(|n| !n.is_null()) {
            self.self_node = n.clone();
        }
        if let Some(d) = m.get("DERPMap").filter(|n| !n.is_null()) {
            self.derp_map = d.clone();
        }
        if let Some(d) = m.get("DNSConfig").filter(|n| !n.is_null()) {
            self.dns = d.clone();
        }
        if let Some(f) = m.get("PacketFilters").and_then(|f| f.get("base")) {
            self.packet_filter = f.clone();
        } else if let Some(f) = m.get("PacketFilter").filter(|n| !n.is_null()) {
            self.packet_filter = f.clone();
        }
        match m
            .get("Peers")
            .and_then(|p| p.as_array())
            .filter(|p| !p.is_empty())
        {
            Some(peers) => {
                self.peers = peers
                    .iter()
                    .filter_map(|p| Some((id_of(p)?, p.clone())))
                    .collect();
            }
            None => {
                for id in m
                    .get("PeersRemoved")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(id) = id.as_u64() {
                        self.peers.remove(&id);
                    }
                }
                for p in m
                    .get("PeersChanged")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(id) = id_of(p) {
                        self.peers.insert(id, p.clone());
                    }
                }
                for p in m
                    .get("PeersChangedPatch")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten()
                {
                    let Some(id) = p.get("NodeID").and_then(|i| i.as_u64()) else {
                        continue;
                    };
                    let Some(peer) = self.peers.get_mut(&id) else {
                        continue;
                    };
                    let Some(obj) = peer.as_object_mut() else {
                        continue;
                    };
                    for (k, v) in p.as_object().into_iter().flatten() {
                        match k.as_str() {
                            "NodeID" => {}
                            "DERPRegion" => {
                                obj.insert("HomeDERP".into(), v.clone());
                            }
                            _ => {
                                obj.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
            }
        }
    }

    /// The peer named `label` (first label of its Name).
    pub fn peer_by_name(&self, label: &str) -> Option<&Value> {
        self.peers.values().find(|p| {
            p.get("Name")
                .and_then(|n| n.as_str())
                .is_some_and(|n| n.split('.').next() == Some(label))
        })
    }
}
