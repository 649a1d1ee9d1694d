//! Attempt statistics for usage analytics: each recorded batch of attempts
//! adds, in the same transaction, its counts and latencies to the minute,
//! hour and day rollups of each subscription.

use std::collections::HashMap;

use sea_orm::ConnectionTrait;

use crate::error::Result;
use crate::store::deliveries::{AttemptRecord, NextStep};
use crate::store::delivery_stats::{self, AttemptStats, SubscriptionBucket};
use crate::store::usage::Granularity;

/// Adds the attempts among `records` (deliveries ended without a request
/// are not attempts) to the rollups.
pub async fn record(db: &impl ConnectionTrait, records: &[AttemptRecord]) -> Result<()> {
    for granularity in Granularity::ALL {
        let mut rows = rollup(granularity, records);
        if !rows.is_empty() {
            delivery_stats::add(db, granularity, &mut rows).await?;
        }
    }
    Ok(())
}

fn rollup(granularity: Granularity, records: &[AttemptRecord]) -> Vec<SubscriptionBucket> {
    let mut buckets: HashMap<(i64, &str), SubscriptionBucket> = HashMap::new();
    for record in records.iter().filter(|r| r.number.is_some()) {
        let bucket = granularity.bucket_of(record.started_at.timestamp());
        let row = buckets.entry((bucket, &record.subscription_id)).or_insert_with(|| SubscriptionBucket {
            bucket,
            subscription_id: record.subscription_id.clone(),
            org_id: record.org_id.clone(),
            stats: AttemptStats::default(),
        });
        let succeeded = record.status_code.is_some_and(|code| (200..300).contains(&code));
        debug_assert!(!succeeded || record.next == NextStep::Succeeded);
        row.stats.record(succeeded, record.latency_micros);
    }
    buckets.into_values().collect()
}
