//! Credits spent locally (docs/api.md "Credits"): for a key limited to a number
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

use crate::control_plane::ControlPlaneClient;
use crate::metrics::Metrics;

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
    /// Spent; the receipt can put them back ([`CreditLeases::refund`]).
    Spent(Receipt),
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

/// What a lease call granted.
struct Grant {
    /// Empty when nothing is to be given back.
    lease_id: String,
    granted: u64,
    /// How long to spend from it, from the call.
    spend_for: Duration,
    next_refill_at: Option<SystemTime>,
    /// When none are left, until when that holds (default: a second).
    exhausted_until: Option<Instant>,
}

/// Credits spent from one lease, which can be put back into it while it lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    generation: u64,
    cost: u64,
}

/// The low bits of [`KeyCredits::available`] count credits (grants are at
/// most 100,000); the high bits number the lease they belong to.
const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// `available` starting a new lease (the next generation) with `count` credits.
fn next_lease(available: u64, count: u64) -> u64 {
    ((available >> COUNT_BITS).wrapping_add(1) << COUNT_BITS) | (count & COUNT_MASK)
}

/// One key's credits: what the current lease has left, spent without a
/// lock while its deadline is ahead, and the lease itself, locked while it
/// is renewed or given back.
#[derive(Default)]
struct KeyCredits {
    /// The lease's generation and the credits it has left, in one atomic
    /// so a refund can never land in a later lease.
    available: AtomicU64,
    /// The lease's spending deadline ([`nanos_since_epoch`]; 0 = no lease).
    deadline: AtomicU64,
    lease: AsyncMutex<KeyLease>,
}

impl KeyCredits {
    /// Spends `cost` from the current lease, if it has that many and time left.
    fn try_spend(&self, cost: u64) -> Option<Receipt> {
        if self.deadline.load(Ordering::Acquire) <= nanos_since_epoch(Instant::now()) {
            return None;
        }
        let spend = |available: u64| Some((available & !COUNT_MASK) | (available & COUNT_MASK).checked_sub(cost)?);
        let before = self.available.fetch_update(Ordering::AcqRel, Ordering::Acquire, spend).ok()?;
        Some(Receipt { generation: before >> COUNT_BITS, cost })
    }

    /// Credits left in the current lease.
    fn left(&self) -> u64 {
        self.available.load(Ordering::Acquire) & COUNT_MASK
    }

    /// Starts a new lease holding `count`: what the old one had left, and
    /// the new one's generation.
    fn replace(&self, count: u64) -> (u64, u64) {
        let old = self.available.fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| Some(next_lease(a, count)));
        let old = old.unwrap_or_default();
        (old & COUNT_MASK, next_lease(old, count) >> COUNT_BITS)
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

/// What a [`CreditLeases`] leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// A key's credits (`LeaseCredits`; unspent ones go back).
    Credits,
    /// Requests of a key's global rate limit in the current window
    /// (`LeaseRequests`; unspent ones lapse with the window).
    Requests,
}

/// The leases of every key (and identity) this sidecar spends credits (or
/// global rate-limit requests) of, by id.
pub struct CreditLeases {
    budget: Budget,
    client: ControlPlaneClient,
    timeout: Duration,
    metrics: Arc<Metrics>,
    keys: RwLock<HashMap<String, Arc<KeyCredits>>>,
}

impl CreditLeases {
    /// Leases of `budget` through `client`, each call waiting at most `timeout`.
    pub fn new(budget: Budget, client: ControlPlaneClient, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self { budget, client, timeout, metrics, keys: RwLock::new(HashMap::new()) }
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
        let spent = self
            .keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key_id)
            .and_then(|e| e.try_spend(cost));
        if let Some(receipt) = spent {
            return Spend::Spent(receipt);
        }
        let entry = self.entry(key_id);
        let mut lease = entry.lease.lock().await;
        if let Some(receipt) = entry.try_spend(cost) {
            // Renewed while this check waited.
            return Spend::Spent(receipt);
        }
        let now = Instant::now();
        let left = entry.left();
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
        let asked = Instant::now();
        let requested = lease.next_request.max(cost);
        let grant = match self.budget {
            Budget::Credits => self.lease_credits(key_id, requested, cost).await,
            Budget::Requests => self.lease_requests(key_id, requested).await,
        };
        let metric = match self.budget {
            Budget::Credits => &self.metrics.credit_leases,
            Budget::Requests => &self.metrics.request_leases,
        };
        let Some(grant) = grant else {
            metric.get_or_create(&[("result", "error")]).inc();
            return Spend::Unavailable;
        };
        lease.next_refill_at = grant.next_refill_at;
        if grant.granted < cost {
            metric.get_or_create(&[("result", "exhausted")]).inc();
            lease.exhausted_until = Some(grant.exhausted_until.unwrap_or(Instant::now() + EXHAUSTED_FOR));
            return Spend::Exhausted(lease.retry_after());
        }
        metric.get_or_create(&[("result", "granted")]).inc();
        lease.lease_id = grant.lease_id;
        lease.granted_at = asked;
        lease.deadline = asked + grant.spend_for;
        lease.exhausted_until = None;
        let (_, generation) = entry.replace(grant.granted - cost);
        entry.deadline.store(nanos_since_epoch(lease.deadline), Ordering::Release);
        Spend::Spent(Receipt { generation, cost })
    }

    /// Puts back what `receipt` spent of `key_id`'s credits (a check that
    /// another budget refused), if the lease it came from is still the
    /// current one; otherwise they stay spent.
    pub fn refund(&self, key_id: &str, receipt: Receipt) {
        let entry = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(key_id).cloned();
        if let Some(entry) = entry {
            let same_lease =
                |available: u64| (available >> COUNT_BITS == receipt.generation).then(|| available + receipt.cost);
            let _ = entry.available.fetch_update(Ordering::AcqRel, Ordering::Acquire, same_lease);
        }
    }

    /// A block of credits: spent for 80 % of the lease's time.
    async fn lease_credits(&self, key_id: &str, requested: u64, cost: u64) -> Option<Grant> {
        let request = pb::LeaseCreditsRequest { key_id: key_id.to_owned(), requested, at_least: cost };
        let mut client = self.client.clone();
        let answer = self.call(key_id, client.lease_credits(request)).await?;
        let ttl = answer.ttl.and_then(|ttl| Duration::try_from(ttl).ok()).unwrap_or_default();
        Some(Grant {
            lease_id: answer.lease_id,
            granted: answer.granted,
            spend_for: ttl.mul_f64(LEASE_USE),
            next_refill_at: answer.next_refill_at.and_then(|at| SystemTime::try_from(at).ok()),
            exhausted_until: None,
        })
    }

    /// Requests of the current window: spent until it ends (measured from
    /// before the call, so never past the control plane's end of it); when
    /// none are left, none are asked for again before then.
    async fn lease_requests(&self, key_id: &str, requested: u64) -> Option<Grant> {
        let asked = Instant::now();
        let request = pb::LeaseRequestsRequest { key_id: key_id.to_owned(), requested };
        let mut client = self.client.clone();
        let answer = self.call(key_id, client.lease_requests(request)).await?;
        let window_left = answer.window_left.and_then(|left| Duration::try_from(left).ok()).unwrap_or_default();
        Some(Grant {
            lease_id: String::new(),
            granted: answer.granted,
            spend_for: window_left,
            next_refill_at: Some(SystemTime::now() + window_left),
            exhausted_until: Some(asked + window_left),
        })
    }

    /// The answer of a lease call, or `None` (logged) when it failed or
    /// took longer than the timeout.
    async fn call<T>(
        &self,
        key_id: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Some(answer.into_inner()),
            Ok(Err(status)) => {
                tracing::warn!(key_id, %status, "leasing failed");
                None
            }
            Err(_) => {
                tracing::warn!(key_id, timeout = ?self.timeout, "leasing timed out");
                None
            }
        }
    }

    /// Gives the unspent rest of the lease back (best effort: if it fails,
    /// the credits count as spent when the lease ends).
    async fn give_back(&self, entry: &KeyCredits, lease: &mut KeyLease) {
        let (unused, _) = entry.replace(0);
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
