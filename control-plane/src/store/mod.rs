//! Database access: SeaORM entities and tenant-scoped queries.
//!
//! Reads take the org explicitly; writes go through an [`OrgTx`], a
//! transaction bound to one org, so no query can forget the tenant.

pub mod api_keys;
pub mod audit;
pub mod audit_actions;
pub mod connections;
pub mod credits;
pub mod deliveries;
pub mod delivery_stats;
pub mod event_types;
pub mod events;
pub mod holders;
pub mod identities;
pub mod imported_keys;
pub mod key_events;
pub mod key_uses;
pub mod leases;
pub mod limits;
pub mod orgs;
pub mod policy;
pub mod portal_links;
pub mod rate_windows;
pub mod roles;
pub mod sealed;
pub mod sessions;
pub mod usage;
pub mod users;
pub mod webhooks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use keyplane_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, QueryFilter, Statement, TransactionTrait,
};

use crate::error::Result;
use crate::wakeups::Wakeups;

/// Which orgs a read may see.
#[derive(Clone, Copy, Debug)]
pub enum OrgScope<'a> {
    /// Only this org.
    Org(&'a str),
    /// Every org: only for platform credentials (verification by a sidecar).
    AllOrgs,
}

/// How long SQLite callers queue for its one connection (its busy timeout too).
const SQLITE_WAIT: Duration = Duration::from_secs(30);

/// Opens the database. SQLite gets one connection (SQLite has one writer;
/// one connection serialises transactions instead of failing them with
/// SQLITE_BUSY), WAL, a busy timeout and case-sensitive LIKE like Postgres.
/// Postgres calls wait at most `timeout` for a connection (see
/// [`crate::availability`] for how a lost database fails faster).
pub async fn connect(url: &str, timeout: Duration) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false);
    if url.starts_with("sqlite:") {
        options
            .connect_timeout(SQLITE_WAIT)
            .acquire_timeout(SQLITE_WAIT)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None::<Duration>)
            .max_lifetime(None::<Duration>)
            .map_sqlx_sqlite_opts(|opts: SqliteConnectOptions| {
                opts.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(SQLITE_WAIT)
                    .foreign_keys(true)
                    .pragma("case_sensitive_like", "ON")
            });
    } else {
        options.connect_timeout(timeout).acquire_timeout(timeout).max_connections(32).min_connections(1);
    }
    Ok(Database::connect(options).await?)
}

/// A Postgres connection of its own for the availability probe, or `None`
/// on SQLite (a local file: nothing to lose on the network).
pub async fn connect_probe(url: &str, timeout: Duration) -> Result<Option<DatabaseConnection>> {
    if url.starts_with("sqlite:") {
        return Ok(None);
    }
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false).acquire_timeout(timeout).max_connections(1).min_connections(1);
    Ok(Some(Database::connect(options).await?))
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<()> {
    Ok(Migrator::up(db, None).await?)
}

/// Undoes the newest `count` applied migrations (all of them if fewer).
pub async fn roll_back(db: &DatabaseConnection, count: u32) -> Result<()> {
    Ok(Migrator::down(db, Some(count)).await?)
}

/// Names of migrations not yet applied.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>> {
    Ok(Migrator::get_pending_migrations(db).await?.iter().map(|m| m.name().to_owned()).collect())
}

/// Names of applied migrations.
pub async fn applied_migrations(db: &DatabaseConnection) -> Result<Vec<String>> {
    Ok(Migrator::get_applied_migrations(db).await?.iter().map(|m| m.name().to_owned()).collect())
}

/// Now, truncated to microseconds (what Postgres keeps), so values hash the
/// same before and after a round trip.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A list of names as stored in a nullable JSON column: NULL for none.
pub fn list_column(list: &[String]) -> Option<serde_json::Value> {
    (!list.is_empty()).then(|| serde_json::json!(list))
}

/// A list stored by [`list_column`].
pub fn list_from_column(column: Option<&serde_json::Value>) -> Vec<String> {
    column.and_then(|json| serde_json::from_value(json.clone()).ok()).unwrap_or_default()
}

/// The string keys (`key`) of up to `limit` rows of `E` matching `filter`:
/// the first half of a batched purge (the caller may delete children first).
async fn batch_keys<E: EntityTrait>(
    db: &impl ConnectionTrait,
    key: E::Column,
    filter: sea_orm::Condition,
    limit: u64,
) -> Result<Vec<String>> {
    use sea_orm::{QueryFilter, QuerySelect};
    Ok(E::find().select_only().column(key).filter(filter).limit(limit).into_tuple().all(db).await?)
}

/// Deletes the rows of `E` whose `key` is one of `keys`; how many.
async fn delete_keys<E: EntityTrait>(db: &impl ConnectionTrait, key: E::Column, keys: Vec<String>) -> Result<u64> {
    use sea_orm::{ColumnTrait, QueryFilter};
    if keys.is_empty() {
        return Ok(0);
    }
    Ok(E::delete_many().filter(key.is_in(keys)).exec(db).await?.rows_affected)
}

/// Deletes up to `limit` rows of `E` matching `filter`, in two statements
/// (SQLite and Postgres alike have no `DELETE … LIMIT`); how many.
async fn delete_batch<E: EntityTrait>(
    db: &impl ConnectionTrait,
    key: E::Column,
    filter: sea_orm::Condition,
    limit: u64,
) -> Result<u64> {
    let keys = batch_keys::<E>(db, key, filter, limit).await?;
    delete_keys::<E>(db, key, keys).await
}

/// Inserts `rows` of `E` in multi-row statements of at most `per_statement`
/// rows each (a statement's bind parameters are limited).
async fn insert_chunked<E: EntityTrait>(
    tx: &OrgTx,
    rows: impl IntoIterator<Item = E::Model>,
    per_statement: usize,
) -> Result<()>
where
    E::Model: sea_orm::IntoActiveModel<E::ActiveModel>,
{
    let mut rows = rows.into_iter().map(sea_orm::IntoActiveModel::into_active_model).peekable();
    while rows.peek().is_some() {
        E::insert_many(rows.by_ref().take(per_statement)).exec_without_returning(tx.conn()).await?;
    }
    Ok(())
}

/// A transaction bound to one org. An audited one (from [`OrgTx::begin`])
/// holds, on Postgres, the org's advisory lock, which serialises the org's
/// audit chain; SQLite already has one writer.
pub struct OrgTx {
    tx: DatabaseTransaction,
    org: String,
    /// Whether it holds the org's chain lock and may append to the audit log.
    audited: bool,
}

impl OrgTx {
    /// Begins a transaction for `org` that may append to its audit chain,
    /// and takes the chain lock first (so every transaction that also
    /// appends key events takes the two locks in the same order). On SQLite
    /// it is IMMEDIATE: it takes the write lock at once (waiting the busy
    /// timeout), where a deferred one that reads before writing fails with
    /// SQLITE_BUSY when another process (a replica on the same file) writes.
    pub async fn begin(db: &DatabaseConnection, org: &str) -> Result<Self> {
        let tx = Self::begin_unaudited(db, org).await?;
        advisory_lock(&tx.tx, &format!("org:{org}")).await?;
        Ok(Self { audited: true, ..tx })
    }

    /// Begins a transaction for `org` that appends nothing to its audit
    /// chain, and so takes no org-wide lock: the data plane's writes (a
    /// publication), which the org's other writers must not queue behind.
    pub async fn begin_unaudited(db: &DatabaseConnection, org: &str) -> Result<Self> {
        let tx = if db.get_database_backend() == DbBackend::Sqlite {
            let immediate = sea_orm::TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            };
            db.begin_with_options(immediate).await?
        } else {
            db.begin().await?
        };
        Ok(Self { tx, org: org.to_owned(), audited: false })
    }

    /// Whether it may append to the org's audit chain.
    pub fn audited(&self) -> bool {
        self.audited
    }

    /// The org every write in this transaction belongs to.
    pub fn org(&self) -> &str {
        &self.org
    }

    /// The underlying connection, for queries.
    pub fn conn(&self) -> &DatabaseTransaction {
        &self.tx
    }

    /// Commits.
    pub async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}

/// Row `id` of `E` in `scope`, by its id and org columns.
async fn find_in<E: EntityTrait>(
    db: &impl ConnectionTrait,
    [id_column, org_column]: [E::Column; 2],
    scope: OrgScope<'_>,
    id: &str,
) -> Result<Option<E::Model>> {
    let mut query = E::find().filter(id_column.eq(id));
    if let OrgScope::Org(org) = scope {
        query = query.filter(org_column.eq(org));
    }
    Ok(query.one(db).await?)
}

/// A transaction that writes what background work acts on at once: key
/// events (the sidecar feed) or due deliveries (the dispatcher). It commits
/// only through [`ChangeTx::commit`], which wakes them; for everything else
/// it is its [`OrgTx`].
pub struct ChangeTx {
    tx: OrgTx,
    key_events: AtomicBool,
    due_deliveries: AtomicBool,
}

impl OrgTx {
    /// This transaction, to write key events or due deliveries in.
    pub fn for_changes(self) -> ChangeTx {
        ChangeTx { tx: self, key_events: AtomicBool::new(false), due_deliveries: AtomicBool::new(false) }
    }
}

impl ChangeTx {
    /// [`OrgTx::begin`] for changes.
    pub async fn begin(db: &DatabaseConnection, org: &str) -> Result<Self> {
        Ok(OrgTx::begin(db, org).await?.for_changes())
    }

    fn wrote_key_events(&self) {
        self.key_events.store(true, Ordering::Relaxed);
    }

    fn wrote_due_deliveries(&self) {
        self.due_deliveries.store(true, Ordering::Relaxed);
    }

    /// Commits, then wakes the feed and the dispatcher for what it wrote.
    pub async fn commit(self, wakeups: &Wakeups) -> Result<()> {
        self.tx.commit().await?;
        if self.due_deliveries.into_inner() {
            wakeups.deliveries_due();
        }
        if self.key_events.into_inner() {
            wakeups.key_events_committed();
        }
        Ok(())
    }
}

impl std::ops::Deref for ChangeTx {
    type Target = OrgTx;

    fn deref(&self) -> &OrgTx {
        &self.tx
    }
}

/// Begins a transaction whose commit does not wait for the WAL to reach
/// disk (Postgres `synchronous_commit = off`; SQLite is unchanged): still
/// atomic and at once visible to every other transaction, but a Postgres
/// crash (not a clean restart) can forget the last few hundred milliseconds
/// of such commits. For the dispatcher's own bookkeeping, whose loss only
/// means a delivery is sent again (at-least-once); never for what a caller
/// is told is stored.
pub async fn begin_relaxed(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    let tx = db.begin().await?;
    if tx.get_database_backend() == DbBackend::Postgres {
        tx.execute_unprepared("SET LOCAL synchronous_commit = off").await?;
    }
    Ok(tx)
}

/// Takes a transaction-scoped Postgres advisory lock named `name` (no-op on SQLite).
async fn advisory_lock(tx: &DatabaseTransaction, name: &str) -> Result<()> {
    if tx.get_database_backend() == DbBackend::Postgres {
        let digest = crate::crypto::sha256(name.as_bytes());
        let key = i64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [key.into()],
        ))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_plans {
    use sea_orm::sea_query::SelectStatement;
    use sea_orm::{ConnectionTrait, DbBackend};

    /// How SQLite would run `select` on a freshly migrated database, which
    /// has no statistics: the `detail` lines of `EXPLAIN QUERY PLAN`.
    pub async fn sqlite_plan(select: &SelectStatement) -> String {
        let db = super::connect("sqlite::memory:", std::time::Duration::from_secs(5)).await.unwrap();
        super::migrate(&db).await.unwrap();
        let mut explain = DbBackend::Sqlite.build(select);
        explain.sql = format!("EXPLAIN QUERY PLAN {}", explain.sql);
        let rows = db.query_all_raw(explain).await.unwrap();
        rows.iter().map(|row| row.try_get::<String>("", "detail").unwrap()).collect::<Vec<_>>().join("\n")
    }
}
