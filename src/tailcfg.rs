//! JSON wire objects, named and spelled exactly as the client names them
//! (`tailcfg` in the Go tree). Decoders ignore unknown fields (every client
//! release adds some). Hostinfo is decoded into [`Hostinfo`]: what peers
//! and the server use, nothing else, from at most [`MAX_HOSTINFO`] bytes.

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
    #[serde(
        rename = "Hostinfo",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_hostinfo"
    )]
    pub hostinfo: Option<Hostinfo>,
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
    #[serde(
        rename = "Hostinfo",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_hostinfo"
    )]
    pub hostinfo: Option<Hostinfo>,
    /// Parsed leniently: an entry that is not a string is skipped, not
    /// fatal; at most [`MAX_ENDPOINTS`] are kept, nothing is built for the
    /// rest.
    #[serde(
        rename = "Endpoints",
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounded_endpoints"
    )]
    pub endpoints: Option<Vec<String>>,
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
    pub hostinfo: Option<Hostinfo>,
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
    /// Used only when the node has no DNS of its own to keep
    /// (`dns.override_local_dns: false`).
    #[serde(
        rename = "FallbackResolvers",
        skip_serializing_if = "Vec::is_empty",
        default
    )]
    pub fallback_resolvers: Vec<Resolver>,
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

/// Largest Hostinfo accepted, as JSON text. Real clients send 1–3 KB
/// (SSH host keys and services being the largest parts); the request body
/// cap (1 MiB) is no bound for something that is kept per node, stored,
/// and sent to every peer.
pub const MAX_HOSTINFO: usize = 16 * 1024;

/// Decodes a Hostinfo of at most [`MAX_HOSTINFO`] bytes of JSON, checked on
/// the borrowed text before anything is built from it.
fn bounded_hostinfo<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Hostinfo>, D::Error> {
    use serde::de::Error;
    let Some(raw) = Option::<&'de RawValue>::deserialize(d)? else {
        return Ok(None);
    };
    if raw.get().len() > MAX_HOSTINFO {
        return Err(D::Error::custom(format!(
            "Hostinfo is larger than {MAX_HOSTINFO} bytes"
        )));
    }
    if raw.get() == "null" {
        return Ok(None);
    }
    serde_json::from_str(raw.get())
        .map(Some)
        .map_err(D::Error::custom)
}

/// A field of the wrong type (or `null`, which a client written in another
/// language may send for an empty field) reads as its default instead of
/// failing the whole request: Hostinfo is descriptive, never a reason to
/// refuse a client.
///
/// The field is taken as its raw JSON text (one copy) and decoded from
/// that, not through a `serde_json::Value`: a value tree costs up to ~100
/// times its text (a one-entry object is a 600-byte B-tree node), so a
/// 16 KiB Hostinfo of `[{"":0},…]` held 1.6 MB while it was decoded
/// (found by fuzz/fuzz_targets/control_decode.rs's allocation bound).
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let raw = Box::<RawValue>::deserialize(d)?;
    Ok(serde_json::from_str(raw.get()).unwrap_or_default())
}

/// Endpoints kept from one MapRequest (a client reports a handful: LAN,
/// STUN-mapped, port-mapped addresses).
pub const MAX_ENDPOINTS: usize = 64;

/// Endpoints as a list of strings: other entries (a client's
/// `EndpointTypes` mix-up, garbage) are skipped without building them.
fn bounded_endpoints<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    struct Seq;
    impl<'de> serde::de::Visitor<'de> for Seq {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of endpoints")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut a: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(e) = a.next_element::<MaybeStr>()? {
                if let (Some(s), true) = (e.0, out.len() < MAX_ENDPOINTS) {
                    out.push(s);
                }
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(Seq)
}

/// A string, or anything else skipped (None) without being built.
struct MaybeStr(Option<String>);

impl<'de> Deserialize<'de> for MaybeStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaybeStr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E>(self, s: &str) -> Result<MaybeStr, E> {
                Ok(MaybeStr((s.len() <= 64).then(|| s.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeStr, E> {
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<MaybeStr, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<MaybeStr, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a client reports about itself (`tailcfg.Hostinfo`), reduced to
/// what the server uses (name, routes, tags, home DERP, version) and what
/// peers use (OS for `tailscale status`, services for Taildrop's peerapi,
/// SSH host keys, ingress/app-connector flags). Everything else a client
/// sends (log IDs, push tokens, …) is dropped at decode time.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct Hostinfo {
    #[serde(
        rename = "IPNVersion",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub ipn_version: String,
    #[serde(
        rename = "OS",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub os: String,
    #[serde(
        rename = "OSVersion",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub os_version: String,
    #[serde(
        rename = "Container",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub container: Option<bool>,
    #[serde(
        rename = "Env",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub env: String,
    #[serde(
        rename = "Distro",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub distro: String,
    #[serde(
        rename = "DistroVersion",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub distro_version: String,
    #[serde(
        rename = "DistroCodeName",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub distro_code_name: String,
    #[serde(
        rename = "App",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub app: String,
    #[serde(
        rename = "Desktop",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub desktop: Option<bool>,
    #[serde(
        rename = "Package",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub package: String,
    #[serde(
        rename = "DeviceModel",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub device_model: String,
    #[serde(
        rename = "Hostname",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub hostname: String,
    #[serde(
        rename = "ShieldsUp",
        skip_serializing_if = "is_false",
        deserialize_with = "lenient"
    )]
    pub shields_up: bool,
    #[serde(
        rename = "ShareeNode",
        skip_serializing_if = "is_false",
        deserialize_with = "lenient"
    )]
    pub sharee_node: bool,
    #[serde(
        rename = "NoLogsNoSupport",
        skip_serializing_if = "is_false",
        deserialize_with = "lenient"
    )]
    pub no_logs_no_support: bool,
    #[serde(
        rename = "WireIngress",
        skip_serializing_if = "is_false",
        deserialize_with = "lenient"
    )]
    pub wire_ingress: bool,
    #[serde(
        rename = "IngressEnabled",
        skip_serializing_if = "is_false",
        deserialize_with = "lenient"
    )]
    pub ingress_enabled: bool,
    #[serde(
        rename = "AllowsUpdate",
        skip_serializing_if = "is_false",
        deserialize_with = "lenient"
    )]
    pub allows_update: bool,
    #[serde(
        rename = "Machine",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub machine: String,
    #[serde(
        rename = "GoArch",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub go_arch: String,
    #[serde(
        rename = "GoArchVar",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub go_arch_var: String,
    #[serde(
        rename = "GoVersion",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub go_version: String,
    #[serde(
        rename = "RoutableIPs",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub routable_ips: Vec<String>,
    #[serde(
        rename = "RequestTags",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub request_tags: Vec<String>,
    #[serde(
        rename = "Services",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub services: Vec<Service>,
    #[serde(
        rename = "NetInfo",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub net_info: Option<NetInfo>,
    #[serde(
        rename = "SSH_HostKeys",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient"
    )]
    pub ssh_host_keys: Vec<String>,
    #[serde(
        rename = "Cloud",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub cloud: String,
    #[serde(
        rename = "Userspace",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub userspace: Option<bool>,
    #[serde(
        rename = "UserspaceRouter",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub userspace_router: Option<bool>,
    #[serde(
        rename = "AppConnector",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub app_connector: Option<bool>,
    #[serde(
        rename = "ServicesHash",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub services_hash: String,
    #[serde(
        rename = "Location",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub location: Option<Location>,
}

/// `tailcfg.Service`: what a node listens on (peerapi ports for Taildrop).
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct Service {
    #[serde(rename = "Proto", deserialize_with = "lenient")]
    pub proto: String,
    #[serde(rename = "Port", deserialize_with = "lenient")]
    pub port: u16,
    #[serde(
        rename = "Description",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub description: String,
}

/// `tailcfg.NetInfo`, reduced to what `tailscale status` and netcheck
/// output show for a peer.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct NetInfo {
    #[serde(
        rename = "MappingVariesByDestIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub mapping_varies_by_dest_ip: Option<bool>,
    #[serde(
        rename = "WorkingIPv6",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub working_ipv6: Option<bool>,
    #[serde(
        rename = "OSHasIPv6",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub os_has_ipv6: Option<bool>,
    #[serde(
        rename = "WorkingUDP",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub working_udp: Option<bool>,
    #[serde(rename = "PreferredDERP", deserialize_with = "lenient")]
    pub preferred_derp: i32,
    #[serde(
        rename = "LinkType",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub link_type: String,
}

/// `tailcfg.Location`: shown for exit nodes.
#[derive(Serialize, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default)]
pub struct Location {
    #[serde(
        rename = "Country",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub country: String,
    #[serde(
        rename = "CountryCode",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub country_code: String,
    #[serde(
        rename = "City",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub city: String,
    #[serde(
        rename = "CityCode",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "lenient"
    )]
    pub city_code: String,
    #[serde(
        rename = "Priority",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    pub priority: Option<i32>,
}

impl Hostinfo {
    /// `NetInfo.PreferredDERP`, 0 when unknown.
    pub fn preferred_derp(&self) -> i32 {
        self.net_info.as_ref().map_or(0, |n| n.preferred_derp)
    }

    /// Nothing reported (`{}`).
    pub fn is_empty(&self) -> bool {
        *self == Hostinfo::default()
    }
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
        // From text, as bodies arrive (Hostinfo's bound reads the text).
        let r: RegisterRequest = serde_json::from_str(&body.to_string()).unwrap();
        let h = r.hostinfo.as_ref().expect("the capture has a Hostinfo");
        assert_eq!((h.hostname.as_str(), h.os.as_str()), ("cap", "linux"));
        assert_eq!(h.container, Some(true));
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
    fn hostinfo_is_bounded_and_lenient() {
        // null and wrong types read as empty; unknown fields are dropped.
        let r: RegisterRequest = serde_json::from_str(
            r#"{"Hostinfo":{"Hostname":"h","OS":null,"RoutableIPs":"x","Desktop":"yes",
            "NetInfo":{"PreferredDERP":3,"LinkType":null},"FrontendLogID":"f"}}"#,
        )
        .unwrap();
        let h = r.hostinfo.unwrap();
        assert_eq!(h.hostname, "h");
        assert!(h.os.is_empty() && h.routable_ips.is_empty() && h.desktop.is_none());
        assert_eq!(h.preferred_derp(), 3);
        assert!(!serde_json::to_string(&h).unwrap().contains("FrontendLogID"));
        // Over the bound: the request is refused, naming why.
        let big = format!(
            r#"{{"Hostinfo":{{"Hostname":"{}"}}}}"#,
            "a".repeat(MAX_HOSTINFO)
        );
        let e = serde_json::from_str::<MapRequest>(&big).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        // Endpoints: strings only, at most MAX_ENDPOINTS.
        let many: Vec<serde_json::Value> = (0..100)
            .map(|i| serde_json::json!(format!("192.0.2.1:{i}")))
            .chain([serde_json::json!({"x": [1, 2]}), serde_json::json!(7)])
            .collect();
        let m: MapRequest =
            serde_json::from_str(&serde_json::json!({ "Endpoints": many }).to_string()).unwrap();
        let eps = m.endpoints.unwrap();
        assert_eq!((eps.len(), eps[0].as_str()), (MAX_ENDPOINTS, "192.0.2.1:0"));
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
