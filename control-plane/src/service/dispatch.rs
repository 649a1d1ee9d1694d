//! The webhook dispatcher: claims due deliveries, POSTs them signed per
//! Standard Webhooks, records every attempt, schedules retries and
//! dead-letters, and disables endpoints that are gone or failing for too long.
//!
//! One task claims and records (in batches, one transaction each); requests
//! run concurrently, at most `concurrency` in all and `endpoint_concurrency`
//! per subscription, so a slow endpoint cannot hold up the others. A claim
//! is a lease: the delivery's due time moves past the request timeout, so a
//! crash mid-request makes it due again by itself (at-least-once).

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use sea_orm::TransactionTrait;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};

use super::Core;
use super::events::{commit_with_deliveries, delivery_body, publish_own};
use super::webhooks::signing_secrets;
use crate::config::WebhookArgs;
use crate::crypto::signing::{WebhookSecret, signature_header};
use crate::egress::{EgressClient, EgressPolicy};
use crate::error::{Error, Result};
use crate::store::deliveries::{self, AttemptRecord, NextStep};
use crate::store::{self, OrgTx, audit, events, webhooks};

/// Deliveries claimed at once.
const CLAIM_BATCH: usize = 256;
/// Attempts recorded in one transaction at most.
const RECORD_BATCH: usize = 512;
/// How far a delivery is pushed back when its endpoint has too many requests in flight.
const ENDPOINT_BUSY_DELAY: Duration = Duration::from_millis(200);
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Why an endpoint answering 410 is disabled at once.
const GONE: &str = "the endpoint answered 410 Gone";
/// Response bytes kept per attempt.
const EXCERPT_BYTES: usize = 4096;
/// Retry delays vary by ±this fraction so failed endpoints are not hit in lockstep.
const JITTER: f64 = 0.2;
/// A subscription's rate limiter is forgotten after this long unused.
const LIMITER_IDLE: Duration = Duration::from_secs(600);
/// Rows purged per retention statement.
const PURGE_BATCH: u64 = 1000;

/// How deliveries are sent and retried.
#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// Timeout of one request.
    pub timeout: Duration,
    /// Delay before each attempt (the first normally zero).
    pub schedule: Vec<Duration>,
    /// How long a claim reserves a delivery.
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

impl DispatchSettings {
    /// Settings from the command line; the lease must outlast a request.
    pub fn new(args: &WebhookArgs) -> Result<Self> {
        if args.lease <= args.timeout {
            return Err(Error::Config(format!(
                "--webhook-lease ({:?}) must be longer than --webhook-timeout ({:?}), or a slow request could be sent twice at once",
                args.lease, args.timeout
            )));
        }
        if args.concurrency == 0 || args.endpoint_concurrency == 0 {
            return Err(Error::Config(
                "--webhook-concurrency and --webhook-endpoint-concurrency must be at least 1".into(),
            ));
        }
        Ok(Self {
            timeout: args.timeout,
            schedule: args.retry_schedule.0.clone(),
            lease: args.lease,
            disable_after: args.disable_after,
            concurrency: args.concurrency,
            endpoint_concurrency: args.endpoint_concurrency,
            poll: args.poll_interval,
        })
    }

    /// What follows a failed attempt `number` (1-based): the next attempt
    /// after the scheduled delay with jitter, no sooner than `retry_after`
    /// (capped at [`MAX_RETRY_AFTER`]); `Failed` after the last.
    pub fn after_failure(&self, number: i32, retry_after: Option<Duration>, now: DateTime<Utc>) -> NextStep {
        let Some(delay) = usize::try_from(number).ok().and_then(|n| self.schedule.get(n)) else {
            return NextStep::Failed;
        };
        let jittered = delay.mul_f64(rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER));
        let delay = retry_after.map_or(jittered, |asked| jittered.max(asked.min(MAX_RETRY_AFTER)));
        NextStep::RetryAt(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
    }
}

/// What an endpoint answered.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    excerpt: String,
}

/// Sends deliveries. Create with [`Dispatcher::new`], then drive with [`Dispatcher::run`].
pub struct Dispatcher {
    core: Arc<Core>,
    settings: DispatchSettings,
    client: EgressClient,
    permits: Arc<Semaphore>,
    in_flight: Mutex<HashMap<String, usize>>,
    /// Rate limiters of subscriptions with a limit, dropped when idle.
    limiters: moka::sync::Cache<String, Arc<(NonZeroU32, DefaultDirectRateLimiter)>>,
}

impl Dispatcher {
    /// A dispatcher sending through an HTTP client that enforces `egress`.
    pub fn new(core: Arc<Core>, settings: DispatchSettings, egress: Arc<EgressPolicy>) -> Result<Arc<Self>> {
        let client = egress.client(settings.timeout).map_err(|e| Error::Config(format!("webhook HTTP client: {e}")))?;
        Ok(Arc::new(Self {
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            core,
            settings,
            client,
            in_flight: Mutex::default(),
            limiters: moka::sync::Cache::builder().time_to_idle(LIMITER_IDLE).build(),
        }))
    }

    /// Claims, sends and records until `stop` turns true; then waits (up to
    /// the request timeout) for requests in flight and records them.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let (results, mut finished) = mpsc::unbounded_channel::<AttemptRecord>();
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        loop {
            if *stop.borrow() {
                break;
            }
            let wait = match self.claim_and_start(&results).await {
                Ok(wait) => wait,
                Err(error) => {
                    tracing::warn!(%error, "claiming webhook deliveries failed; retrying");
                    self.settings.poll
                }
            };
            tokio::select! {
                _ = finished.recv_many(&mut batch, RECORD_BATCH) => self.record(&mut batch).await,
                () = self.core.deliveries_due.notified() => {}
                () = tokio::time::sleep(wait) => {}
                changed = stop.changed() => {
                    // A dropped sender means the server is gone: stop too.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        drop(results);
        let drained = tokio::time::timeout(self.settings.timeout + Duration::from_secs(1), async {
            while finished.recv_many(&mut batch, RECORD_BATCH).await > 0 {
                self.record(&mut batch).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("webhook requests still running at shutdown; their deliveries are retried after the lease");
        }
    }

    /// Claims what is due and starts it; returns how long to sleep before
    /// looking again (zero when the claim was full).
    async fn claim_and_start(self: &Arc<Self>, results: &mpsc::UnboundedSender<AttemptRecord>) -> Result<Duration> {
        let free = self.permits.available_permits().min(CLAIM_BATCH);
        let mut claimed_full = false;
        if free > 0 {
            let now = store::now();
            let lease_until = now + chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
            let claimed = deliveries::claim_due(&self.core.db, now, lease_until, free as u64).await?;
            claimed_full = claimed.len() == free;
            if !claimed.is_empty() {
                self.start(claimed, results).await?;
            }
        }
        if claimed_full {
            return Ok(Duration::ZERO);
        }
        let until_due = match deliveries::next_due(&self.core.db).await? {
            Some(due) => (due - Utc::now()).to_std().unwrap_or(Duration::ZERO),
            None => self.settings.poll,
        };
        // With every permit taken, a finished request (a result) wakes the loop.
        Ok(if free == 0 { self.settings.poll } else { until_due.min(self.settings.poll) })
    }

    /// Starts requests for claimed deliveries, or defers or ends them.
    async fn start(
        self: &Arc<Self>,
        claimed: Vec<deliveries::Model>,
        results: &mpsc::UnboundedSender<AttemptRecord>,
    ) -> Result<()> {
        let subscription_ids: Vec<String> =
            claimed.iter().map(|d| d.subscription_id.clone()).collect::<HashSet<_>>().into_iter().collect();
        let event_ids: Vec<String> =
            claimed.iter().map(|d| d.event_id.clone()).collect::<HashSet<_>>().into_iter().collect();
        let subscriptions: HashMap<String, Arc<webhooks::Model>> =
            webhooks::find_for_dispatch(&self.core.db, &subscription_ids)
                .await?
                .into_iter()
                .map(|s| (s.id.clone(), Arc::new(s)))
                .collect();
        let events: HashMap<String, Arc<events::Model>> = events::find_for_dispatch(&self.core.db, &event_ids)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), Arc::new(e)))
            .collect();
        let mut secrets: HashMap<String, Arc<Vec<WebhookSecret>>> = HashMap::new();
        let now = store::now();
        for delivery in claimed {
            let subscription = match subscriptions.get(&delivery.subscription_id) {
                None => {
                    let _ = results.send(ended(&delivery, "the subscription was deleted"));
                    continue;
                }
                Some(s) if s.status != webhooks::ACTIVE => {
                    let _ = results.send(ended(&delivery, &format!("the subscription is {}", s.status)));
                    continue;
                }
                Some(s) => s.clone(),
            };
            let Some(event) = events.get(&delivery.event_id).cloned() else {
                let _ = results.send(ended(&delivery, "the event no longer exists"));
                continue;
            };
            if let Some(wait) = self.must_wait(&subscription) {
                let until = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                deliveries::defer(&self.core.db, &delivery.org_id, &delivery.id, until).await?;
                continue;
            }
            let signing = match secrets.get(&subscription.id) {
                Some(found) => found.clone(),
                None => match signing_secrets(&self.core, &subscription, now) {
                    Ok(opened) => {
                        let opened = Arc::new(opened);
                        secrets.insert(subscription.id.clone(), opened.clone());
                        opened
                    }
                    Err(error) => {
                        tracing::error!(subscription = %subscription.id, %error, "cannot open the signing secrets");
                        let _ = results.send(ended(&delivery, "the signing secret cannot be opened"));
                        continue;
                    }
                },
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                deliveries::defer(&self.core.db, &delivery.org_id, &delivery.id, now).await?;
                continue;
            };
            let slot = EndpointSlot::take(self.clone(), &subscription.id);
            let (dispatcher, results) = (self.clone(), results.clone());
            tokio::spawn(async move {
                let record = dispatcher.attempt(&delivery, &subscription, &event, &signing).await;
                drop((slot, permit));
                let _ = results.send(record);
            });
        }
        Ok(())
    }

    /// How long a delivery to `subscription` must wait: its endpoint has
    /// the most requests in flight, or its rate limit is used up.
    fn must_wait(&self, subscription: &webhooks::Model) -> Option<Duration> {
        let busy = self.in_flight.lock().ok()?.get(&subscription.id).copied().unwrap_or(0);
        if busy >= self.settings.endpoint_concurrency {
            return Some(ENDPOINT_BUSY_DELAY);
        }
        let per_second = NonZeroU32::new(u32::try_from(subscription.rate_limit_per_second).ok()?)?;
        let limiter = match self.limiters.get(&subscription.id) {
            Some(limiter) if limiter.0 == per_second => limiter,
            _ => {
                let limiter = Arc::new((per_second, RateLimiter::direct(Quota::per_second(per_second))));
                self.limiters.insert(subscription.id.clone(), limiter.clone());
                limiter
            }
        };
        limiter.1.check().err().map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Sends one attempt and says what happened.
    async fn attempt(
        &self,
        delivery: &deliveries::Model,
        subscription: &webhooks::Model,
        event: &events::Model,
        secrets: &[WebhookSecret],
    ) -> AttemptRecord {
        let number = delivery.attempt_count + 1;
        let started_at = store::now();
        let clock = Instant::now();
        let answer = self.post(&subscription.url, event, secrets).await;
        let latency = clock.elapsed();
        let succeeded = matches!(&answer, Ok(a) if (200..300).contains(&a.status));
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.core.metrics.webhook_attempts.get_or_create(&vec![("outcome", outcome)]).inc();
        self.core.metrics.webhook_attempt_seconds.observe(latency.as_secs_f64());
        let now = store::now();
        let (status_code, error, excerpt, next) = match answer {
            Ok(answer) if succeeded => (Some(answer.status), None, answer.excerpt, NextStep::Succeeded),
            Ok(answer) if answer.status == 410 => (Some(410), Some(GONE.to_owned()), answer.excerpt, NextStep::Failed),
            Ok(answer) => {
                let why = if (300..400).contains(&answer.status) {
                    format!("HTTP {} (redirects are not followed)", answer.status)
                } else {
                    format!("HTTP {}", answer.status)
                };
                let next = self.settings.after_failure(number, answer.retry_after, now);
                (Some(answer.status), Some(why), answer.excerpt, next)
            }
            Err(why) => (None, Some(why), String::new(), self.settings.after_failure(number, None, now)),
        };
        AttemptRecord {
            delivery_id: delivery.id.clone(),
            org_id: delivery.org_id.clone(),
            subscription_id: delivery.subscription_id.clone(),
            number: Some(number),
            started_at,
            status_code: status_code.map(i32::from),
            latency_micros: i64::try_from(latency.as_micros()).unwrap_or(i64::MAX),
            error,
            response_excerpt: (!excerpt.is_empty()).then_some(excerpt),
            next,
        }
    }

    /// POSTs `event` to `url`, signed with every secret.
    async fn post(&self, url: &str, event: &events::Model, secrets: &[WebhookSecret]) -> Result<Answer, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
        let body = delivery_body(event);
        let timestamp = Utc::now().timestamp();
        let signature = signature_header(secrets, &event.id, timestamp, body.as_bytes());
        let mut response = self
            .client
            .post(url)?
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.client.describe(e))?;
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Answer { status, retry_after, excerpt: String::from_utf8_lossy(&excerpt).into_owned() })
    }

    /// Records finished attempts in one transaction, then disables endpoints
    /// that answered 410 or have failed for too long.
    async fn record(&self, batch: &mut Vec<AttemptRecord>) {
        let records = std::mem::take(batch);
        match self.store_records(&records).await {
            Ok(to_disable) => {
                for (org, subscription, reason) in to_disable {
                    if let Err(error) = self.disable_endpoint(&org, &subscription, &reason).await {
                        tracing::error!(%subscription, %error, "disabling a webhook endpoint failed");
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, attempts = records.len(), "recording webhook attempts failed; those deliveries are retried after their lease");
            }
        }
    }

    async fn store_records(&self, records: &[AttemptRecord]) -> Result<Vec<(String, String, String)>> {
        let tx = self.core.db.begin().await?;
        let mut health: HashMap<(&str, &str), &AttemptRecord> = HashMap::new();
        for record in records {
            deliveries::record_attempt(&tx, record).await?;
            if record.number.is_some() {
                health.insert((&record.org_id, &record.subscription_id), record);
            }
        }
        let now = store::now();
        let mut to_disable = Vec::new();
        for ((org, subscription), last) in health {
            let succeeded = last.next == NextStep::Succeeded;
            let failing_since = webhooks::record_health(&tx, org, subscription, succeeded, now).await?;
            let reason = if last.status_code == Some(410) {
                Some(GONE.to_owned())
            } else {
                failing_since
                    .filter(|since| (now - *since).to_std().is_ok_and(|d| d >= self.settings.disable_after))
                    .map(|since| {
                        format!(
                            "every attempt failed since {}",
                            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        )
                    })
            };
            if let Some(reason) = reason {
                to_disable.push((org.to_owned(), subscription.to_owned(), reason));
            }
        }
        tx.commit().await?;
        Ok(to_disable)
    }

    /// Disables an endpoint, audits it and publishes `webhook.endpoint_disabled`.
    async fn disable_endpoint(&self, org: &str, subscription_id: &str, reason: &str) -> Result<()> {
        let tx = OrgTx::begin(&self.core.db, org).await?;
        if !webhooks::disable(&tx, subscription_id, reason).await? {
            return Ok(());
        }
        tracing::warn!(subscription = %subscription_id, %reason, "webhook endpoint disabled");
        let details = json!({ "subscription_id": subscription_id, "reason": reason });
        audit::append(
            &tx,
            audit::NewAuditEvent {
                actor_type: "system".into(),
                actor_id: "webhook-dispatcher".into(),
                action: "webhook.endpoint_disabled",
                target_type: "webhook_subscription",
                target_id: subscription_id.to_owned(),
                request_id: String::new(),
                peer_address: String::new(),
                user_agent: String::new(),
                metadata: details.clone(),
            },
        )
        .await?;
        publish_own(&tx, "webhook.endpoint_disabled", details).await?;
        commit_with_deliveries(&self.core, tx).await
    }
}

/// A delivery that ends without a request.
fn ended(delivery: &deliveries::Model, why: &str) -> AttemptRecord {
    AttemptRecord {
        delivery_id: delivery.id.clone(),
        org_id: delivery.org_id.clone(),
        subscription_id: delivery.subscription_id.clone(),
        number: None,
        started_at: store::now(),
        status_code: None,
        latency_micros: 0,
        error: Some(why.to_owned()),
        response_excerpt: None,
        next: NextStep::Failed,
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value.trim()).ok()?;
    Some((at.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// One request in flight to a subscription, counted until dropped.
struct EndpointSlot {
    dispatcher: Arc<Dispatcher>,
    subscription_id: String,
}

impl EndpointSlot {
    fn take(dispatcher: Arc<Dispatcher>, subscription_id: &str) -> Self {
        if let Ok(mut in_flight) = dispatcher.in_flight.lock() {
            *in_flight.entry(subscription_id.to_owned()).or_default() += 1;
        }
        Self { dispatcher, subscription_id: subscription_id.to_owned() }
    }
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.dispatcher.in_flight.lock()
            && let Some(count) = in_flight.get_mut(&self.subscription_id)
        {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.subscription_id);
            }
        }
    }
}

/// Purges succeeded deliveries (with their attempts) older than `retention`,
/// and events no delivery refers to any more, every `retention / 2` (at most a minute).
pub async fn enforce_retention(core: Arc<Core>, retention: Duration) {
    let interval = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(interval).await;
        let cutoff = store::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let purged = async {
            let mut total = 0;
            loop {
                let purged = deliveries::purge_succeeded(&core.db, cutoff, PURGE_BATCH).await?;
                total += purged;
                if purged < PURGE_BATCH {
                    break;
                }
            }
            while events::purge_unreferenced(&core.db, cutoff, PURGE_BATCH).await? == PURGE_BATCH {}
            Ok::<_, Error>(total)
        }
        .await;
        match purged {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "purged succeeded webhook deliveries past retention"),
            Err(error) => tracing::warn!(%error, "purging webhook deliveries failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn retry_after_never_panics(text in ".*") {
            let _ = parse_retry_after(&text);
        }

        #[test]
        fn retry_after_seconds_round_trip(seconds in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(parse_retry_after(&seconds.to_string()), Some(Duration::from_secs(seconds)));
        }

        #[test]
        fn retry_after_dates_are_delays(ahead in 2i64..1_000_000) {
            let at = (Utc::now() + chrono::Duration::seconds(ahead)).to_rfc2822();
            let delay = parse_retry_after(&at).expect("an HTTP date parses").as_secs() as i64;
            proptest::prop_assert!((ahead - 2..=ahead).contains(&delay), "{} for {}", delay, ahead);
        }
    }

    fn settings(schedule: &[u64]) -> DispatchSettings {
        DispatchSettings {
            timeout: Duration::from_secs(1),
            schedule: schedule.iter().map(|s| Duration::from_secs(*s)).collect(),
            lease: Duration::from_secs(5),
            disable_after: Duration::from_secs(60),
            concurrency: 1,
            endpoint_concurrency: 1,
            poll: Duration::from_secs(1),
        }
    }

    #[test]
    fn retries_follow_the_schedule_with_jitter_then_fail() {
        let settings = settings(&[0, 100, 1000]);
        let now = Utc::now();
        for _ in 0..100 {
            let NextStep::RetryAt(at) = settings.after_failure(1, None, now) else { panic!("retry expected") };
            let delay = (at - now).num_milliseconds();
            assert!((80_000..=120_000).contains(&delay), "{delay} ms is outside 100 s ± 20%");
        }
        assert!(matches!(settings.after_failure(2, None, now), NextStep::RetryAt(_)));
        assert_eq!(settings.after_failure(3, None, now), NextStep::Failed);
    }

    #[test]
    fn retry_after_delays_within_bounds() {
        let settings = settings(&[0, 1, 1]);
        let now = Utc::now();
        let NextStep::RetryAt(at) = settings.after_failure(1, Some(Duration::from_secs(30)), now) else { panic!() };
        assert_eq!((at - now).num_seconds(), 30);
        let NextStep::RetryAt(at) = settings.after_failure(1, Some(Duration::from_secs(999_999)), now) else {
            panic!()
        };
        assert_eq!((at - now).num_seconds(), MAX_RETRY_AFTER.as_secs() as i64);
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert!(parse_retry_after("soon").is_none());
        assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
    }
}
