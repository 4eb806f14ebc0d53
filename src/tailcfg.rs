//! tailcfg
