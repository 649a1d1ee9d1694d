//! Credits spent locally (README "Credits"): for a key limited to a number
//! of uses, the sidecar leases a block from the control plane
//! (`LeaseCredits`, an atomic decrement there) and spends it check by check,
//! so there is no round trip per check. The block grows while the key is
//! busy, the control plane shrinks grants as the key runs low, and unspent
//! credits go back (`ReturnCredits`) when a lease runs out of time, when the
//! key ends, and on graceful shutdown. A sidecar that dies strands at most
//! its current lease, which counts as spent when it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use keyplane_proto::sync::v1 as pb;
use tokio::sync::Mutex as AsyncMutex;

use crate::metrics::Metrics;
use crate::sync::ControlPlaneClient;

/// Most credits one lease asks for: at that size a busy key costs one lease
/// call (during which its checks wait) per 10,000 checks.
const MAX_REQUEST: u64 = 10_000;
/// First lease size for a key.
const FIRST_REQUEST: u64 = 10;
/// How long "none left" is believed before asking again (a refill or a
/// change also arrives as a key event, which ends it sooner).
const EXHAUSTED_FOR: Duration = Duration::from_secs(1);
/// Share of a lease's time the sidecar spends from it (the rest covers clock
/// drift and the request's own time).
const LEASE_USE: f64 = 0.8;

/// What a check's credits came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spend {
    /// Spent.
    Spent,
    /// Fewer left than the cost; retry after the next refill, if any.
    Exhausted(Option<Duration>),
    /// The control plane could not be asked.
    Unavailable,
}

/// When deadlines are counted from (they are kept as nanoseconds in an atomic).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX)
}

/// One key's credits: what the current lease has left, spent without a
/// lock while its deadline is ahead, and the lease itself, locked while it
/// is renewed or given back.
#[derive(Default)]
struct KeyCredits {
    /// Credits left in the current lease.
    available: AtomicU64,
    /// The lease's spending deadline ([`nanos_since_epoch`]; 0 = no lease).
    deadline: AtomicU64,
    lease: AsyncMutex<KeyLease>,
}

impl KeyCredits {
    /// Spends `cost` from the current lease, if it has that many and time left.
    fn try_spend(&self, cost: u64) -> bool {
        self.deadline.load(Ordering::Acquire) > nanos_since_epoch(Instant::now())
            && self.available.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(cost)).is_ok()
    }
}

/// The current lease of a key, apart from its credits.
#[derive(Debug)]
struct KeyLease {
    lease_id: String,
    granted_at: Instant,
    /// Spend nothing from the lease after this.
    deadline: Instant,
    next_request: u64,
    exhausted_until: Option<Instant>,
    next_refill_at: Option<SystemTime>,
}

impl Default for KeyLease {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            lease_id: String::new(),
            granted_at: now,
            deadline: now,
            next_request: FIRST_REQUEST,
            exhausted_until: None,
            next_refill_at: None,
        }
    }
}

impl KeyLease {
    fn retry_after(&self) -> Option<Duration> {
        self.next_refill_at.map(|at| at.duration_since(SystemTime::now()).unwrap_or(Duration::from_secs(1)))
    }
}

/// The leases of every key this sidecar spends credits of.
pub struct CreditLeases {
    client: ControlPlaneClient,
    timeout: Duration,
    metrics: Arc<Metrics>,
    keys: RwLock<HashMap<String, Arc<KeyCredits>>>,
}

impl CreditLeases {
    /// Leases through `client`, each call waiting at most `timeout`.
    pub fn new(client: ControlPlaneClient, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self { client, timeout, metrics, keys: RwLock::new(HashMap::new()) }
    }

    fn entry(&self, key_id: &str) -> Arc<KeyCredits> {
        if let Some(entry) = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key_id) {
            return entry.clone();
        }
        let mut keys = self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.entry(key_id.to_owned()).or_default().clone()
    }

    /// Spends `cost` credits of `key_id`: from the current lease without a
    /// lock; otherwise concurrent checks of the key wait for one renewal.
    pub async fn spend(&self, key_id: &str, cost: u64) -> Spend {
        // The common case touches only the map's read lock and the counter.
        let spent =
            self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key_id).map(|e| e.try_spend(cost));
        if spent == Some(true) {
            return Spend::Spent;
        }
        let entry = self.entry(key_id);
        let mut lease = entry.lease.lock().await;
        if entry.try_spend(cost) {
            // Renewed while this check waited.
            return Spend::Spent;
        }
        let now = Instant::now();
        let left = entry.available.load(Ordering::Acquire);
        if lease.deadline <= now && left > 0 {
            // Time is up: give the rest back, and ask for less next time.
            lease.next_request = (lease.next_request / 2).max(1);
            self.give_back(&entry, &mut lease).await;
        } else if left > 0 {
            // Too few for this check: give them back rather than strand them.
            self.give_back(&entry, &mut lease).await;
        } else if now.duration_since(lease.granted_at) < (lease.deadline - lease.granted_at) / 4 {
            // Spent within a quarter of its time: the key is busy, lease more.
            lease.next_request = (lease.next_request * 2).min(MAX_REQUEST);
        }
        if lease.exhausted_until.is_some_and(|until| until > now) {
            return Spend::Exhausted(lease.retry_after());
        }
        self.renew(key_id, &entry, &mut lease, cost).await
    }

    async fn renew(&self, key_id: &str, entry: &KeyCredits, lease: &mut KeyLease, cost: u64) -> Spend {
        let request = pb::LeaseCreditsRequest {
            key_id: key_id.to_owned(),
            requested: lease.next_request.max(cost),
            at_least: cost,
        };
        let asked = Instant::now();
        let mut client = self.client.clone();
        let answer = match tokio::time::timeout(self.timeout, client.lease_credits(request)).await {
            Ok(Ok(answer)) => answer.into_inner(),
            Ok(Err(status)) => {
                tracing::warn!(key_id, %status, "leasing credits failed");
                self.metrics.credit_leases.get_or_create(&[("result", "error")]).inc();
                return Spend::Unavailable;
            }
            Err(_) => {
                self.metrics.credit_leases.get_or_create(&[("result", "error")]).inc();
                return Spend::Unavailable;
            }
        };
        let ttl = answer.ttl.and_then(|ttl| Duration::try_from(ttl).ok()).unwrap_or_default();
        lease.next_refill_at = answer.next_refill_at.and_then(|at| SystemTime::try_from(at).ok());
        if answer.granted < cost {
            self.metrics.credit_leases.get_or_create(&[("result", "exhausted")]).inc();
            lease.exhausted_until = Some(Instant::now() + EXHAUSTED_FOR);
            return Spend::Exhausted(lease.retry_after());
        }
        self.metrics.credit_leases.get_or_create(&[("result", "granted")]).inc();
        lease.lease_id = answer.lease_id;
        lease.granted_at = asked;
        lease.deadline = asked + ttl.mul_f64(LEASE_USE);
        lease.exhausted_until = None;
        entry.available.store(answer.granted - cost, Ordering::Release);
        entry.deadline.store(nanos_since_epoch(lease.deadline), Ordering::Release);
        Spend::Spent
    }

    /// Gives the unspent rest of the lease back (best effort: if it fails,
    /// the credits count as spent when the lease ends).
    async fn give_back(&self, entry: &KeyCredits, lease: &mut KeyLease) {
        let unused = entry.available.swap(0, Ordering::AcqRel);
        let lease_id = std::mem::take(&mut lease.lease_id);
        if unused == 0 || lease_id.is_empty() {
            return;
        }
        let mut client = self.client.clone();
        let request = pb::ReturnCreditsRequest { lease_id, unused };
        let result = match tokio::time::timeout(self.timeout, client.return_credits(request)).await {
            Ok(Ok(_)) => "returned",
            _ => "error",
        };
        self.metrics.credit_returns.get_or_create(&[("result", result)]).inc();
    }

    /// A key changed (a refill, an update): believe "none left" no longer.
    pub async fn key_changed(&self, key_id: &str) {
        let entry = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key_id).cloned();
        if let Some(entry) = entry {
            entry.lease.lock().await.exhausted_until = None;
        }
    }

    /// A key ended (revoked, deleted, expired): give its credits back.
    pub async fn key_ended(&self, key_id: &str) {
        let entry = self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(key_id);
        if let Some(entry) = entry {
            self.give_back(&entry, &mut *entry.lease.lock().await).await;
        }
    }

    /// Gives every lease back: graceful shutdown.
    pub async fn return_all(&self) {
        let entries: Vec<_> =
            self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()).drain().map(|(_, e)| e).collect();
        for entry in entries {
            self.give_back(&entry, &mut *entry.lease.lock().await).await;
        }
    }
}
