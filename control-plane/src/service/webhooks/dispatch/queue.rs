//! The dispatcher's queue of deliveries published in this process and
//! leased to it at once (no claim, no scan of the due index), shared with
//! the publisher that fills it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::service::webhooks::outbox::Leased;
use crate::store::ChangeTx;
use crate::store::deliveries::Model as Delivery;
use crate::wakeups::Wakeups;

/// Fresh deliveries queued at most, plus those of the publications in
/// flight when it is reached (they asked before it was); past it,
/// publications write their deliveries due at once, for a scan to find.
const MAX_FRESH: usize = 10_000;

/// The queue; clones share it.
#[derive(Clone, Default)]
pub struct DispatchQueue {
    wakeups: Wakeups,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// How long publications lease their deliveries to this process's
    /// dispatcher; `None` while no dispatcher takes them.
    lease: Option<Duration>,
    /// Deliveries leased to this process's dispatcher and not started,
    /// oldest first: new publications', and claimed ones it could not
    /// start when the database failed.
    fresh: VecDeque<Leased>,
}

impl State {
    fn lease_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let lease = self.lease.filter(|_| self.fresh.len() < MAX_FRESH)?;
        Some(now + chrono::Duration::from_std(lease).ok()?)
    }
}

impl DispatchQueue {
    /// A queue whose dispatcher `wakeups` wakes.
    pub fn new(wakeups: Wakeups) -> Self {
        Self { wakeups, state: Arc::default() }
    }

    /// The signals the dispatcher waits on.
    pub fn wakeups(&self) -> &Wakeups {
        &self.wakeups
    }

    /// Until when a publication starting `now` leases its deliveries to
    /// this process's dispatcher (one write per delivery fewer than a
    /// claim); `None` when they are to be due at once: no dispatcher takes
    /// them here, or its queue is full.
    pub fn publication_lease(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.lock().lease_until(now)
    }

    /// Commits a publication that created `deliveries` (leased by
    /// [`Self::publication_lease`] when `leased`), then hands the leased
    /// ones to the dispatcher.
    pub async fn commit_published(&self, tx: ChangeTx, deliveries: Vec<Leased>, leased: bool) -> Result<()> {
        tx.commit(&self.wakeups).await?;
        if leased {
            self.lock().fresh.extend(deliveries);
            self.wakeups.wake_dispatcher();
        }
        Ok(())
    }

    /// Makes publications lease their deliveries to this process's
    /// dispatcher for `lease` (until [`Self::stop_leasing`]).
    pub fn lease_publications(&self, lease: Duration) {
        self.lock().lease = Some(lease);
    }

    /// Puts deliveries the dispatcher took and could not start back at the
    /// front of the queue.
    pub fn requeue(&self, unstarted: VecDeque<Leased>) {
        let mut state = self.lock();
        for delivery in unstarted.into_iter().rev() {
            state.fresh.push_front(delivery);
        }
    }

    /// Stops leasing publications to this process's dispatcher; returns the
    /// leased deliveries it has not taken.
    pub fn stop_leasing(&self) -> Vec<Delivery> {
        let mut state = self.lock();
        state.lease = None;
        std::mem::take(&mut state.fresh).into_iter().map(|leased| leased.delivery).collect()
    }

    /// Takes up to `at_most` fresh deliveries, oldest first.
    pub fn take(&self, at_most: usize) -> Vec<Leased> {
        let mut state = self.lock();
        let oldest = at_most.min(state.fresh.len());
        state.fresh.drain(..oldest).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{DispatchQueue, Leased, MAX_FRESH};
    use crate::store::deliveries::{DeliveryStatus, Model as Delivery};

    fn deliveries(range: std::ops::Range<usize>) -> Vec<Leased> {
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
            .map(Leased::from)
            .collect()
    }

    #[test]
    fn fresh_deliveries_are_taken_oldest_first_in_bounded_portions() {
        let queue = DispatchQueue::default();
        queue.lock().fresh.extend(deliveries(0..5));
        assert_eq!(queue.take(2), deliveries(0..2));
        queue.lock().fresh.extend(deliveries(5..6));
        assert_eq!(queue.take(10), deliveries(2..6));
        assert!(queue.take(10).is_empty());
    }

    #[test]
    fn deliveries_that_could_not_start_go_back_to_the_front_in_order() {
        let queue = DispatchQueue::default();
        queue.lock().fresh.extend(deliveries(0..5));
        let taken = queue.take(3);
        queue.requeue(taken[1..].iter().cloned().collect());
        assert_eq!(queue.take(10), [&deliveries(1..3)[..], &deliveries(3..5)[..]].concat());
    }

    #[test]
    fn publications_are_leased_only_to_a_dispatcher_with_room() {
        let now = crate::store::now();
        let queue = DispatchQueue::default();
        assert_eq!(queue.publication_lease(now), None, "no dispatcher takes them");
        queue.lease_publications(Duration::from_secs(60));
        assert_eq!(queue.publication_lease(now), Some(now + chrono::Duration::seconds(60)));
        queue.lock().fresh.extend(deliveries(0..MAX_FRESH));
        assert_eq!(queue.publication_lease(now), None, "a full queue: due at once, for a scan");
        queue.take(1);
        assert!(queue.publication_lease(now).is_some());
    }
}
