//! Embedded DERP relay and STUN responder.
//!
//! The wire formats live in [`crate::wire::derp`] and [`crate::wire::stun`];
//! this module owns sockets, tasks, crypto and the relay's state.
//!
//! Wiring it into the server (the front door owns TLS and HTTP):
//!
//! 1. Load or create the relay's own X25519 key (never the Noise machine
//!    key): [`DerpServer::generate_private_key`] once, persist it, then
//!    `Arc::new(DerpServer::new(key).with_verify(hook))`, where the hook
//!    answers "is this node key registered here?" from state.
//! 2. `GET /derp`: if [`http::is_derp_upgrade`] on the `Upgrade` header,
//!    write [`http::switching_protocols_response`] and hand the raw stream
//!    (HTTP/1.1, no h2) to [`serve_derp_conn`] (or
//!    [`serve_derp_conn_from`] with the peer address); otherwise `426`.
//!    `/derp/probe` and `/derp/latency-check` are plain `200`s;
//!    `/generate_204` uses [`http::generate_204_response`].
//! 3. `spawn_stun("[::]:3478".parse()?)?.detach()` for STUN.
//! 4. On node deletion or key rotation call [`DerpServer::close_client`];
//!    on shutdown [`DerpServer::shutdown`] so clients reconnect promptly.
//! 5. Publish the region with `STUNPort` and `DERPPort` in the DERP map.

pub mod client;
pub mod http;
pub mod server;
pub mod stun;

pub use client::{ClientOptions, DerpClient};
pub use server::{
    serve_derp_conn, serve_derp_conn_admitted, serve_derp_conn_from, DerpConfig, DerpServer,
    VerifyFn,
};
pub use stun::spawn_stun;
