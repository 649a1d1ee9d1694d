//! Hashes of keys brought from another system (docs/migrating.md "Migrating to
//! Keyplane"): checked and normalised when imported, verified against a
//! whole token (not Keyplane's secret part), and bounded in cost so an
//! imported hash cannot make one verification arbitrarily slow.
//!
//! A token that is not in Keyplane's format is found by its
//! [`lookups`]: the SHA-256 of the token (keys whose old system stored
//! exactly that), and its leading characters (keys whose old system kept a
//! clear start beside a salted hash).

use argon2::Argon2;
use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use sea_orm::entity::prelude::*;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// Shortest and longest clear start kept beside a salted hash.
pub const LOOKUP_CHARS: std::ops::RangeInclusive<usize> = 4..=64;
/// Costliest bcrypt accepted (each step doubles the work; 12 is ~250 ms).
const MAX_BCRYPT_COST: u32 = 13;
/// Most memory one argon2 or scrypt verification may take.
const MAX_MEMORY_BYTES: u64 = 256 << 20;

/// How a stored hash was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "snake_case")]
pub enum HashFormat {
    /// SHA-256 of the token, kept as lowercase hex (imported from hex, base64 or base64url).
    #[sea_orm(string_value = "sha256")]
    Sha256,
    /// `$2a$`, `$2b$`, `$2y$` bcrypt.
    #[sea_orm(string_value = "bcrypt")]
    Bcrypt,
    /// An argon2id or argon2i PHC string with the old system's parameters.
    #[sea_orm(string_value = "argon2")]
    Argon2,
    /// A scrypt PHC string.
    #[sea_orm(string_value = "scrypt")]
    Scrypt,
    /// Keyplane's own argon2id of the whole token: an imported key re-hashed on use.
    #[sea_orm(string_value = "keyplane_argon2id")]
    KeyplaneArgon2id,
}

/// How a hash arrives in an import record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Sha256Hex,
    Sha256Base64,
    Sha256Base64Url,
    Bcrypt,
    Argon2,
    Scrypt,
}

impl HashFormat {
    /// Whether the hash is salted: found by the token's clear start,
    /// verified by a slow hash (counted against the guessing limits), and
    /// re-hashed on use when asked. A SHA-256 digest is none of these.
    pub fn is_salted(self) -> bool {
        self != Self::Sha256
    }
}

/// The stored form of an imported hash: its format and normalised text.
/// Errors name `field` and never quote the hash.
pub fn normalise(field: &str, source: SourceFormat, hash: &str) -> Result<(HashFormat, String)> {
    let invalid = |why: &str| Error::invalid(field, why.to_owned());
    let digest = |decoded: Option<Vec<u8>>| match decoded {
        Some(bytes) if bytes.len() == 32 => Ok((HashFormat::Sha256, super::hex(&bytes))),
        _ => Err(invalid("is not a SHA-256 digest in the format named")),
    };
    match source {
        SourceFormat::Sha256Hex => {
            let hex = hash.trim().to_ascii_lowercase();
            let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            if valid { Ok((HashFormat::Sha256, hex)) } else { Err(invalid("is not 64 hex digits")) }
        }
        SourceFormat::Sha256Base64 => digest(STANDARD.decode(hash.trim()).ok()),
        SourceFormat::Sha256Base64Url => {
            let text = hash.trim();
            digest(URL_SAFE_NO_PAD.decode(text).or_else(|_| URL_SAFE.decode(text)).ok())
        }
        SourceFormat::Bcrypt => {
            let parts: bcrypt::HashParts =
                hash.parse().map_err(|_| invalid("is not a bcrypt hash ($2a$, $2b$, $2y$)"))?;
            if parts.get_cost() > MAX_BCRYPT_COST {
                return Err(invalid(&format!("has a bcrypt cost over {MAX_BCRYPT_COST}")));
            }
            Ok((HashFormat::Bcrypt, hash.to_owned()))
        }
        SourceFormat::Argon2 => {
            let phc = PasswordHash::new(hash).map_err(|_| invalid("is not an argon2 PHC string"))?;
            if !["argon2id", "argon2i"].contains(&phc.algorithm.as_str()) {
                return Err(invalid("is not argon2id or argon2i"));
            }
            let memory_kib = phc.params.get_decimal("m").unwrap_or(u32::MAX);
            if u64::from(memory_kib) * 1024 > MAX_MEMORY_BYTES {
                return Err(invalid("needs more than 256 MiB to verify"));
            }
            Ok((HashFormat::Argon2, hash.to_owned()))
        }
        SourceFormat::Scrypt => {
            let phc = PasswordHash::new(hash).map_err(|_| invalid("is not a scrypt PHC string"))?;
            let (ln, r) = (phc.params.get_decimal("ln"), phc.params.get_decimal("r"));
            // 128 · r · 2^ln bytes, overflow counting as too much.
            let memory = match (ln, r) {
                (Some(ln), Some(r)) if ln < 32 => (128 * u64::from(r)).checked_mul(1 << ln),
                _ => None,
            };
            let fits = memory.is_some_and(|bytes| bytes <= MAX_MEMORY_BYTES);
            if phc.algorithm.as_str() != "scrypt" || !fits {
                return Err(invalid("is not a scrypt PHC string needing at most 256 MiB"));
            }
            Ok((HashFormat::Scrypt, hash.to_owned()))
        }
    }
}

/// Whether a token whose SHA-256 is `digest` matches a stored SHA-256 hash.
pub fn digest_matches(digest: &[u8; 32], stored: &str) -> bool {
    super::hex(digest).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Whether `token` matches a salted hash `stored` (blocking: run it on the
/// hashing pool). A stored hash that no longer parses matches nothing.
pub fn verify_salted(format: HashFormat, token: &str, stored: &str) -> bool {
    match format {
        HashFormat::Sha256 => false,
        HashFormat::Bcrypt => bcrypt::verify(token, stored).unwrap_or(false),
        HashFormat::Argon2 | HashFormat::KeyplaneArgon2id => PasswordHash::new(stored)
            .is_ok_and(|hash| Argon2::default().verify_password(token.as_bytes(), &hash).is_ok()),
        HashFormat::Scrypt => PasswordHash::new(stored)
            .is_ok_and(|hash| scrypt::Scrypt::new().verify_password(token.as_bytes(), &hash).is_ok()),
    }
}

/// The lookup of a SHA-256-hashed key.
pub fn digest_lookup(hex: &str) -> String {
    format!("sha256:{hex}")
}

/// Every lookup a token whose SHA-256 is `digest` could be stored under,
/// or none for a token no system would issue
/// ([`token::could_be_foreign`](super::token::could_be_foreign)).
pub fn lookups(token: &str, digest: &[u8; 32]) -> Vec<String> {
    if !super::token::could_be_foreign(token) {
        return Vec::new();
    }
    let starts = LOOKUP_CHARS.filter(|n| *n < token.len()).map(|n| token[..n].to_owned());
    std::iter::once(digest_lookup(&super::hex(digest))).chain(starts).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hashes_in_any_encoding_normalise_to_one_hex() {
        let token = "cc_live_9f8e7d6c5b4a";
        let digest = super::super::sha256(token.as_bytes());
        let hex = super::super::hex(&digest);
        for (source, text) in [
            (SourceFormat::Sha256Hex, hex.to_uppercase()),
            (SourceFormat::Sha256Base64, STANDARD.encode(digest)),
            (SourceFormat::Sha256Base64Url, URL_SAFE_NO_PAD.encode(digest)),
        ] {
            let (format, stored) = normalise("hash", source, &text).unwrap();
            assert_eq!((format, stored.as_str()), (HashFormat::Sha256, hex.as_str()));
            let other = super::super::sha256(b"cc_live_other");
            assert!(digest_matches(&digest, &stored) && !digest_matches(&other, &stored));
        }
        assert!(normalise("hash", SourceFormat::Sha256Hex, "abc").is_err());
        assert!(normalise("hash", SourceFormat::Sha256Base64, "AAAA").is_err());
    }

    #[test]
    fn salted_formats_verify_and_costly_ones_are_refused() {
        let bcrypt = bcrypt::hash("tok_abcdef123456", 4).unwrap();
        let (format, stored) = normalise("hash", SourceFormat::Bcrypt, &bcrypt).unwrap();
        assert!(verify_salted(format, "tok_abcdef123456", &stored));
        assert!(!verify_salted(format, "tok_abcdef123457", &stored));
        let costly = bcrypt::hash("x", 4).unwrap().replacen("$04$", "$14$", 1);
        let error = normalise("records[3].hash", SourceFormat::Bcrypt, &costly).unwrap_err().to_string();
        assert!(error.contains("records[3].hash") && error.contains("cost"), "{error}");
        assert!(normalise("hash", SourceFormat::Argon2, "$argon2d$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA").is_err());
        // passlib's documented scrypt example (password "password").
        let scrypt = "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
        let (format, stored) = normalise("hash", SourceFormat::Scrypt, scrypt).unwrap();
        assert!(verify_salted(format, "password", &stored) && !verify_salted(format, "passwore", &stored));
        assert!(normalise("hash", SourceFormat::Scrypt, &scrypt.replace("ln=16", "ln=22")).is_err());
    }

    #[test]
    fn lookups_cover_the_digest_and_every_start() {
        let lookups = |token: &str| lookups(token, &super::super::sha256(token.as_bytes()));
        let found = lookups("ba_0123456789");
        assert!(found[0].starts_with("sha256:"));
        assert_eq!(&found[1..3], ["ba_0", "ba_01"]);
        assert_eq!(found.last().unwrap(), "ba_012345678", "never the whole token");
        assert!(lookups("has space in it").is_empty());
        assert!(lookups(&"x".repeat(super::super::token::MAX_FOREIGN_TOKEN_BYTES + 1)).is_empty());
    }
}
