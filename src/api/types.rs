//! JSON objects of the REST API, shaped as Headscale's grpc-gateway writes
//! them (protojson: 64-bit ids as strings, RFC 3339 times, lowerCamelCase,
//! every field present, unset messages `null`). Shared by the server
//! (serialise) and the CLI (deserialise). Request bodies accept what
//! grpc-gateway accepts: camelCase or the proto's snake_case names, 64-bit
//! ids as JSON numbers or strings, unknown fields ignored.

use crate::state::{Node, PreAuthKey, RegisterMethod, User};
use crate::timefmt::rfc3339;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiUser {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub display_name: String,
    pub email: String,
    pub provider_id: String,
    pub provider: String,
    pub profile_pic_url: String,
}

impl From<&User> for ApiUser {
    fn from(u: &User) -> Self {
        ApiUser {
            id: u.id.to_string(),
            name: u.name.clone(),
            created_at: rfc3339(u.created),
            display_name: u.display_name.clone(),
            email: u.email.clone(),
            provider: if u.provider_id.is_empty() {
                String::new()
            } else {
                "oidc".into()
            },
            provider_id: u.provider_id.clone(),
            profile_pic_url: u.profile_pic_url.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiPreAuthKey {
    pub user: Option<ApiUser>,
    pub id: String,
    /// The full key right after creation; afterwards a masked form
    /// `hskey-auth-<prefix>-***`.
    pub key: String,
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    /// None (JSON null) for a key that never expires, as Headscale.
    pub expiration: Option<String>,
    pub created_at: String,
    pub acl_tags: Vec<String>,
}

impl ApiPreAuthKey {
    pub fn new(k: &PreAuthKey, user: Option<&User>, full_key: Option<&str>) -> Self {
        ApiPreAuthKey {
            user: user.map(ApiUser::from),
            id: k.id.to_string(),
            key: match full_key {
                Some(f) => f.to_string(),
                None => format!("{}{}-***", crate::state::ops::KEY_PREFIX, k.prefix),
            },
            reusable: k.reusable,
            ephemeral: k.ephemeral,
            used: k.used,
            expiration: (k.expiration != 0).then(|| rfc3339(k.expiration)),
            created_at: rfc3339(k.created),
            acl_tags: k.tags.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiNode {
    pub id: String,
    pub machine_key: String,
    pub node_key: String,
    pub disco_key: String,
    pub ip_addresses: Vec<String>,
    /// Hostname as the client reported it.
    pub name: String,
    pub user: Option<ApiUser>,
    pub last_seen: Option<String>,
    pub expiry: Option<String>,
    pub pre_auth_key: Option<ApiPreAuthKey>,
    pub created_at: String,
    pub register_method: String,
    /// DNS label (MagicDNS name).
    pub given_name: String,
    pub online: bool,
    pub approved_routes: Vec<String>,
    pub available_routes: Vec<String>,
    /// Routes the node serves (`list-routes`' "Serving (Primary)"): the admin API sets them from
    /// the HA election (`Server::routes_in_effect`); [`ApiNode::new`] alone can only say
    /// approved ∩ advertised.
    pub subnet_routes: Vec<String>,
    pub tags: Vec<String>,
    /// The client's version as it reports it (Hostinfo.IPNVersion), e.g.
    /// "1.90.9-t…": what an administrator checks before blaming the server.
    pub client_version: String,
}

impl ApiNode {
    pub fn new(n: &Node, user: Option<&User>, key: Option<&PreAuthKey>, online: bool) -> Self {
        use crate::keys::{DiscoKey, MachineKey, NodeKey};
        let mut ips = Vec::new();
        if let Some(a) = n.ipv4 {
            ips.push(a.to_string());
        }
        if let Some(a) = n.ipv6 {
            ips.push(a.to_string());
        }
        let opt_time = |t: i64| (t != 0).then(|| rfc3339(t));
        ApiNode {
            id: n.id.to_string(),
            machine_key: MachineKey(n.machine_key).to_string(),
            node_key: NodeKey(n.node_key).to_string(),
            disco_key: DiscoKey(n.disco_key).to_string(),
            ip_addresses: ips,
            name: n.hostname.clone(),
            user: user.map(ApiUser::from),
            last_seen: opt_time(n.last_seen),
            expiry: opt_time(n.expiry),
            pre_auth_key: key.map(|k| ApiPreAuthKey::new(k, user, None)),
            created_at: rfc3339(n.created),
            register_method: match n.register_method {
                RegisterMethod::AuthKey => "REGISTER_METHOD_AUTH_KEY",
                RegisterMethod::Cli => "REGISTER_METHOD_CLI",
                RegisterMethod::Oidc => "REGISTER_METHOD_OIDC",
                // Rows from before schema 3: as they were shown then.
                RegisterMethod::Unknown if n.auth_key != 0 => "REGISTER_METHOD_AUTH_KEY",
                RegisterMethod::Unknown => "REGISTER_METHOD_CLI",
            }
            .into(),
            given_name: n.given_name.clone(),
            online,
            approved_routes: n.approved_routes.clone(),
            available_routes: n.advertised_routes.clone(),
            subnet_routes: n
                .approved_routes
                .iter()
                .filter(|r| n.advertised_routes.contains(r))
                .cloned()
                .collect(),
            tags: n.tags.clone(),
            client_version: client_version(&n.hostinfo),
        }
    }
}

/// Hostinfo.IPNVersion from the stored Hostinfo JSON; empty if absent.
fn client_version(hostinfo: &str) -> String {
    #[derive(Deserialize)]
    struct Hi {
        #[serde(rename = "IPNVersion", default)]
        v: String,
    }
    serde_json::from_str::<Hi>(hostinfo)
        .map(|h| h.v)
        .unwrap_or_default()
}

/// Error body as grpc-gateway writes it: the gRPC status code, the message
/// (what Headplane and headscale-ui show) and an empty details list.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiError {
    pub code: u32,
    pub message: String,
    pub details: Vec<serde_json::Value>,
}

/// A 64-bit id as grpc-gateway reads it: a JSON string or number (absent
/// or null = empty). Kept as text: the API also accepts names and
/// prefixes where Headscale takes an id.
pub fn id_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        S(String),
        N(u64),
        Null(()),
    }
    Ok(match Id::deserialize(d)? {
        Id::S(s) => s,
        Id::N(n) => n.to_string(),
        Id::Null(()) => String::new(),
    })
}

// Request bodies.

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreateUserRequest {
    pub name: String,
    #[serde(alias = "display_name")]
    pub display_name: String,
    pub email: String,
    #[serde(alias = "picture_url")]
    pub picture_url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CreatePreAuthKeyRequest {
    /// User ID (or name).
    #[serde(deserialize_with = "id_text")]
    pub user: String,
    pub reusable: bool,
    pub ephemeral: bool,
    /// RFC 3339; absent or Go's zero time = never expires.
    pub expiration: Option<String>,
    #[serde(alias = "acl_tags")]
    pub acl_tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExpirePreAuthKeyRequest {
    /// Key ID; tinyscale also accepts the key's prefix or the full key here.
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    /// Older Headscale shape: user + key.
    #[serde(deserialize_with = "id_text")]
    pub user: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ExpireNodeRequest {
    pub expiry: Option<String>,
    #[serde(alias = "disable_expiry")]
    pub disable_expiry: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SetPolicyRequest {
    pub policy: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SetTagsRequest {
    pub tags: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SetApprovedRoutesRequest {
    pub routes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AuthRegisterRequest {
    /// The registration ID from the client's AuthURL (`…/register/<id>`).
    #[serde(alias = "auth_id")]
    pub auth_id: String,
    /// Alternative spelling of `authId`.
    pub key: String,
    /// User ID or name.
    pub user: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CreateApiKeyRequest {
    /// RFC 3339; absent = the default lifetime.
    pub expiration: Option<String>,
}

/// `apikey/expire` and `DELETE apikey/{prefix}`: the masked prefix
/// (`hskey-api-<prefix>-***`, the bare prefix) or the id.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiKeyRef {
    pub prefix: String,
    #[serde(deserialize_with = "id_text")]
    pub id: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiApiKey {
    pub id: String,
    /// Masked: `hskey-api-<prefix>-***`.
    pub prefix: String,
    pub expiration: Option<String>,
    pub created_at: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BackfillRequest {
    pub confirmed: bool,
}
