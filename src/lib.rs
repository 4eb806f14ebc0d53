//! tinyscale: a small self-hosted Tailscale control server.
//!
//! The crate is split into rooms with one concern each (see README.md):
//! wire codecs without I/O, the JSON wire types, the Noise transport, the
//! HTTP front door, the control plane, state and storage, policy, DERP/STUN,
//! the admin plane and the CLI.

#[cfg(feature = "acme")]
pub mod acme;
pub mod api;
pub mod app;
pub mod atomic64;
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
pub mod ratelimit;
pub mod secretfile;
pub mod state;
pub mod tailcfg;
pub mod timefmt;
pub mod web;
pub mod wire;
