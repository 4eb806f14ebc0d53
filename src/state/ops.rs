//! Admin operations
