//! Embedded DERP relay and STUN responder.
//!
//! The wire formats live in [`crate::wire::derp`] and [`crate::wire::stun`];
//! this module owns sockets, tasks and the relay's state.

pub mod stun;
