//! The control plane: register, map sessions, lite updates and the hub that
//! fans changes out to connected map sessions.

pub mod hub;
pub mod map;
pub mod register;

use crate::config::Config;
use crate::state::State;
use std::sync::{Arc, Mutex, MutexGuard};

pub use hub::{Change, Hub};

/// Everything a connection handler or the admin plane needs.
pub struct Server {
    pub cfg: Config,
    pub state: Mutex<State>,
    pub hub: Hub,
    /// Our Noise static private key (X25519).
    pub noise_private: [u8; 32],
    pub noise_public: [u8; 32],
}

impl Server {
    /// Locks the state; a poisoned lock (a panic elsewhere) is recovered
    /// because every mutation is applied to the store before memory.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub type SharedServer = Arc<Server>;
