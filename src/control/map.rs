//! Node-facing protocol
