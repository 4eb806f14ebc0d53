//! derp
