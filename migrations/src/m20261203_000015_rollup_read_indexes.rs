//! Rollup indexes that only fit the reads meant to use them.
//!
//! Every read of one key's or one subscription's rollup also names its org
//! (`key_id = ? AND org_id = ? AND bucket` in a range). SQLite without
//! statistics (any database `ANALYZE` has not seen filled) cannot tell
//! `(org_id, bucket)` from `(key_id, bucket)` for such a read: it chose the
//! org index and read every key's rows of the range (one key's 30 days of
//! hours: 283 ms for an org of 10,000 keys, against 2 ms). So:
//!
//! - the key rollups' org index becomes `(bucket, org_id)`: its one reader,
//!   TopKeys, asks for an org's rows in a few whole buckets, which this
//!   order serves as well, and one key's reads no longer fit it;
//! - the subscription index of delivery stats becomes `(subscription_id,
//!   org_id, bucket)`, and the org index `(org_id, bucket)`, which
//!   org-wide series over a range need, is built again after it (as
//!   `…_org_bucket`): the bundled SQLite still took the org index for one
//!   subscription's reads while it was the older of the two (observed;
//!   unit tests in `store::usage` and `store::delivery_stats` check the
//!   plans of a freshly migrated database).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const GRANULARITIES: [&str; 3] = ["minutes", "hours", "days"];

/// (table, index name suffix, columns) before and after.
type Change = (String, (&'static str, &'static [&'static str]), (&'static str, &'static [&'static str]));

fn changes() -> Vec<Change> {
    let mut changes = Vec::new();
    for granularity in GRANULARITIES {
        changes.push((
            format!("usage_key_{granularity}"),
            ("org", &["org_id", "bucket"][..]),
            ("bucket_org", &["bucket", "org_id"][..]),
        ));
        changes.push((
            format!("delivery_stats_{granularity}"),
            ("subscription", &["subscription_id", "bucket"][..]),
            ("subscription_org", &["subscription_id", "org_id", "bucket"][..]),
        ));
        changes.push((
            format!("delivery_stats_{granularity}"),
            ("org", &["org_id", "bucket"][..]),
            ("org_bucket", &["org_id", "bucket"][..]),
        ));
    }
    changes
}

fn create(table: &str, (suffix, columns): (&str, &[&str])) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(format!("{table}_{suffix}")).table(Alias::new(table));
    for column in columns {
        index.col(Alias::new(*column));
    }
    index.to_owned()
}

fn drop(table: &str, (suffix, _): (&str, &[&str])) -> IndexDropStatement {
    Index::drop().name(format!("{table}_{suffix}")).table(Alias::new(table)).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, before, after) in changes() {
            manager.create_index(create(&table, after)).await?;
            manager.drop_index(drop(&table, before)).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, before, after) in changes() {
            manager.create_index(create(&table, before)).await?;
            manager.drop_index(drop(&table, after)).await?;
        }
        Ok(())
    }
}
