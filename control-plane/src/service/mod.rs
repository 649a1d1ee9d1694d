//! The domain, free of transport types: who may do what, keys and their
//! verification, webhooks, OAuth connections, the audit log and what
//! sidecars consume. Every front end (`grpc/`, the console) calls this layer
//! and nothing below it; the records it returns are the store's rows,
//! re-exported here under the names front ends use.

pub mod admission;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod authz;
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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::crypto::{MasterKeys, SecretHasher, TokenFormat};
use crate::error::Result;
use crate::store::OrgTx;
use crate::store::deliveries::Model as Delivery;

pub use api_keys::KeyService;
pub use audit::AuditService;
pub use auth::{Actor, Authenticator, RequestContext};
pub use authz::{Action, Scope, Target};
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
    pub use crate::store::usage::{Counts, Granularity, Outcome as UsageOutcome};
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
    /// How long publications lease their deliveries to this process's
    /// dispatcher; `None` while no dispatcher takes them.
    lease: Option<Duration>,
    /// Deliveries leased to this process's dispatcher and not started,
    /// oldest first: new publications' (written already leased, so it sends
    /// them without claiming them first: no write, no scan of the due
    /// index), and claimed ones it could not start when the database failed.
    fresh: VecDeque<Delivery>,
    /// Something else became due (a retry by hand, Keyplane's own events,
    /// publications while the queue was full): scan the due index.
    scan: bool,
}

/// Fresh deliveries queued at most, plus those of the publications in
/// flight when it is reached (they asked before it was); past it,
/// publications write their deliveries due at once, for a scan to find.
const MAX_FRESH: usize = 10_000;

impl DueDeliveries {
    fn lease_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let lease = self.lease.filter(|_| self.fresh.len() < MAX_FRESH)?;
        Some(now + chrono::Duration::from_std(lease).ok()?)
    }

    fn take(&mut self, at_most: usize) -> (Vec<Delivery>, bool) {
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

    /// Until when a publication starting `now` leases its deliveries to
    /// this process's dispatcher (one write per delivery fewer than a
    /// claim); `None` when they are to be due at once: no dispatcher takes
    /// them here, or its queue is full.
    pub fn publication_lease(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.lock_due().lease_until(now)
    }

    /// Commits a publication that created `deliveries`, then hands them to
    /// the dispatcher: directly when `leased` (by [`Self::publication_lease`]),
    /// else by asking for a scan.
    pub async fn commit_published(&self, tx: OrgTx, deliveries: Vec<Delivery>, leased: bool) -> Result<()> {
        tx.commit().await?;
        {
            let mut due = self.lock_due();
            if leased {
                due.fresh.extend(deliveries);
            } else {
                due.scan = true;
            }
        }
        self.deliveries_due.notify_one();
        Ok(())
    }

    /// Makes publications lease their deliveries to this process's
    /// dispatcher for `lease` (until [`Self::stop_leasing`]).
    pub fn lease_publications(&self, lease: Duration) {
        self.lock_due().lease = Some(lease);
    }

    /// Puts deliveries the dispatcher took and could not start back at the
    /// front of its queue.
    pub fn requeue(&self, unstarted: VecDeque<Delivery>) {
        let mut due = self.lock_due();
        for delivery in unstarted.into_iter().rev() {
            due.fresh.push_front(delivery);
        }
    }

    /// Stops leasing publications to this process's dispatcher; returns the
    /// leased deliveries it has not taken.
    pub fn stop_leasing(&self) -> Vec<Delivery> {
        let mut due = self.lock_due();
        due.lease = None;
        std::mem::take(&mut due.fresh).into()
    }

    /// Takes up to `at_most` fresh deliveries, oldest first, and whether a scan was asked for.
    pub fn take_due(&self, at_most: usize) -> (Vec<Delivery>, bool) {
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
    use std::time::Duration;

    use super::{Delivery, DueDeliveries, MAX_FRESH};
    use crate::store::deliveries::DeliveryStatus;

    fn deliveries(range: std::ops::Range<usize>) -> Vec<Delivery> {
        let now = chrono::DateTime::UNIX_EPOCH;
        range
            .map(|i| Delivery {
                id: format!("dlv_{i}"),
                org_id: "org_a".into(),
                subscription_id: "sub_a".into(),
                event_id: "evt_a".into(),
                event_type: "a.b".into(),
                status: DeliveryStatus::Pending,
                attempt_count: 0,
                next_attempt_at: now,
                last_status_code: None,
                last_error: None,
                created_at: now,
                finished_at: None,
            })
            .collect()
    }

    #[test]
    fn fresh_deliveries_are_taken_oldest_first_in_bounded_portions() {
        let mut due = DueDeliveries::default();
        due.fresh.extend(deliveries(0..5));
        assert_eq!(due.take(2), (deliveries(0..2), false));
        due.fresh.extend(deliveries(5..6));
        assert_eq!(due.take(10), (deliveries(2..6), false));
        assert_eq!(due.take(10), (Vec::new(), false));
    }

    #[test]
    fn deliveries_that_could_not_start_go_back_to_the_front_in_order() {
        let wakeups = super::Wakeups::default();
        wakeups.lock_due().fresh.extend(deliveries(0..5));
        let (taken, _) = wakeups.take_due(3);
        wakeups.requeue(taken[1..].iter().cloned().collect());
        assert_eq!(wakeups.take_due(10).0, [&deliveries(1..3)[..], &deliveries(3..5)[..]].concat());
    }

    #[test]
    fn publications_are_leased_only_to_a_dispatcher_with_room() {
        let now = crate::store::now();
        let mut due = DueDeliveries::default();
        assert_eq!(due.lease_until(now), None, "no dispatcher takes them");
        due.lease = Some(Duration::from_secs(60));
        assert_eq!(due.lease_until(now), Some(now + chrono::Duration::seconds(60)));
        due.fresh.extend(deliveries(0..MAX_FRESH));
        assert_eq!(due.lease_until(now), None, "a full queue: due at once, for a scan");
        due.take(1);
        assert!(due.lease_until(now).is_some());
    }
}
