//! Usage analytics: check counts per key and per org, and webhook attempt
//! statistics per subscription, rolled up by minute, hour and day; and the
//! ids of applied usage reports, so a retried report is not counted twice.
//!
//! Buckets are Unix seconds of the bucket's start (UTC), first in every
//! primary key: writes and time-range reads touch one contiguous range.
//! Attempt latencies are a histogram of `LATENCY_BUCKETS` columns
//! `latency_00`… (the store knows their bounds).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Suffixes of the three rollups.
const GRANULARITIES: [&str; 3] = ["minutes", "hours", "days"];
/// Histogram columns of attempt latency.
pub const LATENCY_BUCKETS: usize = 26;
const OUTCOMES: [&str; 4] = ["allowed", "unauthorized", "forbidden", "rate_limited"];

fn name(text: &str) -> Alias {
    Alias::new(text)
}

fn counter(column: &str) -> ColumnDef {
    big_integer(name(column)).default(0).to_owned()
}

fn index(table: &str, suffix: &str, columns: &[&str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(format!("{table}_{suffix}")).table(name(table));
    for column in columns {
        index.col(name(column));
    }
    index.to_owned()
}

fn tables() -> Vec<(String, TableCreateStatement, Vec<IndexCreateStatement>)> {
    let mut tables = Vec::new();
    for granularity in GRANULARITIES {
        let keys = format!("usage_key_{granularity}");
        let mut table = Table::create();
        table
            .table(name(&keys))
            .col(big_integer(name("bucket")))
            .col(string(name("key_id")))
            .col(string(name("org_id")))
            .col(string(name("environment")));
        for outcome in OUTCOMES {
            table.col(counter(outcome));
        }
        table.primary_key(Index::create().col(name("bucket")).col(name("key_id")));
        let indexes = vec![index(&keys, "key", &["key_id", "bucket"]), index(&keys, "org", &["org_id", "bucket"])];
        tables.push((keys, table.to_owned(), indexes));

        let orgs = format!("usage_org_{granularity}");
        let mut table = Table::create();
        table
            .table(name(&orgs))
            .col(big_integer(name("bucket")))
            .col(string(name("org_id")))
            .col(string(name("environment")));
        for outcome in OUTCOMES {
            table.col(counter(outcome));
        }
        table.primary_key(Index::create().col(name("bucket")).col(name("org_id")).col(name("environment")));
        let indexes = vec![index(&orgs, "org", &["org_id", "bucket"])];
        tables.push((orgs, table.to_owned(), indexes));

        let deliveries = format!("delivery_stats_{granularity}");
        let mut table = Table::create();
        table
            .table(name(&deliveries))
            .col(big_integer(name("bucket")))
            .col(string(name("subscription_id")))
            .col(string(name("org_id")))
            .col(counter("attempts"))
            .col(counter("succeeded"))
            .col(counter("failed"));
        for i in 0..LATENCY_BUCKETS {
            table.col(counter(&format!("latency_{i:02}")));
        }
        table.primary_key(Index::create().col(name("bucket")).col(name("subscription_id")));
        let indexes = vec![
            index(&deliveries, "subscription", &["subscription_id", "bucket"]),
            index(&deliveries, "org", &["org_id", "bucket"]),
        ];
        tables.push((deliveries, table.to_owned(), indexes));
    }
    let reports = Table::create()
        .table(name("usage_reports"))
        .col(string(name("report_id")).primary_key())
        .col(big_integer(name("received_at")))
        .to_owned();
    tables.push(("usage_reports".to_owned(), reports, vec![index("usage_reports", "received", &["received_at"])]));
    tables
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let postgres = manager.get_database_backend() == sea_orm::DbBackend::Postgres;
        for (name, table, indexes) in tables() {
            manager.create_table(table).await?;
            for index in indexes {
                manager.create_index(index).await?;
            }
            // Rollup rows are updated in place again and again: room on each
            // page lets Postgres do it without touching the indexes (HOT).
            if postgres && name != "usage_reports" {
                let sql = format!("ALTER TABLE {name} SET (fillfactor = 70)");
                manager.get_connection().execute_unprepared(&sql).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, _, _) in tables().into_iter().rev() {
            manager.drop_table(Table::drop().table(Alias::new(name)).to_owned()).await?;
        }
        Ok(())
    }
}
