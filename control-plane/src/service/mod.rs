//! The domain, free of transport types: who may do what, keys and their
//! verification, webhooks, OAuth connections, the audit log and what
//! sidecars consume. Every front end (`grpc/`, the console) calls this layer
//! and nothing below it; the records it returns are the store's rows,
//! re-exported here under the names front ends use.

pub mod admission;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod connections;
pub mod credits;
pub mod identities;
pub mod paging;
pub mod reseal;
pub mod retention;
pub mod sessions;
pub mod sync;
pub mod usage;
pub mod validate;
pub mod verify;
pub mod webhooks;

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::crypto::{MasterKeys, SecretHasher, TokenFormat};
use crate::error::Result;
use crate::store::OrgTx;

pub use api_keys::KeyService;
pub use audit::AuditService;
pub use auth::{Actor, Authenticator, RequestContext, Scope};
pub use connections::ConnectionService;
pub use credits::CreditService;
pub use identities::IdentityService;
pub use sessions::SessionService;
pub use sync::SidecarSync;
pub use usage::UsageService;
pub use verify::{Failure, Verification, Verifier};
pub use webhooks::{DeliveryService, Dispatcher, EventService, WebhookService};

/// The records services return, by the names front ends use.
pub mod records {
    pub use crate::crypto::Environment;
    pub use crate::store::api_keys::{KeyFilter, KeyStatus, LimitChanges, Model as ApiKey, RateLimit};
    pub use crate::store::audit::{AuditFilter, Model as AuditEvent};
    pub use crate::store::connections::Model as Connection;
    pub use crate::store::credits::{Credits, CreditsChange, Refill, RefillPeriod};
    pub use crate::store::deliveries::attempt::Model as DeliveryAttempt;
    pub use crate::store::deliveries::{DeliveryFilter, DeliveryStatus, Model as Delivery};
    pub use crate::store::events::Model as Event;
    pub use crate::store::identities::{IdentityChanges, IdentityFilter, Model as Identity, NewIdentity};
    pub use crate::store::key_events::{KeyEventKind, Model as KeyEvent};
    pub use crate::store::webhooks::{Model as Subscription, SubscriptionStatus};
}

/// Key material: the token format, the argon2id pool and the master keys
/// that seal stored secrets.
pub struct Crypto {
    pub tokens: TokenFormat,
    pub hasher: SecretHasher,
    pub master_keys: Arc<MasterKeys>,
}

/// Signals from a committed transaction to the background work that should
/// act on it at once rather than at its next poll.
#[derive(Clone, Default)]
pub struct Wakeups {
    /// A transaction that appended key events committed: tail the log.
    pub key_events_committed: Arc<Notify>,
    /// A transaction that created or rescheduled deliveries committed.
    pub deliveries_due: Arc<Notify>,
    /// What the dispatcher should claim when `deliveries_due` wakes it.
    due: Arc<Mutex<DueDeliveries>>,
}

/// Deliveries committed in this process since the dispatcher last looked.
#[derive(Default)]
struct DueDeliveries {
    /// New deliveries of publications, claimed by id (no scan of the due
    /// index, whose front fills with the dead versions of claimed rows).
    fresh: Vec<String>,
    /// Something else became due (a retry by hand, Keyplane's own events)
    /// or `fresh` overflowed: scan the due index.
    scan: bool,
}

/// Fresh delivery ids kept at most; beyond, the dispatcher scans for them.
const MAX_FRESH: usize = 10_000;

impl DueDeliveries {
    /// Adds new deliveries; past [`MAX_FRESH`] drops every id and asks for
    /// a scan instead (the rows are stored: the scan finds them).
    fn add_fresh(&mut self, ids: impl IntoIterator<Item = String>) {
        self.fresh.extend(ids);
        if self.fresh.len() > MAX_FRESH {
            self.fresh = Vec::new();
            self.scan = true;
        }
    }

    fn take(&mut self, at_most: usize) -> (Vec<String>, bool) {
        let oldest = at_most.min(self.fresh.len());
        (self.fresh.drain(..oldest).collect(), std::mem::take(&mut self.scan))
    }
}

impl Wakeups {
    /// Commits a transaction that may have created or rescheduled
    /// deliveries, then wakes the dispatcher to scan for what is due.
    pub async fn commit_deliveries(&self, tx: OrgTx) -> Result<()> {
        tx.commit().await?;
        self.lock_due().scan = true;
        self.deliveries_due.notify_one();
        Ok(())
    }

    /// Commits a publication that created the deliveries `ids` (due at
    /// once), then wakes the dispatcher to claim them by id.
    pub async fn commit_published(&self, tx: OrgTx, ids: impl IntoIterator<Item = String>) -> Result<()> {
        tx.commit().await?;
        self.lock_due().add_fresh(ids);
        self.deliveries_due.notify_one();
        Ok(())
    }

    /// Takes up to `at_most` fresh delivery ids, oldest first, and whether a scan was asked for.
    pub fn take_due(&self, at_most: usize) -> (Vec<String>, bool) {
        self.lock_due().take(at_most)
    }

    fn lock_due(&self) -> std::sync::MutexGuard<'_, DueDeliveries> {
        self.due.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits a transaction that appended key events (and published
    /// Keyplane's own events about them), then wakes the key-event feed and
    /// the dispatcher.
    pub async fn commit_key_change(&self, tx: OrgTx) -> Result<()> {
        self.commit_deliveries(tx).await?;
        self.key_events_committed.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{DueDeliveries, MAX_FRESH};

    fn ids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("dlv_{i}")).collect()
    }

    #[test]
    fn fresh_deliveries_are_taken_oldest_first_in_bounded_portions() {
        let mut due = DueDeliveries::default();
        due.add_fresh(ids(0..5));
        assert_eq!(due.take(2), (ids(0..2), false));
        due.add_fresh(ids(5..6));
        assert_eq!(due.take(10), (ids(2..6), false));
        assert_eq!(due.take(10), (Vec::new(), false));
    }

    #[test]
    fn too_many_fresh_deliveries_turn_into_a_scan() {
        let mut due = DueDeliveries::default();
        due.add_fresh(ids(0..MAX_FRESH));
        assert!(!due.scan, "at the bound, ids are kept");
        due.add_fresh(ids(MAX_FRESH..MAX_FRESH + 1));
        assert_eq!(due.take(10), (Vec::new(), true), "past it, a scan instead");
        assert_eq!(due.take(10), (Vec::new(), false), "asked for once");
    }
}
