//! Signals from committed transactions to the background work that acts on
//! what they wrote, so it acts at once rather than at its next poll: the
//! key-event feed (which tells sidecars) and the webhook dispatcher. A
//! transaction that writes key events or due deliveries is a
//! `store::ChangeTx`, whose only commit raises these: forgetting
//! the wakeup does not compile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// The signals; clones share them.
#[derive(Clone, Default)]
pub struct Wakeups {
    key_events: Arc<Notify>,
    deliveries: Arc<Notify>,
    /// Deliveries became due that only a scan of the due index finds.
    scan: Arc<AtomicBool>,
}

impl Wakeups {
    /// Key events were committed: the feed tails the log.
    pub fn key_events_committed(&self) {
        self.key_events.notify_one();
    }

    /// What the key-event feed waits on (a Postgres notification from
    /// another replica raises it too).
    pub fn key_events(&self) -> Arc<Notify> {
        self.key_events.clone()
    }

    /// Deliveries became due (a retry, Keyplane's own events, a publication
    /// not leased to this process): the dispatcher scans the due index.
    pub fn deliveries_due(&self) {
        self.scan.store(true, Ordering::Release);
        self.deliveries.notify_one();
    }

    /// Wakes the dispatcher without asking for a scan (its own queue has work).
    pub fn wake_dispatcher(&self) {
        self.deliveries.notify_one();
    }

    /// Resolves when the dispatcher is woken.
    pub async fn dispatcher_woken(&self) {
        self.deliveries.notified().await;
    }

    /// Whether a scan was asked for since the last call.
    pub fn take_scan(&self) -> bool {
        self.scan.swap(false, Ordering::AcqRel)
    }
}
