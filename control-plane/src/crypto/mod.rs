//! Key format and checksum, argon2id hashing on a bounded pool, AES-256-GCM sealing.

pub mod hasher;
pub mod imported;
pub mod sealing;
pub mod signing;

pub use hasher::{HashingParams, SecretHasher};
pub use keyplane_proto::token::{self, Environment, ParsedToken, TokenFormat, random_bytes};
pub use sealing::MasterKeys;

use sha2::{Digest, Sha256};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A new time-ordered id: `prefix` + 22 base62 characters of (48-bit Unix
/// milliseconds, 80 random bits). Ids sort in creation order, which keyset
/// pagination relies on.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", token::new_id_body())
}
