//! Webhook attempt statistics per subscription, by minute, hour and day
//! (`delivery_stats_*`): attempts, successes, failures and a latency
//! histogram, added in the transaction that records the attempts, so a
//! query never scans `webhook_attempts`.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Func, Order, Query, SelectStatement};
use sea_orm::{ConnectionTrait, QueryResult, Value};

use super::usage::{Granularity, upsert_counters};
use crate::error::Result;

/// Upper bounds (exclusive, microseconds) of the latency histogram's
/// buckets, each about 1.58× the previous (five per decade, 1 ms to
/// 63 s); the last bucket holds everything slower.
pub const LATENCY_BOUNDS_MICROS: [i64; 25] = [
    1_000, 1_585, 2_512, 3_981, 6_310, 10_000, 15_849, 25_119, 39_811, 63_096, 100_000, 158_489, 251_189, 398_107,
    630_957, 1_000_000, 1_584_893, 2_511_886, 3_981_072, 6_309_573, 10_000_000, 15_848_932, 25_118_864, 39_810_717,
    63_095_734,
];
/// Histogram buckets: one per bound and one for slower attempts.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MICROS.len() + 1;
const _: () = assert!(LATENCY_BUCKETS == keyplane_migrations::LATENCY_BUCKETS);

/// The histogram bucket of an attempt that took `micros`.
pub fn latency_bucket(micros: i64) -> usize {
    LATENCY_BOUNDS_MICROS.partition_point(|bound| *bound <= micros)
}

/// Attempts to one subscription in one bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptStats {
    pub attempts: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Attempts per latency bucket ([`LATENCY_BOUNDS_MICROS`]).
    pub latencies: [i64; LATENCY_BUCKETS],
}

impl Default for AttemptStats {
    fn default() -> Self {
        Self { attempts: 0, succeeded: 0, failed: 0, latencies: [0; LATENCY_BUCKETS] }
    }
}

impl AttemptStats {
    /// Counts one attempt.
    pub fn record(&mut self, succeeded: bool, latency_micros: i64) {
        self.attempts += 1;
        if succeeded {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        self.latencies[latency_bucket(latency_micros)] += 1;
    }
}

/// One subscription's attempts in one bucket, to add.
#[derive(Clone, Debug)]
pub struct SubscriptionBucket {
    pub bucket: i64,
    pub subscription_id: String,
    pub org_id: String,
    pub stats: AttemptStats,
}

fn counter_columns() -> Vec<String> {
    let mut columns: Vec<String> = ["attempts", "succeeded", "failed"].iter().map(|c| (*c).to_owned()).collect();
    columns.extend((0..LATENCY_BUCKETS).map(|i| format!("latency_{i:02}")));
    columns
}

/// Adds `rows` (sorted here by primary key) to the rollup of `granularity`.
pub async fn add(db: &impl ConnectionTrait, granularity: Granularity, rows: &mut [SubscriptionBucket]) -> Result<()> {
    rows.sort_by(|a, b| (a.bucket, &a.subscription_id).cmp(&(b.bucket, &b.subscription_id)));
    let table = format!("delivery_stats_{}", granularity.suffix());
    let counters = counter_columns();
    // 3 + 3 + 26 values a row.
    for chunk in rows.chunks(500) {
        let values = chunk.iter().map(|row| {
            let mut values: Vec<Value> =
                vec![row.bucket.into(), row.subscription_id.clone().into(), row.org_id.clone().into()];
            values.extend([row.stats.attempts, row.stats.succeeded, row.stats.failed].map(Value::from));
            values.extend(row.stats.latencies.map(Value::from));
            values
        });
        let key = ["bucket", "subscription_id", "org_id"];
        upsert_counters(db, &table, &key, &counters, &["bucket", "subscription_id"], values).await?;
    }
    Ok(())
}

/// Non-empty buckets of `org`'s attempts (one subscription's, or all) in
/// `[start, end)`, oldest first.
pub async fn series(
    db: &impl ConnectionTrait,
    granularity: Granularity,
    org: &str,
    subscription_id: Option<&str>,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, AttemptStats)>> {
    let rows = db.query_all(&series_select(granularity, org, subscription_id, (start, end))).await?;
    rows.iter().map(read_stats).collect()
}

fn series_select(
    granularity: Granularity,
    org: &str,
    subscription_id: Option<&str>,
    (start, end): (i64, i64),
) -> SelectStatement {
    let table = Alias::new(format!("delivery_stats_{}", granularity.suffix()));
    let col = |name: &str| Expr::col((table.clone(), Alias::new(name)));
    let mut select = Query::select();
    select.column((table.clone(), Alias::new("bucket"))).from(table.clone());
    for counter in counter_columns() {
        select.expr_as(Func::sum(col(&counter)).cast_as(Alias::new("BIGINT")), Alias::new(counter.as_str()));
    }
    select.and_where(col("org_id").eq(org)).and_where(col("bucket").gte(start)).and_where(col("bucket").lt(end));
    if let Some(subscription_id) = subscription_id {
        select.and_where(col("subscription_id").eq(subscription_id));
    }
    select.group_by_col((table.clone(), Alias::new("bucket"))).order_by((table, Alias::new("bucket")), Order::Asc);
    select
}

fn read_stats(row: &QueryResult) -> Result<(i64, AttemptStats)> {
    let mut stats = AttemptStats {
        attempts: row.try_get("", "attempts")?,
        succeeded: row.try_get("", "succeeded")?,
        failed: row.try_get("", "failed")?,
        ..AttemptStats::default()
    };
    for (i, slot) in stats.latencies.iter_mut().enumerate() {
        *slot = row.try_get("", &format!("latency_{i:02}"))?;
    }
    Ok((row.try_get("", "bucket")?, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_plans::sqlite_plan;

    /// One subscription's series names its org too; SQLite without
    /// statistics must still read it through the subscription's index
    /// (migration 15), and an org-wide series through the org's.
    #[tokio::test]
    async fn series_use_their_index_on_sqlite_without_statistics() {
        let one = sqlite_plan(&series_select(Granularity::Hour, "org_1", Some("sub_1"), (0, 86_400))).await;
        assert!(one.contains("USING INDEX delivery_stats_hours_subscription_org "), "{one}");
        let org = sqlite_plan(&series_select(Granularity::Hour, "org_1", None, (0, 86_400))).await;
        assert!(org.contains("USING INDEX delivery_stats_hours_org_bucket "), "{org}");
    }

    #[test]
    fn latencies_fall_in_their_buckets() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(999), 0);
        assert_eq!(latency_bucket(1_000), 1);
        assert_eq!(latency_bucket(250_000), 12);
        assert_eq!(latency_bucket(63_095_734), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bucket(i64::MAX), LATENCY_BUCKETS - 1);
    }
}
