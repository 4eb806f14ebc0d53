//! The record cipher of tinyscale's ts2021 transport: ChaCha20-Poly1305
//! with a caller-built nonce, sealing and opening in place.
//!
//! Why a crate of its own: the cipher's code is generic (`ChaChaPoly1305<C, N>`,
//! the ChaCha rounds over their round count) and so is compiled in the crate
//! that names the concrete type. In tinyscale, built at opt-level z, that left
//! every AVX2 intrinsic of the ChaCha20 backend an out-of-line call: ~5x the
//! time per record of this crate at opt-level 3 (set in tinyscale's
//! Cargo.toml). A server sends one record per message per stream, so one
//! change of a node that 10,000 nodes see costs 10,000 of them.
#![no_std]
#![forbid(unsafe_code)]

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};

/// Authentication tag length.
pub const TAG_LEN: usize = 16;

/// One direction's key.
pub struct Aead(ChaCha20Poly1305);

/// Decryption failed: the record was not sealed with this key and nonce.
#[derive(Debug)]
pub struct Invalid;

impl Aead {
    pub fn new(key: &[u8; 32]) -> Aead {
        Aead(ChaCha20Poly1305::new(Key::from_slice(key)))
    }

    /// Encrypts `buf` in place (no associated data); returns the tag.
    pub fn seal(&self, nonce: &[u8; 12], buf: &mut [u8]) -> Result<[u8; TAG_LEN], Invalid> {
        self.0
            .encrypt_in_place_detached(Nonce::from_slice(nonce), &[], buf)
            .map(Into::into)
            .map_err(|_| Invalid)
    }

    /// Decrypts `buf` in place if `tag` authenticates it.
    pub fn open(
        &self,
        nonce: &[u8; 12],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Invalid> {
        self.0
            .decrypt_in_place_detached(Nonce::from_slice(nonce), &[], buf, Tag::from_slice(tag))
            .map_err(|_| Invalid)
    }
}
