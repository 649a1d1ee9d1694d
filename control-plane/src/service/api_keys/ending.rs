//! Keys that end by themselves: the expiry sweep announces keys about to
//! expire (`--key-expiring-notice`) and marks keys past their expiry
//! `expired`, and key retention deletes keys that ended long ago.
//! Both act as the system (audit actor type `system`) and append a key
//! event, so sidecars drop the key without waiting for a check of it.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::KeyService;
use crate::error::Result;
use crate::service::webhooks::outbox;
use crate::service::webhooks::system_events::{KeyDeleted, KeyExpiring, SystemEvent};
use crate::store::api_keys::{self, KeyStatus};
use crate::store::audit::AuditAction;
use crate::store::audit::{self, NewAuditEvent};
use crate::store::key_events::{self, KeyEventKind};
use crate::store::{self, ChangeTx};

/// The audit actor id of the expiry sweep.
const SWEEP: &str = "expiry-sweep";
/// The audit actor id of key retention.
const RETENTION: &str = "key-retention";

impl KeyService {
    /// Marks up to `batch` active keys past their expiry `expired`, each in
    /// its own transaction (audited, `api_key.expired` published, a key
    /// event appended). Returns how many it marked.
    pub async fn expire_due(&self, batch: u64) -> Result<u64> {
        let now = store::now();
        let mut expired = 0;
        for (org, id) in api_keys::due_to_expire(&self.db, now, batch).await? {
            let tx = ChangeTx::begin(&self.db, &org).await?;
            // Read again under the org's lock: it may have been revoked,
            // deleted or given a later expiry since.
            let Some(key) = api_keys::find(tx.conn(), tx.org(), &id).await? else { continue };
            if key.status != KeyStatus::Active || !key.is_expired(now) {
                continue;
            }
            let key = api_keys::mark_expired(&tx, key).await?;
            key_events::append(&tx, &key.id, KeyEventKind::Expired).await?;
            let details = json!({ "expires_at": key.expires_at });
            audit::append(&tx, NewAuditEvent::by_system(SWEEP, AuditAction::ApiKeyExpired, &key.id, details)).await?;
            outbox::publish_system_event(&tx, SystemEvent::ApiKeyExpired((&key).into())).await?;
            tx.commit(&self.wakeups).await?;
            expired += 1;
        }
        Ok(expired)
    }

    /// Publishes `api_key.expiring` for up to `batch` active keys that
    /// expire within `lead`, once per expiry (a key given another expiry is
    /// announced again when that one nears). Returns how many.
    pub async fn announce_expiring(&self, lead: std::time::Duration, batch: u64) -> Result<u64> {
        let now = store::now();
        let by = now + chrono::Duration::from_std(lead).unwrap_or(chrono::Duration::MAX);
        let mut announced = 0;
        for (org, id) in api_keys::due_expiring_notice(&self.db, now, by, batch).await? {
            let tx = ChangeTx::begin(&self.db, &org).await?;
            let Some(key) = api_keys::find(tx.conn(), tx.org(), &id).await? else { continue };
            let due = key.expires_at.filter(|at| *at > now && *at <= by);
            let (Some(expires_at), KeyStatus::Active) = (due, key.status) else { continue };
            if key.expiring_notice_for == Some(expires_at) {
                continue;
            }
            let key = api_keys::mark_expiring_noticed(&tx, key).await?;
            let expiring = KeyExpiring { key: (&key).into(), expires_in_seconds: (expires_at - now).num_seconds() };
            outbox::publish_system_event(&tx, SystemEvent::ApiKeyExpiring(expiring)).await?;
            tx.commit(&self.wakeups).await?;
            announced += 1;
        }
        Ok(announced)
    }

    /// Deletes up to `batch` keys that expired, or were revoked, before
    /// `cutoff`, each in its own transaction (audited as `api_key.deleted`
    /// with reason `retention`, a key event appended). Returns how many.
    pub async fn delete_ended_before(&self, cutoff: DateTime<Utc>, batch: u64) -> Result<u64> {
        let mut deleted = 0;
        for (org, id) in api_keys::ended_before(&self.db, cutoff, batch).await? {
            let tx = ChangeTx::begin(&self.db, &org).await?;
            if !api_keys::delete(&tx, &id).await? {
                continue;
            }
            key_events::append(&tx, &id, KeyEventKind::Deleted).await?;
            let details = json!({ "reason": "retention" });
            audit::append(&tx, NewAuditEvent::by_system(RETENTION, AuditAction::ApiKeyDeleted, &id, details)).await?;
            let event = KeyDeleted { key_id: id.clone(), reason: Some("retention") };
            outbox::publish_system_event(&tx, SystemEvent::ApiKeyDeleted(event)).await?;
            tx.commit(&self.wakeups).await?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
