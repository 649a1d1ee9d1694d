//! Usage rollups: checks per key and per org, by minute, hour and day
//! (`usage_key_*`, `usage_org_*`), and the ids of applied usage reports.
//!
//! Rows are added with multi-row upserts (`n = n + excluded.n`), sorted by
//! primary key so concurrent writers lock rows in one order; the cost of a
//! report grows with the keys in it, not with the checks it counts.
//! Buckets are Unix seconds of the bucket's start.

use sea_orm::sea_query::{Alias, BinOper, Expr, ExprTrait, Func, OnConflict, Order, Query, SelectStatement};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Value};

use crate::crypto::Environment;
use crate::error::Result;

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

/// A bucket's counts, as read.
#[derive(Debug, FromQueryResult)]
struct BucketRow {
    bucket: i64,
    allowed: i64,
    unauthorized: i64,
    forbidden: i64,
    rate_limited: i64,
}

impl BucketRow {
    fn split(self) -> (i64, Counts) {
        let counts = Counts {
            allowed: self.allowed,
            unauthorized: self.unauthorized,
            forbidden: self.forbidden,
            rate_limited: self.rate_limited,
        };
        (self.bucket, counts)
    }
}

/// `SUM(column) AS column` for every counter, cast so both databases return a bigint.
fn summed_counters(select: &mut SelectStatement, table: &Alias) {
    for outcome in OUTCOMES {
        select.expr_as(
            Expr::from(Func::coalesce([
                Expr::from(Func::sum(Expr::col((table.clone(), Alias::new(outcome))))),
                Expr::val(0i64),
            ]))
            .cast_as(Alias::new("BIGINT")),
            Alias::new(outcome),
        );
    }
}

/// Non-empty buckets of key `key_id` of `org` in `[start, end)`, oldest first.
pub async fn key_series(
    db: &impl ConnectionTrait,
    granularity: Granularity,
    org: &str,
    key_id: &str,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, Counts)>> {
    read_buckets(db, &key_series_select(granularity, org, key_id, (start, end))).await
}

fn key_series_select(granularity: Granularity, org: &str, key_id: &str, (start, end): (i64, i64)) -> SelectStatement {
    let table = Alias::new(format!("usage_key_{}", granularity.suffix()));
    let mut select = Query::select();
    select.column((table.clone(), Alias::new("bucket"))).from(table.clone());
    for outcome in OUTCOMES {
        select.column((table.clone(), Alias::new(outcome)));
    }
    select
        .and_where(Expr::col((table.clone(), Alias::new("key_id"))).eq(key_id))
        .and_where(Expr::col((table.clone(), Alias::new("org_id"))).eq(org))
        .and_where(Expr::col((table.clone(), Alias::new("bucket"))).gte(start))
        .and_where(Expr::col((table.clone(), Alias::new("bucket"))).lt(end))
        .order_by((table, Alias::new("bucket")), Order::Asc);
    select
}

/// Non-empty buckets of the whole of `org` (one environment or both) in `[start, end)`, oldest first.
pub async fn org_series(
    db: &impl ConnectionTrait,
    granularity: Granularity,
    org: &str,
    environment: Option<Environment>,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, Counts)>> {
    let table = Alias::new(format!("usage_org_{}", granularity.suffix()));
    let bucket = (table.clone(), Alias::new("bucket"));
    let mut select = Query::select();
    select.column(bucket.clone()).from(table.clone());
    summed_counters(&mut select, &table);
    select
        .and_where(Expr::col((table.clone(), Alias::new("org_id"))).eq(org))
        .and_where(Expr::col(bucket.clone()).gte(start))
        .and_where(Expr::col(bucket.clone()).lt(end));
    if let Some(environment) = environment {
        select.and_where(Expr::col((table.clone(), Alias::new("environment"))).eq(environment.as_str()));
    }
    select.group_by_col(bucket.clone()).order_by(bucket, Order::Asc);
    read_buckets(db, &select).await
}

async fn read_buckets(db: &impl ConnectionTrait, select: &SelectStatement) -> Result<Vec<(i64, Counts)>> {
    let rows = BucketRow::find_by_statement(db.get_database_backend().build(select)).all(db).await?;
    Ok(rows.into_iter().map(BucketRow::split).collect())
}

/// What a ranking counts: the checks of one outcome or all, of one
/// environment or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Score {
    /// `None` counts every outcome.
    pub outcome: Option<Outcome>,
    pub environment: Option<Environment>,
}

impl Score {
    /// The counted checks among `counts`.
    pub fn of(&self, counts: &Counts) -> i64 {
        self.outcome.map_or_else(|| counts.total(), |outcome| counts.of(outcome))
    }

    /// The counted checks of a row of `table`, as SQL.
    fn column(&self, table: &Alias) -> Expr {
        let col = |name: &str| Expr::col((table.clone(), Alias::new(name)));
        match self.outcome {
            Some(outcome) => col(OUTCOMES[outcome as usize]),
            None => col(OUTCOMES[0]).add(col(OUTCOMES[1])).add(col(OUTCOMES[2])).add(col(OUTCOMES[3])),
        }
    }
}

/// `score` of each key of `org` with any in each of `buckets`: each bucket
/// with its keys' (id, score), ordered by bucket.
///
/// The database joins each bucket's scores into one text (`score:key_id`
/// separated by spaces, in no order; ids have neither): receiving and
/// decoding a row per key cost about a microsecond per row, twice the
/// database's own time for a bucket of 10,000 keys (BENCHMARKS.md, "TopKeys").
pub async fn key_scores(
    db: &impl ConnectionTrait,
    granularity: Granularity,
    org: &str,
    buckets: &[i64],
    score: Score,
) -> Result<Vec<(i64, Vec<(String, i64)>)>> {
    let table = Alias::new(format!("usage_key_{}", granularity.suffix()));
    let col = |name: &str| Expr::col((table.clone(), Alias::new(name)));
    let aggregate = match db.get_database_backend() {
        DbBackend::Sqlite => "group_concat",
        _ => "string_agg",
    };
    let concat = |left: Expr, right: Expr| left.binary(BinOper::Custom("||"), right);
    let entry = concat(concat(score.column(&table).cast_as(Alias::new("TEXT")), Expr::val(":")), col("key_id"));
    let joined = Func::cust(Alias::new(aggregate)).arg(entry).arg(Expr::val(" "));
    let mut select = Query::select();
    select
        .from(table.clone())
        .expr(col("bucket"))
        .expr(joined)
        .and_where(col("org_id").eq(org))
        .and_where(col("bucket").is_in(buckets.iter().copied()))
        .and_where(score.column(&table).gt(0))
        .group_by_col((table.clone(), Alias::new("bucket")))
        .order_by_expr(col("bucket"), Order::Asc);
    if let Some(environment) = score.environment {
        select.and_where(col("environment").eq(environment.as_str()));
    }
    let mut buckets = Vec::new();
    for row in db.query_all(&select).await? {
        let bucket: i64 = row.try_get_by_index(0)?;
        let joined: String = row.try_get_by_index(1)?;
        let keys = joined.split(' ').map(parse_key_score).collect::<Option<Vec<_>>>();
        let keys = keys.ok_or_else(|| sea_orm::DbErr::Custom(format!("unreadable key scores in bucket {bucket}")))?;
        buckets.push((bucket, keys));
    }
    Ok(buckets)
}

/// `score:key_id` as joined by [`key_scores`].
fn parse_key_score(entry: &str) -> Option<(String, i64)> {
    let (score, key_id) = entry.split_once(':')?;
    Some((key_id.to_owned(), score.parse().ok()?))
}

/// One key's checks over a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCounts {
    pub key_id: String,
    pub environment: Environment,
    pub counts: Counts,
}

/// The checks of each of the keys `ids` of `org` in `[start, end)`, in no order.
pub async fn key_totals(
    db: &impl ConnectionTrait,
    granularity: Granularity,
    org: &str,
    ids: &[&str],
    range: (i64, i64),
) -> Result<Vec<KeyCounts>> {
    let mut keys = Vec::new();
    for row in db.query_all(&key_totals_select(granularity, org, ids, range)).await? {
        let environment: String = row.try_get("", "environment")?;
        keys.push(KeyCounts {
            key_id: row.try_get("", "key_id")?,
            environment: environment.parse().unwrap_or(Environment::Live),
            counts: Counts::from_query_result(&row, "")?,
        });
    }
    Ok(keys)
}

fn key_totals_select(granularity: Granularity, org: &str, ids: &[&str], (start, end): (i64, i64)) -> SelectStatement {
    let table = Alias::new(format!("usage_key_{}", granularity.suffix()));
    let col = |name: &str| Expr::col((table.clone(), Alias::new(name)));
    let mut select = Query::select();
    select.expr(col("key_id")).expr_as(Func::max(col("environment")), Alias::new("environment"));
    summed_counters(&mut select, &table);
    select
        .from(table.clone())
        .and_where(col("key_id").is_in(ids.iter().copied()))
        .and_where(col("org_id").eq(org))
        .and_where(col("bucket").gte(start))
        .and_where(col("bucket").lt(end))
        .group_by_col((table.clone(), Alias::new("key_id")));
    select
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_plans::sqlite_plan;

    #[test]
    fn joined_key_scores_read_back_or_fail() {
        assert_eq!(parse_key_score("42:key_01ab"), Some(("key_01ab".to_owned(), 42)));
        assert_eq!(parse_key_score("key_01ab"), None);
        assert_eq!(parse_key_score("x:key_01ab"), None);
    }

    /// Every one-key read also names the org; SQLite without statistics
    /// must still pick the key's index, not read the org's rows (migration 15).
    #[tokio::test]
    async fn one_keys_reads_use_its_index_on_sqlite_without_statistics() {
        let series = sqlite_plan(&key_series_select(Granularity::Hour, "org_1", "key_1", (0, 86_400))).await;
        assert!(series.contains("USING INDEX usage_key_hours_key "), "{series}");
        let totals = sqlite_plan(&key_totals_select(Granularity::Day, "org_1", &["key_1", "key_2"], (0, 86_400))).await;
        assert!(totals.contains("USING INDEX usage_key_days_key "), "{totals}");
    }
}
