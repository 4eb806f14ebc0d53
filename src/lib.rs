//! tinyscale: a small self-hosted Tailscale control server.
//!
//! The crate is split into rooms with one concern each.
//! Imports go one way only, downwards in this map:
//!
//! ```text
//! cli (entry: main, loads the config) ─► app (top level: builds, binds, wires)
//!   web · oidc · acme   the admin page, OIDC logins, ACME certificates
//!   api                 the one API room: REST API, admin socket, the page's routes, its cookie check
//!   control             register, map sessions, hub, policy in force
//!   http · noise · derp the transport: accept loops, TLS, HTTP/1 heads, Noise, h2; DERP/STUN
//!   state · policy · metrics · session · config · tailcfg · keys · …   leaves
//!   wire                codecs without I/O
//! ```
//!
//! The transport learns what a connection is for only through the traits
//! the top-level room hands it (`http::Service` for the listeners,
//! `http::h2srv::Handler` for requests inside Noise); the planes above the
//! control plane call into it, never the reverse. `layers` (a unit test)
//! fails on an import against this map for the rooms it checks (state
//! included: the API-key table, which the store's schema upgrades rewrite,
//! lives in `state::apikey`; `api::apikey` re-exports it).

#[cfg(feature = "acme")]
pub mod acme;
pub mod api;
pub mod app;
pub mod atomic64;
pub mod bcrypt;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod debug;
pub mod derp;
pub mod http;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod noise;
#[cfg(feature = "oidc")]
pub mod oidc;
pub mod policy;
pub mod procfs;
pub mod ratelimit;
pub mod secretfile;
pub mod session;
pub mod state;
pub mod tailcfg;
pub mod timefmt;
pub mod web;
pub mod wire;

#[cfg(test)]
mod layers;
