//! The API room: one implementation of Headscale's v1 REST API that every
//! way in calls — the admin unix socket (the local CLI, no key: the peer's
//! uid is checked), `/api/v1/*` on the main listener (an API key), the
//! remote CLI, and the built-in web page's script.
//!
//! - [`routes`]: method + path + body → status + JSON, transport-free.
//! - [`types`]: the JSON shapes (grpc-gateway's).
//! - [`apikey`]: `hskey-api-…` keys, hashed at rest (the table is the
//!   store's: `state::apikey`, re-exported here).
//! - [`http1`]: one HTTP/1.1 request on any async stream, with the
//!   caller's authorisation decided before the body is read.
//! - [`socket`]: the admin socket.
//! - [`backup`]: `POST /api/v1/backup`, served on the admin socket only.
//! - [`web`]: the admin page's own routes (`/api/v1/web/*`) and its
//!   browser sessions as a way to authorise.

pub mod backup;
pub mod http1;
pub mod routes;
pub mod socket;
pub mod types;
pub mod web;

/// The API-key table lives with the store; the API room serves it.
pub use crate::state::apikey;
pub use routes::{error, handle, pct_decode, Reply, META_POLICY_UPDATED};
pub use socket::{spawn, MAX_BODY};
