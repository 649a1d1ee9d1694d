//! Reading the usage rollups: one key's or one org's series, the keys
//! ranked by checks, and totals for a page of keys.

use sea_orm::sea_query::{Alias, BinOper, Expr, ExprTrait, Func, Order, Query, SelectStatement};
use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult};

use super::{Counts, Granularity, OUTCOMES, Outcome};
use crate::crypto::Environment;
use crate::error::Result;

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
