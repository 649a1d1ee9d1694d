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
use crate::store::{self, deliveries, events, key_events};

/// Rows deleted per statement.
const PURGE_BATCH: u64 = 1000;

/// Deletes key events older than `retention` every `every`, keeping the
/// newest (it carries the head position); sidecars further behind get a Reset.
pub async fn purge_key_events(db: DatabaseConnection, retention: Duration, every: Duration, stop: CancellationToken) {
    repeat(every, stop, || async {
        let cutoff = store::now() - retention;
        match key_events::delete_before(&db, cutoff).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "compacted the key-event log"),
            Err(error) => tracing::warn!(%error, "key-event retention failed"),
        }
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
        match purge_delivered_before(&db, cutoff).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "purged succeeded webhook deliveries past retention"),
            Err(error) => tracing::warn!(%error, "purging webhook deliveries failed"),
        }
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
            let before = older_than(dedup_window);
            while usage::purge_reports_before(&db, before, PURGE_BATCH).await? == PURGE_BATCH {}
            Ok::<_, crate::Error>(total)
        };
        match purged.await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "purged usage rollups past retention"),
            Err(error) => tracing::warn!(%error, "purging usage rollups failed"),
        }
    })
    .await;
}

/// Marks keys past their expiry `expired` every `every`, in batches.
pub async fn expire_keys(keys: Arc<KeyService>, every: Duration, stop: CancellationToken) {
    repeat(every, stop, || async {
        let mut total = 0;
        let swept = async {
            while keys.expire_due(PURGE_BATCH).await.inspect(|n| total += n)? == PURGE_BATCH {}
            Ok::<_, crate::Error>(())
        };
        match swept.await {
            Ok(()) if total == 0 => {}
            Ok(()) => tracing::info!(count = total, "marked keys past their expiry expired"),
            Err(error) => tracing::warn!(%error, "the expiry sweep failed"),
        }
    })
    .await;
}

/// Refills credits that are due and forgets leases that ended, every `every`.
pub async fn refill_credits(credits: Arc<CreditService>, every: Duration, stop: CancellationToken) {
    repeat(every, stop, || async {
        let mut total = 0;
        let refilled = async {
            while credits.refill_due(PURGE_BATCH).await.inspect(|n| total += n)? == PURGE_BATCH {}
            while credits.purge_ended_leases(PURGE_BATCH).await? == PURGE_BATCH {}
            Ok::<_, crate::Error>(())
        };
        match refilled.await {
            Ok(()) if total == 0 => {}
            Ok(()) => tracing::info!(count = total, "refilled credits"),
            Err(error) => tracing::warn!(%error, "refilling credits failed"),
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
        let mut total = 0;
        let purged = async {
            while keys.delete_ended_before(cutoff, PURGE_BATCH).await.inspect(|n| total += n)? == PURGE_BATCH {}
            Ok::<_, crate::Error>(())
        };
        match purged.await {
            Ok(()) if total == 0 => {}
            Ok(()) => tracing::info!(count = total, "deleted keys ended longer ago than retention"),
            Err(error) => tracing::warn!(%error, "key retention failed"),
        }
    })
    .await;
}

/// Deletes console sessions past their end (idle or absolute), every minute.
pub async fn purge_console_sessions(sessions: std::sync::Arc<super::SessionService>, stop: CancellationToken) {
    repeat(Duration::from_secs(60), stop, || async {
        match sessions.purge_expired().await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "purged ended console sessions"),
            Err(error) => tracing::warn!(%error, "purging console sessions failed"),
        }
    })
    .await;
}

async fn purge_delivered_before(db: &DatabaseConnection, cutoff: chrono::DateTime<chrono::Utc>) -> Result<u64> {
    let mut total = 0;
    loop {
        let purged = deliveries::purge_succeeded(db, cutoff, PURGE_BATCH).await?;
        total += purged;
        if purged < PURGE_BATCH {
            break;
        }
    }
    while events::purge_unreferenced(db, cutoff, PURGE_BATCH).await? == PURGE_BATCH {}
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
