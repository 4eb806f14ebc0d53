//! IP allocation
