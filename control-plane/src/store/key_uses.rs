//! Use counts and last use of keys, as sidecars and replicas report them
//! (`api_keys.usage_count`, `last_used_at`).

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;

use super::OrgScope;
use crate::error::Result;

/// Uses of one key since the last report.
#[derive(Clone, Debug)]
pub struct KeyUse {
    pub key_id: String,
    pub count: i64,
    pub last_used_at: DateTime<Utc>,
}

/// Adds a batch of use counts (one row per key) in one statement, never
/// moving `last_used_at` backwards. Sidecars are platform credentials, so
/// this spans orgs: callers pass [`OrgScope::AllOrgs`] to say so.
pub async fn record_uses(db: &impl ConnectionTrait, scope: OrgScope<'_>, batch: &[KeyUse]) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let backend = db.get_database_backend();
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(batch.len() * 3 + 1);
    let mut rows = Vec::with_capacity(batch.len());
    let mut placeholder = |value: sea_orm::Value, cast: &str| {
        values.push(value);
        match backend {
            sea_orm::DbBackend::Postgres => format!("${}{cast}", values.len()),
            _ => "?".to_owned(),
        }
    };
    for usage in batch {
        let id = placeholder(usage.key_id.clone().into(), "::text");
        let count = placeholder(usage.count.into(), "::bigint");
        let last = placeholder(usage.last_used_at.into(), "::timestamptz");
        rows.push(format!("({id}, {count}, {last})"));
    }
    let org_filter = match scope {
        OrgScope::Org(org) => format!(" AND api_keys.org_id = {}", placeholder(org.into(), "")),
        OrgScope::AllOrgs => String::new(),
    };
    let sql = format!(
        "WITH used (id, n, last_used) AS (VALUES {}) \
         UPDATE api_keys SET usage_count = api_keys.usage_count + used.n, \
         last_used_at = CASE WHEN api_keys.last_used_at IS NULL OR api_keys.last_used_at < used.last_used \
         THEN used.last_used ELSE api_keys.last_used_at END \
         FROM used WHERE api_keys.id = used.id{org_filter}",
        rows.join(", ")
    );
    let statement = sea_orm::Statement::from_sql_and_values(backend, sql, values);
    Ok(db.execute_raw(statement).await?.rows_affected())
}
