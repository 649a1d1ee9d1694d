//! Retention: background purges of what is kept only for a while, each
//! named for what it removes. Every purge runs in bounded batches.

use std::future::Future;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
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
