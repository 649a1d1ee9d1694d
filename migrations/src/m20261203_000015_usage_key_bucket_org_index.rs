//! The key rollups' org index becomes `(bucket, org_id)`, was `(org_id,
//! bucket)`.
//!
//! Its one reader, TopKeys, asks for an org's rows in a few buckets, which
//! either order serves. But one key's reads (`key_id = ? AND org_id = ? AND
//! bucket` in a range) could also use `(org_id, bucket)`, and SQLite without
//! statistics (any database `ANALYZE` has not seen filled) chose it over
//! `(key_id, bucket)`: one key's 30 days of hours read the whole org's
//! (283 ms for 10,000 keys, against a few ms). With the bucket first, only
//! the key index fits those reads.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: [&str; 3] = ["usage_key_minutes", "usage_key_hours", "usage_key_days"];

fn index(table: &str, suffix: &str, columns: [&str; 2]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(format!("{table}_{suffix}")).table(Alias::new(table));
    for column in columns {
        index.col(Alias::new(column));
    }
    index.to_owned()
}

fn drop(table: &str, suffix: &str) -> IndexDropStatement {
    Index::drop().name(format!("{table}_{suffix}")).table(Alias::new(table)).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            manager.create_index(index(table, "bucket_org", ["bucket", "org_id"])).await?;
            manager.drop_index(drop(table, "org")).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in TABLES {
            manager.create_index(index(table, "org", ["org_id", "bucket"])).await?;
            manager.drop_index(drop(table, "bucket_org")).await?;
        }
        Ok(())
    }
}
