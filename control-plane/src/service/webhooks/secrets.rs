//! A subscription's signing secrets: the newest, and older ones still in
//! their rotation grace (every unexpired secret signs). Stored as one sealed
//! JSON list, with the subscription id as associated data.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::MasterKeys;
use crate::crypto::signing::WebhookSecret;
use crate::error::{Error, Result};
use crate::store::webhooks;

/// One secret and the end of its validity (`None` for the newest).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSecret {
    secret: String,
    expires_at: Option<DateTime<Utc>>,
}

/// The secrets of one subscription.
#[derive(Debug)]
pub struct SecretSet(Vec<StoredSecret>);

impl SecretSet {
    /// A set of one secret, `imported` or new; returns it and the secret
    /// (`whsec_…`) to show once.
    pub fn new(imported: Option<WebhookSecret>) -> (Self, String) {
        let secret = imported.unwrap_or_else(WebhookSecret::generate).expose();
        (Self(vec![StoredSecret { secret: secret.clone(), expires_at: None }]), secret)
    }

    /// The secrets of `subscription` still valid at `now`.
    pub fn open_live(keys: &MasterKeys, subscription: &webhooks::Model, now: DateTime<Utc>) -> Result<Self> {
        let plain = keys.open(&subscription.sealed_secrets, &subscription.id)?;
        let secrets: Vec<StoredSecret> = serde_json::from_slice(&plain)
            .map_err(|_| Error::Sealing("sealed secrets are not a secret list".into()))?;
        Ok(Self(secrets.into_iter().filter(|s| s.expires_at.is_none_or(|at| at > now)).collect()))
    }

    /// Adds a new secret; the others sign until `now + grace` (or their own
    /// earlier end), or stop at once when `grace` is zero. Returns the new secret.
    pub fn rotate(&mut self, now: DateTime<Utc>, grace: Duration) -> String {
        let grace_end = now + grace;
        if grace.is_zero() {
            self.0.clear();
        }
        for old in &mut self.0 {
            old.expires_at = Some(old.expires_at.map_or(grace_end, |at| at.min(grace_end)));
        }
        let secret = WebhookSecret::generate().expose();
        self.0.push(StoredSecret { secret: secret.clone(), expires_at: None });
        secret
    }

    /// How many secrets sign.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// The keys that sign deliveries, oldest first.
    pub fn signing_keys(&self) -> Result<Vec<WebhookSecret>> {
        self.0.iter().map(|s| WebhookSecret::parse(&s.secret)).collect()
    }

    /// The set sealed for subscription `id`.
    pub fn seal(&self, keys: &MasterKeys, id: &str) -> Result<String> {
        let plain = serde_json::to_vec(&self.0).map_err(|e| Error::Sealing(format!("encoding secrets: {e}")))?;
        keys.seal(&plain, id)
    }
}
