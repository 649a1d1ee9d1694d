//! Usage rollups: checks per key and per org, by minute, hour and day
//! (`usage_key_*`, `usage_org_*`), and the ids of applied usage reports.
//!
//! Rows are added with multi-row upserts (`n = n + excluded.n`), sorted by
//! primary key so concurrent writers lock rows in one order; the cost of a
//! report grows with the keys in it, not with the checks it counts.
//! Buckets are Unix seconds of the bucket's start. Reading them is `reads.rs`.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Value};

use crate::crypto::Environment;
use crate::error::Result;

mod reads;

pub use reads::{KeyCounts, Score, key_scores, key_series, key_totals, org_series};

/// Rows per INSERT statement (9 values each: well under both databases' parameter limits).
const ROWS_PER_STATEMENT: usize = 1000;
/// The counter columns, in [`Counts`] and [`Outcome`] order.
const OUTCOMES: [&str; 4] = ["allowed", "unauthorized", "forbidden", "rate_limited"];

/// Width of a rollup bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Self; 3] = [Self::Minute, Self::Hour, Self::Day];

    /// Bucket width in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    /// The bucket holding `unix_seconds`.
    pub fn bucket_of(self, unix_seconds: i64) -> i64 {
        unix_seconds - unix_seconds.rem_euclid(self.seconds())
    }

    /// Table-name suffix.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Self::Minute => "minutes",
            Self::Hour => "hours",
            Self::Day => "days",
        }
    }
}

/// Checks per outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromQueryResult)]
pub struct Counts {
    pub allowed: i64,
    pub unauthorized: i64,
    pub forbidden: i64,
    pub rate_limited: i64,
}

impl Counts {
    pub fn total(&self) -> i64 {
        self.allowed + self.unauthorized + self.forbidden + self.rate_limited
    }

    pub fn add(&mut self, other: &Counts) {
        self.allowed += other.allowed;
        self.unauthorized += other.unauthorized;
        self.forbidden += other.forbidden;
        self.rate_limited += other.rate_limited;
    }

    /// The checks that ended in `outcome`.
    pub fn of(&self, outcome: Outcome) -> i64 {
        match outcome {
            Outcome::Allowed => self.allowed,
            Outcome::Unauthorized => self.unauthorized,
            Outcome::Forbidden => self.forbidden,
            Outcome::RateLimited => self.rate_limited,
        }
    }

    fn values(&self) -> [i64; 4] {
        [self.allowed, self.unauthorized, self.forbidden, self.rate_limited]
    }
}

/// Which outcome a ranking orders by (the one check outcomes are counted
/// by); `None` orders by the total.
pub use keyplane_proto::usage::Outcome;

/// One key's checks in one bucket, to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBucket {
    pub bucket: i64,
    pub key_id: String,
    pub org_id: String,
    pub environment: Environment,
    pub counts: Counts,
}

/// One org's checks in one bucket for one environment, to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgBucket {
    pub bucket: i64,
    pub org_id: String,
    pub environment: Environment,
    pub counts: Counts,
}

/// Records report `report_id` as applied at `now`; false if it already was.
pub async fn claim_report(db: &impl ConnectionTrait, report_id: &str, now: i64) -> Result<bool> {
    let insert = Query::insert()
        .into_table(Alias::new("usage_reports"))
        .columns([Alias::new("report_id"), Alias::new("received_at")])
        .values([report_id.into(), now.into()])
        .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?
        .on_conflict(OnConflict::column(Alias::new("report_id")).do_nothing().to_owned())
        .to_owned();
    Ok(db.execute(&insert).await?.rows_affected() == 1)
}

/// Adds `rows` (sorted here by bucket and key) to the key rollup of `granularity`.
pub async fn add_key_buckets(
    db: &impl ConnectionTrait,
    granularity: Granularity,
    rows: &mut [KeyBucket],
) -> Result<()> {
    rows.sort_by(|a, b| (a.bucket, &a.key_id).cmp(&(b.bucket, &b.key_id)));
    let table = format!("usage_key_{}", granularity.suffix());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = chunk.iter().map(|row| {
            let mut values: Vec<Value> = vec![
                row.bucket.into(),
                row.key_id.clone().into(),
                row.org_id.clone().into(),
                row.environment.as_str().into(),
            ];
            values.extend(row.counts.values().map(Value::from));
            values
        });
        upsert(db, &table, &["bucket", "key_id", "org_id", "environment"], &["bucket", "key_id"], values).await?;
    }
    Ok(())
}

/// Adds `rows` (sorted here by primary key) to the org rollup of `granularity`.
pub async fn add_org_buckets(
    db: &impl ConnectionTrait,
    granularity: Granularity,
    rows: &mut [OrgBucket],
) -> Result<()> {
    rows.sort_by(|a, b| {
        (a.bucket, &a.org_id, a.environment.as_str()).cmp(&(b.bucket, &b.org_id, b.environment.as_str()))
    });
    let table = format!("usage_org_{}", granularity.suffix());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let values = chunk.iter().map(|row| {
            let mut values: Vec<Value> =
                vec![row.bucket.into(), row.org_id.clone().into(), row.environment.as_str().into()];
            values.extend(row.counts.values().map(Value::from));
            values
        });
        let key = ["bucket", "org_id", "environment"];
        upsert(db, &table, &key, &key, values).await?;
    }
    Ok(())
}

/// `INSERT INTO table (key columns…, counters…) VALUES … ON CONFLICT
/// (conflict) DO UPDATE SET counter = counter + excluded.counter`.
pub(crate) async fn upsert_counters(
    db: &impl ConnectionTrait,
    table: &str,
    key_columns: &[&str],
    counters: &[String],
    conflict: &[&str],
    rows: impl Iterator<Item = Vec<Value>>,
) -> Result<()> {
    let table_name = Alias::new(table);
    let mut insert = Query::insert();
    insert
        .into_table(table_name.clone())
        .columns(key_columns.iter().map(|c| Alias::new(*c)).chain(counters.iter().map(|c| Alias::new(c.as_str()))));
    let mut any = false;
    for values in rows {
        insert.values(values.into_iter().map(Into::into)).map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
        any = true;
    }
    if !any {
        return Ok(());
    }
    let mut on_conflict = OnConflict::columns(conflict.iter().map(|c| Alias::new(*c)));
    for counter in counters {
        // `excluded` must stay unquoted: SQLite reads "excluded" as a table name.
        let added = Expr::col((table_name.clone(), Alias::new(counter.as_str())))
            .add(Expr::cust(format!("excluded.{counter}")));
        on_conflict.value(Alias::new(counter.as_str()), added);
    }
    insert.on_conflict(on_conflict);
    db.execute(&insert).await?;
    Ok(())
}

async fn upsert(
    db: &impl ConnectionTrait,
    table: &str,
    key_columns: &[&str],
    conflict: &[&str],
    rows: impl Iterator<Item = Vec<Value>>,
) -> Result<()> {
    let counters: Vec<String> = OUTCOMES.iter().map(|c| (*c).to_owned()).collect();
    upsert_counters(db, table, key_columns, &counters, conflict, rows).await
}

/// Deletes up to `limit` rows older than `before` from the key and org
/// rollups of `granularity`; returns how many.
pub async fn purge_before(db: &impl ConnectionTrait, granularity: Granularity, before: i64, limit: u64) -> Result<u64> {
    let mut deleted = 0;
    for prefix in ["usage_key", "usage_org", "delivery_stats"] {
        deleted += purge_table(db, &format!("{prefix}_{}", granularity.suffix()), "bucket", before, limit).await?;
    }
    Ok(deleted)
}

/// Deletes up to `limit` report ids received before `before`.
pub async fn purge_reports_before(db: &impl ConnectionTrait, before: i64, limit: u64) -> Result<u64> {
    purge_table(db, "usage_reports", "received_at", before, limit).await
}

/// Deletes up to `limit` rows of `table` whose `column` is before `before`,
/// oldest first (a bounded batch on both databases).
async fn purge_table(db: &impl ConnectionTrait, table: &str, column: &str, before: i64, limit: u64) -> Result<u64> {
    let backend = db.get_database_backend();
    // Both databases have a rowid-like handle for "these rows": ctid on
    // Postgres, rowid on SQLite.
    let handle = if backend == DbBackend::Postgres { "ctid" } else { "rowid" };
    let sql = format!(
        "DELETE FROM {table} WHERE {handle} IN (SELECT {handle} FROM {table} WHERE {column} < {before} ORDER BY {column} LIMIT {limit})"
    );
    Ok(db.execute_unprepared(&sql).await?.rows_affected())
}
