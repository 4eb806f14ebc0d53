//! The in-memory model: users, pre-auth keys and nodes. These structs are
//! also the redb values (postcard-encoded), so every field change here is a
//! schema change: bump `store::SCHEMA_VERSION` and add a migration.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Unix seconds. 0 means "unset" wherever a time is optional.
pub type Unix = i64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    /// Unique, as given to `users create`.
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub created: Unix,
    /// Stable identity at an OpenID Connect provider, `<issuer>/<sub>`
    /// (Headscale's `providerId`); empty for users made with `users create`.
    /// OIDC logins find their user by this, never by name or email, so a
    /// provider account cannot take over a same-named local user.
    pub provider_id: String,
    /// Picture URL from the provider's `picture` claim, shown by clients.
    pub profile_pic_url: String,
}

impl User {
    /// How policies and profiles name this user: the email when it has one,
    /// else `name@` (Headscale's convention).
    pub fn login_name(&self) -> String {
        if self.email.is_empty() {
            format!("{}@", self.name)
        } else {
            self.email.clone()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreAuthKey {
    pub id: u64,
    /// Owning user (0 when the key only carries tags).
    pub user: u64,
    /// Public, non-secret part of the key, used to find it and to list it.
    pub prefix: String,
    /// BLAKE2s-256 of the whole key string; the key itself is never stored.
    pub hash: [u8; 32],
    pub reusable: bool,
    pub ephemeral: bool,
    pub used: bool,
    pub created: Unix,
    /// 0 = never expires.
    pub expiration: Unix,
    pub tags: Vec<String>,
    /// bcrypt hash of the secret, for a key imported from Headscale (schema
    /// 4): such keys are checked against it instead of `hash`, so they keep
    /// working without their secret ever being known here. Empty for
    /// tinyscale's own keys. Appended last: an old row plus one zero byte
    /// (an empty string in postcard) is a valid new row.
    pub bcrypt: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: u64,
    pub machine_key: [u8; 32],
    pub node_key: [u8; 32],
    /// The key this node replaced at its last rotation (all zero if none).
    pub old_node_key: [u8; 32],
    pub disco_key: [u8; 32],
    /// Owning user; ignored for ownership when `tags` is non-empty.
    pub user: u64,
    pub tags: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Hostname as the client reported it.
    pub hostname: String,
    /// DNS label (unique), the first label of the MagicDNS name.
    pub given_name: String,
    /// Raw Hostinfo JSON as last reported, echoed to peers.
    pub hostinfo: String,
    pub endpoints: Vec<String>,
    pub home_derp: i32,
    pub cap: u32,
    pub created: Unix,
    /// 0 = never expires.
    pub expiry: Unix,
    pub last_seen: Unix,
    pub ephemeral: bool,
    /// The pre-auth key that registered it (0 if none).
    pub auth_key: u64,
    pub advertised_routes: Vec<String>,
    pub approved_routes: Vec<String>,
    /// How the node was last authorised (schema 3; older rows read as
    /// `Unknown` and are shown by their pre-auth key as before).
    pub register_method: RegisterMethod,
}

/// How a node was (last) authorised, for `nodes list` (Headscale's
/// `registerMethod`). Appended to [`Node`] last: postcard encodes a variant
/// as its index, so an old row plus one zero byte is a valid new row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterMethod {
    #[default]
    Unknown,
    AuthKey,
    Cli,
    Oidc,
}

impl Node {
    pub fn is_tagged(&self) -> bool {
        !self.tags.is_empty()
    }
    pub fn is_expired(&self, now: Unix) -> bool {
        self.expiry != 0 && self.expiry <= now
    }
    /// Routes both advertised by the node and approved for it.
    pub fn served(&self) -> impl Iterator<Item = &String> {
        self.approved_routes
            .iter()
            .filter(|r| self.advertised_routes.contains(r))
    }
    /// Serves a subnet route (not only an exit route): a candidate in the
    /// HA election.
    pub fn serves_subnet(&self) -> bool {
        self.served().any(|r| !is_exit(r))
    }
}

/// The default routes an exit node advertises.
pub fn is_exit(route: &str) -> bool {
    route == "0.0.0.0/0" || route == "::/0"
}
