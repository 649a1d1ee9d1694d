//! Applying usage reports: one transaction per report adds its counts to
//! the minute, hour and day rollups of each key and org and to the keys'
//! `usage_count` / `last_used_at`. A report id is recorded in the same
//! transaction, so a retried report (whose answer was lost) is not counted
//! twice; ids are remembered for the deduplication window.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyplane_proto::usage::{MinuteCounts, Outcome, UsageTally};
use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio_util::sync::CancellationToken;

use crate::crypto::Environment;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::service::webhooks::outbox::publish_system_event;
use crate::service::webhooks::system_events::{RateLimited, SystemEvent};
use crate::store::credits::{self, HolderId};
use crate::store::key_uses::{self, KeyUse};
use crate::store::limits::{HasLimits, RateLimit};
use crate::store::usage::{self, Counts, Granularity, KeyBucket, OrgBucket};
use crate::store::{ChangeTx, OrgScope, api_keys, identities};
use crate::wakeups::Wakeups;

/// Most counts in one report.
pub const MAX_COUNTS_PER_REPORT: usize = 1000;
/// How far ahead of this server's clock a reported minute may be.
const CLOCK_SKEW: i64 = 300;

/// The window rate-limited notices are counted in: the limit's, and at
/// least the minute usage is reported by.
fn limit_window(limit: RateLimit) -> Duration {
    limit.window.max(Duration::from_secs(60))
}

/// One key's checks in one minute, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MinuteCount {
    pub key_id: String,
    /// Unix seconds of the minute's start.
    pub minute: i64,
    pub counts: Counts,
    /// The latest allowed check, when there was one.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl MinuteCount {
    /// A count as the shared tally keeps it.
    pub fn from_tally((key_id, tallied): (String, MinuteCounts)) -> Self {
        let [allowed, unauthorized, forbidden, rate_limited] =
            tallied.counts.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        Self {
            key_id,
            minute: tallied.minute,
            counts: Counts { allowed, unauthorized, forbidden, rate_limited },
            last_used_at: tallied.last_allowed.map(DateTime::<Utc>::from),
        }
    }
}

/// A batch of counts; `report_id` makes it safe to retry.
#[derive(Clone, Debug, Default)]
pub struct UsageReport {
    pub report_id: Option<String>,
    pub counts: Vec<MinuteCount>,
}

/// What applying a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Counts that named an existing key.
    pub applied: u64,
    /// The report id had been applied before; nothing was counted.
    pub duplicate: bool,
}

/// Checks a report's shape, naming the bad field.
pub fn check_report(report: &UsageReport, now: DateTime<Utc>) -> Result<()> {
    if let Some(id) = &report.report_id {
        let ok =
            (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(Error::invalid("report_id", "must be 1 to 64 of [A-Za-z0-9_-]"));
        }
    }
    if report.counts.len() > MAX_COUNTS_PER_REPORT {
        return Err(Error::invalid("counts", format!("at most {MAX_COUNTS_PER_REPORT} per report")));
    }
    for (i, count) in report.counts.iter().enumerate() {
        if count.minute.rem_euclid(60) != 0 {
            return Err(Error::invalid(format!("counts[{i}].minute"), "must be the start of a minute"));
        }
        if count.minute > now.timestamp() + CLOCK_SKEW {
            return Err(Error::invalid(format!("counts[{i}].minute"), "is in the future"));
        }
        if count.key_id.is_empty() || count.key_id.len() > 64 {
            return Err(Error::invalid(format!("counts[{i}].key_id"), "must be 1 to 64 characters"));
        }
        let c = &count.counts;
        if [c.allowed, c.unauthorized, c.forbidden, c.rate_limited].iter().any(|n| *n < 0) {
            return Err(Error::invalid(format!("counts[{i}]"), "counts must not be negative"));
        }
    }
    Ok(())
}

/// Applies usage reports.
pub struct UsageRecorder {
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
    wakeups: Wakeups,
}

impl UsageRecorder {
    pub fn new(db: DatabaseConnection, metrics: Arc<Metrics>, wakeups: Wakeups) -> Self {
        Self { db, metrics, wakeups }
    }

    /// Applies `report` (checked with [`check_report`]) in one transaction.
    pub async fn apply(&self, report: &UsageReport) -> Result<Applied> {
        let tx = self.db.begin().await?;
        if let Some(id) = &report.report_id
            && !usage::claim_report(&tx, id, Utc::now().timestamp()).await?
        {
            return Ok(Applied { applied: 0, duplicate: true });
        }
        let mut ids: Vec<&str> = report.counts.iter().map(|c| c.key_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let owners: HashMap<String, (String, Environment)> =
            api_keys::owners(&tx, &ids).await?.into_iter().map(|(id, org, env)| (id, (org, env))).collect();
        let known: Vec<&MinuteCount> = report.counts.iter().filter(|c| owners.contains_key(&c.key_id)).collect();
        let unknown = (report.counts.len() - known.len()) as u64;
        self.metrics.usage_counts.get_or_create(&vec![("result", "unknown_key")]).inc_by(unknown);
        let mut org_rows = Vec::new();
        for granularity in Granularity::ALL {
            let (mut keys, orgs) = rollup(granularity, &known, &owners);
            usage::add_key_buckets(&tx, granularity, &mut keys).await?;
            org_rows.push((granularity, orgs));
        }
        key_uses::record_uses(&tx, OrgScope::AllOrgs, &uses(&known)).await?;
        // Every report of an org updates the same org rows: take their locks
        // last, so concurrent reports queue for them only briefly.
        for (granularity, mut orgs) in org_rows {
            usage::add_org_buckets(&tx, granularity, &mut orgs).await?;
        }
        tx.commit().await?;
        self.metrics.usage_counts.get_or_create(&vec![("result", "applied")]).inc_by(known.len() as u64);
        let refused: Vec<&MinuteCount> = known.iter().copied().filter(|c| c.counts.rate_limited > 0).collect();
        if !refused.is_empty()
            && let Err(error) = self.announce_rate_limited(&refused, &owners).await
        {
            // The counts are stored; a notice lost here is not sent later.
            tracing::warn!(%error, "publishing api_key.rate_limited notices failed");
        }
        Ok(Applied { applied: known.len() as u64, duplicate: false })
    }

    /// Publishes `api_key.rate_limited` for refused keys whose limiting key
    /// or identity had no notice yet in the window their refusals fell in.
    async fn announce_rate_limited(
        &self,
        refused: &[&MinuteCount],
        owners: &HashMap<String, (String, Environment)>,
    ) -> Result<()> {
        let mut by_org: BTreeMap<&str, BTreeMap<&str, (i64, i64)>> = BTreeMap::new();
        for count in refused {
            let Some((org, _)) = owners.get(&count.key_id) else { continue };
            let seen = by_org.entry(org).or_default().entry(&count.key_id).or_insert((count.minute, 0));
            *seen = (seen.0.max(count.minute), seen.1 + count.counts.rate_limited);
        }
        for (org, keys) in by_org {
            let tx = ChangeTx::begin(&self.db, org).await?;
            for (key_id, (minute, refused)) in keys {
                let Some(key) = api_keys::find_in(tx.conn(), OrgScope::Org(org), key_id).await? else { continue };
                let identity = match &key.identity_id {
                    Some(id) => identities::find_in(tx.conn(), OrgScope::Org(org), id).await?,
                    None => None,
                };
                // The key's own limit refused, or else its identity's. Usage
                // counts running out of credits as rate-limited too: with no
                // rate limit on either, that is what it was.
                let (holder, limit, limited_by) = match (key.rate_limit(), identity) {
                    (Some(own), _) => (HolderId::Key(key.id.clone()), limit_window(own), "key"),
                    (None, Some(identity)) => match identity.rate_limit() {
                        Some(shared) => (HolderId::Identity(identity.id.clone()), limit_window(shared), "identity"),
                        None => continue,
                    },
                    (None, None) => continue,
                };
                let window_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
                let window_start = minute * 1000 - (minute * 1000).rem_euclid(window_ms);
                if !credits::claim_rate_limited_notice(&tx, &holder, window_start).await? {
                    continue;
                }
                let notice = RateLimited {
                    key_id: key.id.clone(),
                    identity_id: key.identity_id.clone(),
                    limited_by,
                    window_start: DateTime::from_timestamp_millis(window_start).unwrap_or_default(),
                    window_seconds: limit.as_secs(),
                    refused: u64::try_from(refused).unwrap_or(0),
                };
                publish_system_event(&tx, SystemEvent::RateLimited(notice)).await?;
            }
            tx.commit(&self.wakeups).await?;
        }
        Ok(())
    }
}

/// The rows `counts` add to the key and org rollups of `granularity`.
fn rollup(
    granularity: Granularity,
    counts: &[&MinuteCount],
    owners: &HashMap<String, (String, Environment)>,
) -> (Vec<KeyBucket>, Vec<OrgBucket>) {
    let mut keys: HashMap<(i64, &str), KeyBucket> = HashMap::new();
    let mut orgs: HashMap<(i64, &str, Environment), OrgBucket> = HashMap::new();
    for count in counts {
        let Some((org, environment)) = owners.get(&count.key_id) else { continue };
        let bucket = granularity.bucket_of(count.minute);
        keys.entry((bucket, &count.key_id))
            .or_insert_with(|| KeyBucket {
                bucket,
                key_id: count.key_id.clone(),
                org_id: org.clone(),
                environment: *environment,
                counts: Counts::default(),
            })
            .counts
            .add(&count.counts);
        orgs.entry((bucket, org, *environment))
            .or_insert_with(|| OrgBucket {
                bucket,
                org_id: org.clone(),
                environment: *environment,
                counts: Counts::default(),
            })
            .counts
            .add(&count.counts);
    }
    (keys.into_values().collect(), orgs.into_values().collect())
}

/// Allowed checks and latest use per key, for `usage_count` / `last_used_at`.
fn uses(counts: &[&MinuteCount]) -> Vec<KeyUse> {
    let mut per_key: HashMap<&str, KeyUse> = HashMap::new();
    for count in counts.iter().filter(|c| c.counts.allowed > 0) {
        let last = count.last_used_at.unwrap_or_else(|| DateTime::from_timestamp(count.minute, 0).unwrap_or_default());
        let entry = per_key.entry(&count.key_id).or_insert_with(|| KeyUse {
            key_id: count.key_id.clone(),
            count: 0,
            last_used_at: last,
        });
        entry.count += count.counts.allowed;
        entry.last_used_at = entry.last_used_at.max(last);
    }
    let mut uses: Vec<KeyUse> = per_key.into_values().collect();
    uses.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    uses
}

/// Counts of the control plane's own checks (VerifyApiKey), applied every
/// flush interval; a report that fails is kept and retried with its id.
pub struct LocalUsage {
    tally: UsageTally,
    recorder: Arc<UsageRecorder>,
    /// Reports not yet applied (oldest first), at most [`MAX_UNAPPLIED`].
    unapplied: Mutex<Vec<UsageReport>>,
}

/// Reports kept while the database is unreachable; older ones are dropped.
const MAX_UNAPPLIED: usize = 100;

impl LocalUsage {
    pub fn new(recorder: Arc<UsageRecorder>) -> Self {
        Self { tally: UsageTally::default(), recorder, unapplied: Mutex::default() }
    }

    /// Counts one check of `key_id`.
    pub fn record(&self, key_id: &str, outcome: Outcome) {
        self.tally.record(key_id, outcome);
    }

    /// Applies what was counted (and earlier failures) until `stop`, then once more.
    pub async fn flush_every(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(interval) => false,
            };
            self.flush().await;
            if stopping {
                return;
            }
        }
    }

    async fn flush(&self) {
        let counts: Vec<MinuteCount> = self.tally.drain().into_iter().map(MinuteCount::from_tally).collect();
        let mut reports =
            std::mem::take(&mut *self.unapplied.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for chunk in counts.chunks(MAX_COUNTS_PER_REPORT) {
            let report_id = Some(crate::crypto::new_id("rpt_"));
            reports.push(UsageReport { report_id, counts: chunk.to_vec() });
        }
        let mut failed = Vec::new();
        for report in reports {
            if let Err(error) = self.recorder.apply(&report).await {
                tracing::warn!(%error, "applying the control plane's own usage counts failed; will retry");
                failed.push(report);
            }
        }
        if failed.len() > MAX_UNAPPLIED {
            let dropped = failed.len() - MAX_UNAPPLIED;
            tracing::warn!(dropped, "usage reports dropped: the database has been unreachable too long");
            failed.drain(..dropped);
        }
        *self.unapplied.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = failed;
    }
}
