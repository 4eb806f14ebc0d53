//! JSON wire objects, named and spelled exactly as the client names them
//! (`tailcfg` in the Go tree). Decoders ignore unknown fields (every client
//! release adds some); Hostinfo is kept as raw JSON and echoed to peers.

use crate::keys::{DiscoKey, MachineKey, NodeKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `GET /key` response.
#[derive(Serialize, Deserialize)]
pub struct OverTlsPublicKeyResponse {
    #[serde(rename = "legacyPublicKey")]
    pub legacy_public_key: MachineKey,
    #[serde(rename = "publicKey")]
    pub public_key: MachineKey,
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct RegisterResponseAuth {
    #[serde(rename = "AuthKey", default, skip_serializing_if = "String::is_empty")]
    pub auth_key: String,
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct RegisterRequest {
    #[serde(rename = "Version", default)]
    pub version: u32,
    #[serde(rename = "NodeKey", default)]
    pub node_key: NodeKey,
    #[serde(rename = "OldNodeKey", default)]
    pub old_node_key: NodeKey,
    #[serde(rename = "Auth", default)]
    pub auth: Option<RegisterResponseAuth>,
    /// RFC 3339; zero = server decides, past = logout.
    #[serde(rename = "Expiry", default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    #[serde(rename = "Followup", default, skip_serializing_if = "String::is_empty")]
    pub followup: String,
    #[serde(rename = "Hostinfo", default, skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<serde_json::Value>,
    #[serde(rename = "Ephemeral", default)]
    pub ephemeral: bool,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct User {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    #[serde(rename = "ProfilePicURL", default)]
    pub profile_pic_url: String,
    /// Omitted when unknown: Go cannot parse `""` as a time, and a failed
    /// decode would hide the response's `Error` from the user.
    #[serde(rename = "Created", default, skip_serializing_if = "String::is_empty")]
    pub created: String,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Login {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(rename = "Provider", default)]
    pub provider: String,
    #[serde(rename = "LoginName")]
    pub login_name: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    #[serde(rename = "ProfilePicURL", default)]
    pub profile_pic_url: String,
}

/// Always carries `Error` (empty when fine): Tailscale's Rust client does
/// not treat a missing field as empty (protocol §6).
#[derive(Serialize, Deserialize, Default, Debug)]
pub struct RegisterResponse {
    #[serde(rename = "User", default)]
    pub user: User,
    #[serde(rename = "Login", default)]
    pub login: Login,
    #[serde(rename = "NodeKeyExpired", default)]
    pub node_key_expired: bool,
    #[serde(rename = "MachineAuthorized", default)]
    pub machine_authorized: bool,
    #[serde(rename = "AuthURL", default)]
    pub auth_url: String,
    #[serde(rename = "Error", default)]
    pub error: String,
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct MapRequest {
    #[serde(rename = "Version", default)]
    pub version: u32,
    #[serde(rename = "Compress", default)]
    pub compress: String,
    #[serde(rename = "KeepAlive", default)]
    pub keep_alive: bool,
    #[serde(rename = "NodeKey", default)]
    pub node_key: NodeKey,
    #[serde(rename = "DiscoKey", default)]
    pub disco_key: DiscoKey,
    #[serde(rename = "Stream", default)]
    pub stream: bool,
    #[serde(rename = "OmitPeers", default)]
    pub omit_peers: bool,
    #[serde(rename = "Hostinfo", default, skip_serializing_if = "Option::is_none")]
    pub hostinfo: Option<serde_json::Value>,
    /// Parsed leniently: an unparsable entry is skipped, not fatal.
    #[serde(rename = "Endpoints", default)]
    pub endpoints: Option<Vec<serde_json::Value>>,
}

/// Pre-encoded JSON shared between many messages: a peer's `Node` is
/// serialised once per change and reused for every viewer.
#[derive(Clone, Debug)]
pub struct SharedRaw(pub Arc<RawValue>);

impl SharedRaw {
    pub fn new(json: String) -> Option<SharedRaw> {
        RawValue::from_string(json)
            .ok()
            .map(|b| SharedRaw(Arc::from(b)))
    }
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl Serialize for SharedRaw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (*self.0).serialize(s)
    }
}

#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct UserProfile {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(rename = "LoginName")]
    pub login_name: String,
    #[serde(rename = "DisplayName")]
    pub display_name: String,
    #[serde(
        rename = "ProfilePicURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub profile_pic_url: String,
}

/// A `Node` as sent to clients (self or peer).
#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: u64,
    #[serde(rename = "StableID")]
    pub stable_id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "User")]
    pub user: u64,
    #[serde(rename = "Key")]
    pub key: NodeKey,
    #[serde(rename = "KeyExpiry")]
    pub key_expiry: String,
    #[serde(rename = "Machine", skip_serializing_if = "Option::is_none", default)]
    pub machine: Option<MachineKey>,
    #[serde(rename = "DiscoKey", skip_serializing_if = "Option::is_none", default)]
    pub disco_key: Option<DiscoKey>,
    #[serde(rename = "Addresses")]
    pub addresses: Vec<String>,
    #[serde(rename = "AllowedIPs")]
    pub allowed_ips: Vec<String>,
    #[serde(rename = "Endpoints", skip_serializing_if = "Vec::is_empty", default)]
    pub endpoints: Vec<String>,
    #[serde(rename = "HomeDERP", skip_serializing_if = "is_zero_i32", default)]
    pub home_derp: i32,
    #[serde(rename = "Hostinfo", default)]
    pub hostinfo: Option<serde_json::Value>,
    #[serde(rename = "Created")]
    pub created: String,
    #[serde(rename = "Cap", skip_serializing_if = "is_zero_u32", default)]
    pub cap: u32,
    #[serde(rename = "Tags", skip_serializing_if = "Vec::is_empty", default)]
    pub tags: Vec<String>,
    #[serde(
        rename = "PrimaryRoutes",
        skip_serializing_if = "Vec::is_empty",
        default
    )]
    pub primary_routes: Vec<String>,
    #[serde(rename = "LastSeen", skip_serializing_if = "Option::is_none", default)]
    pub last_seen: Option<String>,
    #[serde(rename = "Online", skip_serializing_if = "Option::is_none", default)]
    pub online: Option<bool>,
    #[serde(rename = "MachineAuthorized")]
    pub machine_authorized: bool,
    #[serde(rename = "CapMap", skip_serializing_if = "Option::is_none", default)]
    pub cap_map: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(
        rename = "Expired",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub expired: bool,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

/// One `PeersChangedPatch` entry: only the patchable fields exist.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
pub struct PeerChange {
    #[serde(rename = "NodeID")]
    pub node_id: u64,
    #[serde(
        rename = "DERPRegion",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub derp_region: Option<i32>,
    #[serde(rename = "Cap", skip_serializing_if = "Option::is_none", default)]
    pub cap: Option<u32>,
    #[serde(rename = "Endpoints", skip_serializing_if = "Option::is_none", default)]
    pub endpoints: Option<Vec<String>>,
    #[serde(rename = "Key", skip_serializing_if = "Option::is_none", default)]
    pub key: Option<NodeKey>,
    #[serde(rename = "DiscoKey", skip_serializing_if = "Option::is_none", default)]
    pub disco_key: Option<DiscoKey>,
    #[serde(rename = "Online", skip_serializing_if = "Option::is_none", default)]
    pub online: Option<bool>,
    #[serde(rename = "LastSeen", skip_serializing_if = "Option::is_none", default)]
    pub last_seen: Option<String>,
    #[serde(rename = "KeyExpiry", skip_serializing_if = "Option::is_none", default)]
    pub key_expiry: Option<String>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct DerpNode {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "RegionID")]
    pub region_id: u32,
    #[serde(rename = "HostName")]
    pub host_name: String,
    #[serde(rename = "IPv4", skip_serializing_if = "String::is_empty", default)]
    pub ipv4: String,
    #[serde(rename = "IPv6", skip_serializing_if = "String::is_empty", default)]
    pub ipv6: String,
    #[serde(rename = "STUNPort", skip_serializing_if = "is_zero_i32", default)]
    pub stun_port: i32,
    #[serde(
        rename = "STUNOnly",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub stun_only: bool,
    #[serde(rename = "DERPPort", skip_serializing_if = "is_zero_i32", default)]
    pub derp_port: i32,
    #[serde(rename = "CertName", skip_serializing_if = "String::is_empty", default)]
    pub cert_name: String,
    #[serde(
        rename = "InsecureForTests",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub insecure_for_tests: bool,
    #[serde(
        rename = "CanPort80",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub can_port80: bool,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct DerpRegion {
    #[serde(rename = "RegionID")]
    pub region_id: u32,
    #[serde(rename = "RegionCode")]
    pub region_code: String,
    #[serde(rename = "RegionName")]
    pub region_name: String,
    #[serde(rename = "Avoid", skip_serializing_if = "std::ops::Not::not", default)]
    pub avoid: bool,
    #[serde(rename = "Nodes")]
    pub nodes: Vec<DerpNode>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct DerpMap {
    /// Keys are region IDs as decimal strings.
    #[serde(rename = "Regions")]
    pub regions: BTreeMap<String, DerpRegion>,
    #[serde(
        rename = "omitDefaultRegions",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub omit_default_regions: bool,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Resolver {
    #[serde(rename = "Addr")]
    pub addr: String,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct DnsRecord {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Type", default, skip_serializing_if = "String::is_empty")]
    pub r#type: String,
    #[serde(rename = "Value")]
    pub value: String,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct DnsConfig {
    #[serde(rename = "Resolvers", skip_serializing_if = "Vec::is_empty", default)]
    pub resolvers: Vec<Resolver>,
    #[serde(rename = "Routes", skip_serializing_if = "BTreeMap::is_empty", default)]
    pub routes: BTreeMap<String, Vec<Resolver>>,
    #[serde(rename = "Domains", skip_serializing_if = "Vec::is_empty", default)]
    pub domains: Vec<String>,
    #[serde(
        rename = "Proxied",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub proxied: bool,
    #[serde(
        rename = "ExtraRecords",
        skip_serializing_if = "Vec::is_empty",
        default
    )]
    pub extra_records: Vec<DnsRecord>,
}

#[derive(Serialize, Deserialize, Default, Debug, Clone)]
pub struct Debug {
    #[serde(
        rename = "DisableLogTail",
        skip_serializing_if = "std::ops::Not::not",
        default
    )]
    pub disable_log_tail: bool,
}

/// A map-poll message. Absent / null means "unchanged" in a delta.
#[derive(Serialize, Default, Debug)]
pub struct MapResponse {
    #[serde(rename = "KeepAlive", skip_serializing_if = "std::ops::Not::not")]
    pub keep_alive: bool,
    #[serde(rename = "Node", skip_serializing_if = "Option::is_none")]
    pub node: Option<SharedRaw>,
    #[serde(rename = "DERPMap", skip_serializing_if = "Option::is_none")]
    pub derp_map: Option<SharedRaw>,
    #[serde(rename = "Peers", skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<SharedRaw>>,
    #[serde(rename = "PeersChanged", skip_serializing_if = "Option::is_none")]
    pub peers_changed: Option<Vec<SharedRaw>>,
    #[serde(rename = "PeersRemoved", skip_serializing_if = "Option::is_none")]
    pub peers_removed: Option<Vec<u64>>,
    #[serde(rename = "PeersChangedPatch", skip_serializing_if = "Option::is_none")]
    pub peers_changed_patch: Option<Vec<PeerChange>>,
    #[serde(rename = "DNSConfig", skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<SharedRaw>,
    #[serde(rename = "Domain", skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(rename = "CollectServices", skip_serializing_if = "Option::is_none")]
    pub collect_services: Option<bool>,
    #[serde(rename = "PacketFilters", skip_serializing_if = "Option::is_none")]
    pub packet_filters: Option<BTreeMap<String, SharedRaw>>,
    #[serde(rename = "SSHPolicy", skip_serializing_if = "Option::is_none")]
    pub ssh_policy: Option<SharedRaw>,
    #[serde(rename = "UserProfiles", skip_serializing_if = "Vec::is_empty")]
    pub user_profiles: Vec<UserProfile>,
    #[serde(rename = "ControlTime", skip_serializing_if = "Option::is_none")]
    pub control_time: Option<String>,
    #[serde(rename = "Debug", skip_serializing_if = "Option::is_none")]
    pub debug: Option<Debug>,
}

/// Reads `Hostinfo.NetInfo.PreferredDERP`.
pub fn preferred_derp(hostinfo: &serde_json::Value) -> i32 {
    hostinfo
        .get("NetInfo")
        .and_then(|n| n.get("PreferredDERP"))
        .and_then(|v| v.as_i64())
        .unwrap_or(0) as i32
}

/// Reads a string field of Hostinfo.
pub fn hostinfo_str<'a>(hostinfo: &'a serde_json::Value, key: &str) -> &'a str {
    hostinfo.get(key).and_then(|v| v.as_str()).unwrap_or("")
}

/// Reads a string-array field of Hostinfo (RoutableIPs, RequestTags).
pub fn hostinfo_strs(hostinfo: &serde_json::Value, key: &str) -> Vec<String> {
    hostinfo
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_client_requests_decode() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/register_request.json")).unwrap();
        let body = v
            .get("body")
            .or_else(|| v.get("json"))
            .cloned()
            .unwrap_or(v.clone());
        let r: RegisterRequest = serde_json::from_value(body).unwrap();
        assert_eq!(r.version, 130);
        assert!(!r.node_key.is_zero());
        let m: MapRequest =
            serde_json::from_str(include_str!("../tests/vectors/map-request-stream.json")).unwrap();
        assert!(m.stream && m.compress == "zstd" && !m.disco_key.is_zero());
        let l: MapRequest =
            serde_json::from_str(include_str!("../tests/vectors/map-request-lite.json")).unwrap();
        assert!(!l.stream && l.omit_peers);
    }

    #[test]
    fn register_response_always_has_error() {
        let s = serde_json::to_string(&RegisterResponse::default()).unwrap();
        assert!(s.contains("\"Error\":\"\""), "{s}");
        // Go's time decoder rejects "" and would hide the Error.
        assert!(!s.contains("\"\"Created\""), "{s}");
        assert!(!s.contains("\"Created\":\"\""), "{s}");
    }
}
