//! The webhook dispatcher's loop: claims due deliveries, starts their
//! requests and records what happened. Each job has its file: [`retry`]
//! (when to try again), [`throttle`] (per-endpoint limits), [`send`] (the
//! signed request and its answer), [`health`] (failure runs, disabling),
//! [`stats`] (attempt counts and latencies for usage analytics).
//!
//! One task claims, another records (in batches, one transaction each);
//! requests run concurrently, at most `concurrency` in all. A claim is a
//! lease: the delivery's due time moves past the request timeout, so a
//! crash mid-request makes it due again by itself (at-least-once).
//! Deliveries this process publishes are written already leased to it and
//! handed over in memory, sent without a claim; the due index is scanned
//! when something else may be due.

mod health;
pub mod queue;
mod record;
mod retry;
mod send;
mod stats;
mod throttle;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use retry::{MAX_RETRY_AFTER, RetrySchedule};
pub use send::delivery_body;

use super::outbox::Leased;
use super::secrets::SecretSet;
use crate::background::Background;
use crate::crypto::MasterKeys;
use crate::crypto::signing::WebhookSecret;
use crate::egress::EgressPolicy;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::deliveries::{self, AttemptRecord};
use crate::store::webhooks::SubscriptionStatus;
use crate::store::{self, events, webhooks};
use health::EndpointHealth;
use queue::DispatchQueue;
use record::abandon;
use send::Sender;
use throttle::EndpointThrottle;

/// Deliveries claimed at once.
const CLAIM_BATCH: usize = 256;
/// Attempts recorded in one transaction at most.
const RECORD_BATCH: usize = 512;

/// How deliveries are sent and retried (checked by `Config::validate`).
#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// Timeout of one request.
    pub timeout: Duration,
    pub schedule: RetrySchedule,
    /// How long a claim reserves a delivery; longer than `timeout`.
    pub lease: Duration,
    /// Continuous failure after which an endpoint is disabled.
    pub disable_after: Duration,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Requests in flight at most per subscription.
    pub endpoint_concurrency: usize,
    /// Fallback poll for deliveries written by other processes.
    pub poll: Duration,
}

/// Sends deliveries. Create with [`Dispatcher::new`], then drive with [`Dispatcher::run`].
pub struct Dispatcher {
    db: DatabaseConnection,
    master_keys: Arc<MasterKeys>,
    queue: DispatchQueue,
    /// Its recorder's and requests' tasks.
    background: Background,
    settings: DispatchSettings,
    sender: Sender,
    throttle: EndpointThrottle,
    health: EndpointHealth,
    permits: Arc<Semaphore>,
    /// Notified when a request ends and gives its permit back.
    permit_freed: Notify,
}

impl Dispatcher {
    /// A dispatcher sending through an HTTP client that enforces `egress`.
    pub fn new(
        db: DatabaseConnection,
        master_keys: Arc<MasterKeys>,
        metrics: Arc<Metrics>,
        queue: DispatchQueue,
        settings: DispatchSettings,
        egress: &Arc<EgressPolicy>,
        background: Background,
    ) -> Result<Arc<Self>> {
        let sender = Sender::new(egress, settings.timeout, settings.schedule.clone(), metrics)
            .map_err(|e| Error::Config(format!("webhook HTTP client: {e}")))?;
        Ok(Arc::new(Self {
            sender,
            throttle: EndpointThrottle::new(settings.endpoint_concurrency),
            health: EndpointHealth::new(db.clone(), queue.wakeups().clone(), settings.disable_after),
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            permit_freed: Notify::new(),
            db,
            master_keys,
            queue,
            background,
            settings,
        }))
    }

    /// Claims, sends and records until `stop` is cancelled; then waits (up
    /// to the request timeout) for requests in flight and records them, so
    /// a delivery is either recorded or retried after its lease.
    ///
    /// Recording runs in a task of its own, so claiming never waits for a
    /// batch's commit; while attempts cannot be stored (the database is
    /// unreachable) nothing more is claimed, so a delivery that was sent is
    /// not sent again because its outcome was lost.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let (results, finished) = mpsc::unbounded_channel::<AttemptRecord>();
        let backlogged = Arc::new(AtomicBool::new(false));
        let recorder =
            self.background.spawn("attempt-recorder", self.clone().record_until_closed(finished, backlogged.clone()));
        self.queue.lease_publications(self.settings.lease);
        // Scan the due index at once: deliveries left by a previous run.
        let mut next_scan = Instant::now();
        while !stop.is_cancelled() {
            let wait = if backlogged.load(Ordering::Acquire) {
                self.settings.poll
            } else {
                match self.claim_and_start(&results, &mut next_scan).await {
                    Ok(wait) => wait,
                    Err(error) => {
                        // Deliveries taken and not started went back to the queue.
                        tracing::warn!(%error, "claiming webhook deliveries failed; retrying");
                        next_scan = Instant::now();
                        self.settings.poll
                    }
                }
            };
            // With every permit taken, a finished request wakes the loop.
            let exhausted = self.permits.available_permits() == 0;
            tokio::select! {
                () = self.permit_freed.notified(), if exhausted => {}
                () = self.queue.wakeups().dispatcher_woken() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {}
            }
        }
        drop(results);
        if tokio::time::timeout(self.settings.timeout + Duration::from_secs(1), recorder).await.is_err() {
            tracing::warn!(
                "webhook attempts still running or unrecorded at shutdown; their deliveries are retried after the lease"
            );
        }
        // Leased to this process and never started: due at once for the
        // next dispatcher instead of after their lease. (A publication
        // committing after this point is sent when its lease runs out.)
        let unstarted = self.queue.stop_leasing();
        if !unstarted.is_empty()
            && let Err(error) = deliveries::release(&self.db, &unstarted).await
        {
            tracing::warn!(%error, deliveries = unstarted.len(), "releasing unsent deliveries at shutdown failed; they are sent after their lease");
        }
    }

    /// Claims what is due and starts it: first the deliveries this process
    /// has just published (leased to it already); then, when a scan was asked for or
    /// `next_scan` has come, whatever else the due index holds (retries,
    /// deferred deliveries, other processes' publications, leases that ran
    /// out). Returns how long to sleep before looking again (zero when there
    /// is more to claim at once; the poll interval when every permit is
    /// taken, as a freed one wakes the loop).
    async fn claim_and_start(
        self: &Arc<Self>,
        results: &mpsc::UnboundedSender<AttemptRecord>,
        next_scan: &mut Instant,
    ) -> Result<Duration> {
        let mut free = self.permits.available_permits().min(CLAIM_BATCH);
        if free == 0 {
            return Ok(self.settings.poll);
        }
        let fresh = self.queue.take(free);
        let scan_asked = self.queue.wakeups().take_scan();
        let more_fresh = fresh.len() == free;
        let now = store::now();
        let lease_until = now + chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
        let timeout = chrono::Duration::from_std(self.settings.timeout).unwrap_or(chrono::Duration::MAX);
        // A fresh delivery that waited here so long that its lease no longer
        // covers a request is left to the scan, which finds it when the
        // lease runs out.
        let (fresh, outlived): (Vec<_>, Vec<_>) =
            fresh.into_iter().partition(|leased| leased.delivery.next_attempt_at - now > timeout);
        if !outlived.is_empty() {
            tracing::debug!(deliveries = outlived.len(), "fresh deliveries outlived their lease in the queue");
        }
        free -= fresh.len();
        let mut deferred_until = self.start(fresh, results).await?;
        if scan_asked || Instant::now() >= *next_scan {
            if free == 0 {
                *next_scan = Instant::now();
                return Ok(Duration::ZERO);
            }
            let tx = store::begin_relaxed(&self.db).await?;
            let claimed = deliveries::claim_due(&tx, now, lease_until, free as u64).await?;
            tx.commit().await?;
            let claimed_full = claimed.len() == free;
            let deferred = self.start(claimed.into_iter().map(Leased::from).collect(), results).await?;
            deferred_until = deferred_until.into_iter().chain(deferred).min();
            if claimed_full {
                *next_scan = Instant::now();
                return Ok(Duration::ZERO);
            }
            let until_due = match deliveries::next_due(&self.db).await? {
                Some(due) => (due - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                None => self.settings.poll,
            };
            *next_scan = Instant::now() + until_due.min(self.settings.poll);
        }
        if let Some(until) = deferred_until {
            let wait = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            *next_scan = (*next_scan).min(Instant::now() + wait);
        }
        if more_fresh {
            return Ok(Duration::ZERO);
        }
        Ok(next_scan.saturating_duration_since(Instant::now()).min(self.settings.poll))
    }

    /// Starts requests for claimed deliveries, or defers or abandons them;
    /// returns when the earliest deferred one is due again.
    async fn start(
        self: &Arc<Self>,
        claimed: Vec<Leased>,
        results: &mpsc::UnboundedSender<AttemptRecord>,
    ) -> Result<Option<DateTime<Utc>>> {
        let mut unstarted = VecDeque::from(claimed);
        let started = self.start_each(&mut unstarted, results).await;
        if started.is_err() {
            // Still leased to this process: try them again, rather than
            // leave them until the lease runs out.
            self.queue.requeue(unstarted);
        }
        started
    }

    /// [`Self::start`], taking deliveries from the front of `unstarted`;
    /// when the database fails, the ones not started are left in it.
    async fn start_each(
        self: &Arc<Self>,
        unstarted: &mut VecDeque<Leased>,
        results: &mpsc::UnboundedSender<AttemptRecord>,
    ) -> Result<Option<DateTime<Utc>>> {
        if unstarted.is_empty() {
            return Ok(None);
        }
        let subscription_ids: Vec<String> = unstarted
            .iter()
            .map(|leased| leased.delivery.subscription_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let subscriptions: HashMap<String, Arc<webhooks::Model>> =
            webhooks::find_for_dispatch(&self.db, &subscription_ids)
                .await?
                .into_iter()
                .map(|s| (s.id.clone(), Arc::new(s)))
                .collect();
        let events = self.events_of(unstarted).await?;
        let mut secrets: HashMap<String, Arc<Vec<WebhookSecret>>> = HashMap::new();
        let now = store::now();
        let mut deferred_until: Option<DateTime<Utc>> = None;
        while let Some(leased) = unstarted.pop_front() {
            let delivery = leased.delivery;
            let subscription = match subscriptions.get(&delivery.subscription_id) {
                None => {
                    let _ = results.send(abandon(&delivery, "the subscription was deleted"));
                    continue;
                }
                Some(s) if s.status != SubscriptionStatus::Active => {
                    let why = format!("the subscription is {}", s.status.as_str());
                    let _ = results.send(abandon(&delivery, &why));
                    continue;
                }
                Some(s) => s.clone(),
            };
            let Some(event) = events.get(&delivery.event_id).cloned() else {
                let _ = results.send(abandon(&delivery, "the event no longer exists"));
                continue;
            };
            if let Some(wait) = self.throttle.must_wait(&subscription) {
                let until = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                if let Err(error) = deliveries::defer(&self.db, &delivery.org_id, &delivery.id, until).await {
                    unstarted.push_front(Leased { delivery, event: Some(event) });
                    return Err(error);
                }
                deferred_until = deferred_until.into_iter().chain([until]).min();
                continue;
            }
            let signing = match secrets.get(&subscription.id) {
                Some(found) => found.clone(),
                None => {
                    match SecretSet::open_live(&self.master_keys, &subscription, now).and_then(|s| s.signing_keys()) {
                        Ok(opened) => {
                            let opened = Arc::new(opened);
                            secrets.insert(subscription.id.clone(), opened.clone());
                            opened
                        }
                        Err(error) => {
                            tracing::error!(subscription = %subscription.id, %error, "cannot open the signing secrets");
                            let _ = results.send(abandon(&delivery, "the signing secret cannot be opened"));
                            continue;
                        }
                    }
                }
            };
            let endpoint = match self.sender.endpoint(&self.master_keys, &subscription) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    tracing::error!(subscription = %subscription.id, %error, "cannot open the delivery options");
                    let _ = results.send(abandon(&delivery, "the endpoint's delivery options cannot be used"));
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                if let Err(error) = deliveries::defer(&self.db, &delivery.org_id, &delivery.id, now).await {
                    unstarted.push_front(Leased { delivery, event: Some(event) });
                    return Err(error);
                }
                deferred_until = Some(now);
                continue;
            };
            let slot = self.throttle.occupy(&subscription.id);
            let (dispatcher, results) = (self.clone(), results.clone());
            self.background.spawn_child(async move {
                let record =
                    dispatcher.sender.attempt(&delivery, &subscription, &event, &signing, endpoint.as_deref()).await;
                drop((slot, permit));
                dispatcher.permit_freed.notify_one();
                let _ = results.send(record);
            });
        }
        Ok(deferred_until)
    }

    /// The events of `leased` deliveries: those their publications handed
    /// over, and the rest read in one query.
    async fn events_of(&self, leased: &VecDeque<Leased>) -> Result<HashMap<String, Arc<events::Model>>> {
        let mut found: HashMap<String, Arc<events::Model>> = HashMap::new();
        let mut missing: HashSet<String> = HashSet::new();
        for leased in leased {
            match &leased.event {
                Some(event) => {
                    found.entry(event.id.clone()).or_insert_with(|| event.clone());
                }
                None => {
                    missing.insert(leased.delivery.event_id.clone());
                }
            }
        }
        missing.retain(|id| !found.contains_key(id));
        if !missing.is_empty() {
            let ids: Vec<String> = missing.into_iter().collect();
            for event in events::find_for_dispatch(&self.db, &ids).await? {
                found.insert(event.id.clone(), Arc::new(event));
            }
        }
        Ok(found)
    }
}
