//! Embedded DERP relay and STUN responder.
//!
//! The wire formats live in [`crate::wire::derp`] and [`crate::wire::stun`];
//! this module owns sockets, tasks, crypto and the relay's state.

pub mod client;
pub mod http;
pub mod server;
pub mod stun;

pub use client::{ClientOptions, DerpClient};
pub use server::{serve_derp_conn, serve_derp_conn_from, DerpConfig, DerpServer, VerifyFn};
pub use stun::spawn_stun;
