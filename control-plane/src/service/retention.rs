//! Retention: background purges of what is kept only for a while, each
//! named for what it removes. Every purge runs in bounded batches.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use super::usage::Retention;
use super::{CreditService, KeyService};
use crate::error::Result;
use crate::store::usage::{self, Granularity};
use crate::store::{self, deliveries, key_events};

/// Rows deleted per statement.
const PURGE_BATCH: u64 = 1000;

/// Deletes key events older than `retention` every `every`, keeping the
/// newest (it carries the head position); sidecars further behind get a Reset.
pub async fn purge_key_events(db: DatabaseConnection, retention: Duration, every: Duration, stop: CancellationToken) {
    repeat(every, stop, || async {
        let cutoff = store::now() - retention;
        log_outcome(
            key_events::delete_before(&db, cutoff).await,
            "compacted the key-event log",
            "key-event retention failed",
        );
    })
    .await;
}

/// Deletes succeeded deliveries (with their attempts) that finished more
/// than `retention` ago, and events no delivery refers to any more, every
/// `retention / 2` (at most a minute). Failed deliveries stay until retried
/// or their subscription is deleted.
pub async fn purge_delivered_webhooks(db: DatabaseConnection, retention: Duration, stop: CancellationToken) {
    let every = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    repeat(every, stop, || async {
        let cutoff = store::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let purged = purge_delivered_before(&db, cutoff).await;
        log_outcome(purged, "purged succeeded webhook deliveries past retention", "purging webhook deliveries failed");
    })
    .await;
}

/// Deletes usage and delivery-stats rollups older than their retention,
/// and usage-report ids older than the deduplication window, every minute.
pub async fn purge_usage_rollups(
    db: DatabaseConnection,
    retention: Retention,
    dedup_window: Duration,
    stop: CancellationToken,
) {
    repeat(Duration::from_secs(60), stop, || async {
        let now = store::now().timestamp();
        let older_than = |kept: Duration| now - i64::try_from(kept.as_secs()).unwrap_or(i64::MAX);
        let purged = async {
            let mut total = 0;
            for granularity in Granularity::ALL {
                let before = older_than(retention.of(granularity));
                while usage::purge_before(&db, granularity, before, PURGE_BATCH).await.inspect(|n| total += n)? > 0 {}
            }
            drain(|| usage::purge_reports_before(&db, older_than(dedup_window), PURGE_BATCH)).await?;
            Ok::<_, crate::Error>(total)
        };
        log_outcome(purged.await, "purged usage rollups past retention", "purging usage rollups failed");
    })
    .await;
}

/// Marks keys past their expiry `expired` every `every`, in batches, and
/// announces keys expiring within `expiring_notice`, when set.
pub async fn expire_keys(
    keys: Arc<KeyService>,
    every: Duration,
    expiring_notice: Option<Duration>,
    stop: CancellationToken,
) {
    repeat(every, stop, || async {
        if let Some(lead) = expiring_notice {
            let announced = drain(|| keys.announce_expiring(lead, PURGE_BATCH)).await;
            log_outcome(announced, "announced keys about to expire", "announcing keys about to expire failed");
        }
        let swept = drain(|| keys.expire_due(PURGE_BATCH)).await;
        log_outcome(swept, "marked keys past their expiry expired", "the expiry sweep failed");
        if let Err(error) = keys.count_legacy_hashes().await {
            tracing::warn!(%error, "counting keys on imported hashes failed");
        }
    })
    .await;
}

/// Refills credits that are due and forgets leases that ended, every `every`.
pub async fn refill_credits(credits: Arc<CreditService>, every: Duration, stop: CancellationToken) {
    repeat(every, stop, || async {
        let refilled = drain(|| credits.refill_due(PURGE_BATCH)).await;
        log_outcome(refilled, "refilled credits", "refilling credits failed");
        if let Err(error) = drain(|| credits.purge_ended_leases(PURGE_BATCH)).await {
            tracing::warn!(%error, "forgetting ended credit leases failed");
        }
        if let Err(error) = credits.purge_old_windows().await {
            tracing::warn!(%error, "forgetting old rate-limit windows failed");
        }
    })
    .await;
}

/// Deletes keys that ended (expired or revoked) more than `retention` ago,
/// every `retention / 2` (at most a minute).
pub async fn purge_ended_keys(keys: Arc<KeyService>, retention: Duration, stop: CancellationToken) {
    let every = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    repeat(every, stop, || async {
        let cutoff = store::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let purged = drain(|| keys.delete_ended_before(cutoff, PURGE_BATCH)).await;
        log_outcome(purged, "deleted keys ended longer ago than retention", "key retention failed");
    })
    .await;
}

/// Runs `batch` until it handles less than a full batch; how many in all.
async fn drain<F: Future<Output = Result<u64>>>(mut batch: impl FnMut() -> F) -> Result<u64> {
    let mut total = 0;
    loop {
        let handled = batch().await?;
        total += handled;
        if handled < PURGE_BATCH {
            return Ok(total);
        }
    }
}

/// Logs what a periodic job did (nothing when it had nothing to do).
fn log_outcome(outcome: Result<u64>, done: &str, failed: &str) {
    match outcome {
        Ok(0) => {}
        Ok(count) => tracing::info!(count, "{done}"),
        Err(error) => tracing::warn!(%error, "{failed}"),
    }
}

/// Deletes console sessions past their end (idle or absolute), every minute.
pub async fn purge_console_sessions(
    sessions: std::sync::Arc<super::SessionService>,
    users: std::sync::Arc<super::UserService>,
    stop: CancellationToken,
) {
    repeat(Duration::from_secs(60), stop, || async {
        match sessions.purge_expired().await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "purged ended console sessions"),
            Err(error) => tracing::warn!(%error, "purging console sessions failed"),
        }
        if let Err(error) = users.purge_expired().await {
            tracing::warn!(%error, "purging unfinished single sign-ons failed");
        }
    })
    .await;
}

async fn purge_delivered_before(db: &DatabaseConnection, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64> {
    let total = drain(|| deliveries::purge_succeeded(db, cutoff, PURGE_BATCH)).await?;
    drain(|| deliveries::purge_unreferenced_events(db, cutoff, PURGE_BATCH)).await?;
    Ok(total)
}

/// Runs `job` every `period` until `stop` is cancelled (a job under way finishes first).
async fn repeat<F: Future<Output = ()>>(period: Duration, stop: CancellationToken, mut job: impl FnMut() -> F) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => job().await,
        }
    }
}
