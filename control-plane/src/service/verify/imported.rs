//! Verifying a token that is not in Keyplane's format: a key imported from
//! another system, found by its lookups (the token's SHA-256, or the clear
//! start the old system kept). A start shared by several keys gives a few
//! candidates (an import keeps it to [`MAX_CANDIDATES`]); each costs a
//! hash of the old system's kind, under the same guessing limits as
//! Keyplane's own keys, counted per lookup (a right token for one
//! candidate is a wrong one for the others, which must not count against them).
//! A token that matched is remembered with its key's id, so the next check
//! reads the key by id, like a Keyplane token.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use super::{Failure, SecretCheck, Verification, Verifier};
use crate::crypto::imported::{self, HashFormat};
use crate::error::Result;
use crate::store::api_keys;
use crate::store::audit::{self, AuditAction, NewAuditEvent};
use crate::store::{OrgScope, OrgTx, imported_keys};

/// Most keys one lookup may find (an import refuses more).
pub const MAX_CANDIDATES: u64 = 8;

/// The imported key a token matched, and the hash it matched.
#[derive(Debug)]
pub(super) struct Remembered {
    key_id: String,
    secret_hash: String,
}

impl Verifier {
    /// Sets `keyplane_api_keys_on_legacy_hashes` from the database.
    pub async fn count_legacy_hashes(&self) -> Result<()> {
        let count = imported_keys::count_on_legacy_hashes(&self.db).await?;
        self.metrics.keys_on_legacy_hashes.set(i64::try_from(count).unwrap_or(i64::MAX));
        Ok(())
    }

    /// [`Verifier::check`] for a token not in Keyplane's format.
    pub(super) async fn check_imported(
        &self,
        scope: OrgScope<'_>,
        token: &str,
        started: Instant,
    ) -> Result<Verification> {
        let digest = crate::crypto::sha256(token.as_bytes());
        if let Some(remembered) = self.imported_tokens.get(&digest).await
            && let Some(key) = api_keys::find_in(&self.db, scope, &remembered.key_id).await?
            && key.secret_hash == remembered.secret_hash
        {
            // The row is still read every time: revocation takes effect at once.
            return self.conclude(key).await;
        }
        let lookups = imported::lookups(token, &digest);
        if lookups.is_empty() {
            return Ok(Verification::Invalid(Failure::Malformed, None));
        }
        let candidates = imported_keys::find_by_lookups(&self.db, scope, &lookups, MAX_CANDIDATES).await?;
        if candidates.is_empty() {
            // Not a token Keyplane issued nor one it imported.
            return Ok(Verification::Invalid(Failure::Malformed, None));
        }
        match self.imported_match(token, &digest, candidates).await? {
            (SecretCheck::Matches, Some(key)) => {
                let key = self.upgrade_if_asked(token, key).await?;
                let remembered = Remembered { key_id: key.id.clone(), secret_hash: key.secret_hash.clone() };
                self.imported_tokens.insert(digest, Arc::new(remembered)).await;
                self.conclude(key).await
            }
            (SecretCheck::Throttled, _) => {
                self.pad_to_typical_hash(started).await;
                Ok(Verification::Invalid(Failure::Throttled, None))
            }
            _ => Ok(Verification::Invalid(Failure::BadSecret, None)),
        }
    }

    /// The candidate `token` (whose SHA-256 is `digest`) belongs to: a
    /// SHA-256 key is checked inline, a salted one on the hashing pool.
    async fn imported_match(
        &self,
        token: &str,
        digest: &[u8; 32],
        candidates: Vec<api_keys::Model>,
    ) -> Result<(SecretCheck, Option<api_keys::Model>)> {
        let suspect = format!("lookup:{}", candidates[0].lookup.as_deref().unwrap_or_default());
        let salted = candidates.iter().any(|key| key.hash_format.is_some_and(HashFormat::is_salted));
        if salted && self.throttled(&suspect).await {
            return Ok((SecretCheck::Throttled, None));
        }
        for key in candidates {
            let matches = match key.hash_format {
                None => false,
                Some(HashFormat::Sha256) => imported::digest_matches(digest, &key.secret_hash),
                Some(format) => {
                    let started = Instant::now();
                    let (token, stored) = (token.to_owned(), key.secret_hash.clone());
                    let matches = self.crypto.hasher.verify_salted(format, token, stored).await?;
                    self.record_hash_time(started.elapsed());
                    matches
                }
            };
            if matches {
                return Ok((SecretCheck::Matches, Some(key)));
            }
        }
        if salted {
            self.record_failure(&suspect).await;
        }
        Ok((SecretCheck::Wrong, None))
    }

    /// Re-hashes a key imported with "upgrade on use" (a salted one: the
    /// import decides) to Keyplane's argon2id of the token, audited.
    async fn upgrade_if_asked(&self, token: &str, key: api_keys::Model) -> Result<api_keys::Model> {
        let Some(format) = key.hash_format.filter(|_| key.upgrade_on_use) else {
            return Ok(key);
        };
        let phc = self.crypto.hasher.hash(token.to_owned()).await?;
        let tx = OrgTx::begin(&self.db, &key.org_id).await?;
        if !imported_keys::upgrade(&tx, &key.id, &key.secret_hash, phc.clone()).await? {
            return Ok(key);
        }
        let details = json!({ "from": format });
        audit::append(&tx, NewAuditEvent::by_system("verification", AuditAction::ApiKeyHashUpgraded, &key.id, details))
            .await?;
        tx.commit().await?;
        self.metrics.hash_upgrades.inc();
        Ok(api_keys::Model {
            secret_hash: phc,
            hash_format: Some(HashFormat::KeyplaneArgon2id),
            upgrade_on_use: false,
            ..key
        })
    }
}
