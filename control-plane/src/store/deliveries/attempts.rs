//! The `webhook_attempts` table (every HTTP attempt of a delivery) and
//! the recording of a batch of attempts, which moves their deliveries on.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, DbBackend, QueryOrder, Statement, Value};

use super::DeliveryStatus;
use crate::error::Result;

/// The `webhook_attempts` table.
pub mod attempt {
    use chrono::{DateTime, Utc};
    use sea_orm::entity::prelude::*;

    /// One HTTP attempt.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_attempts")]
    pub struct Model {
        /// Attempt id, `att_…`.
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        /// Delivery it belongs to.
        pub delivery_id: String,
        pub org_id: String,
        /// 1 for the first attempt.
        pub number: i32,
        /// When the request started.
        pub started_at: DateTime<Utc>,
        /// HTTP status, if an answer came.
        pub status_code: Option<i32>,
        /// Time to the answer or the error.
        pub latency_micros: i64,
        /// Why it failed.
        pub error: Option<String>,
        /// First 4 KiB of the response body.
        pub response_excerpt: Option<String>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// Every attempt of delivery `id` of `org`, oldest first.
pub async fn attempts(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Vec<attempt::Model>> {
    Ok(attempt::Entity::find()
        .filter(attempt::Column::DeliveryId.eq(id))
        .filter(attempt::Column::OrgId.eq(org))
        .order_by_asc(attempt::Column::Number)
        .all(db)
        .await?)
}

/// What happens to a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Done: it was delivered.
    Succeeded,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Dead-lettered.
    Failed,
}

/// The result of one attempt of a claimed delivery.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub delivery_id: String,
    pub org_id: String,
    pub subscription_id: String,
    /// The delivered event's type (operational notices are not sent about
    /// deliveries of operational notices).
    pub event_type: String,
    /// When the subscription's run of failures began, as read when the
    /// delivery was claimed (`None`: it was not failing).
    pub failing_since: Option<DateTime<Utc>>,
    /// Attempt number (1 for the first); `None` when the delivery ended
    /// without a request (its subscription is gone or disabled).
    pub number: Option<i32>,
    /// When the request started.
    pub started_at: DateTime<Utc>,
    /// HTTP status, if an answer came.
    pub status_code: Option<i32>,
    /// Time to the answer or the error, in microseconds.
    pub latency_micros: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// First 4 KiB of the response body.
    pub response_excerpt: Option<String>,
    /// What happens next.
    pub next: NextStep,
}

/// Records per statement at most (8 bound values a record; SQLite allows 32,766).
const RECORDS_PER_STATEMENT: usize = 512;

/// Stores a batch of attempts and moves their deliveries on, in two
/// statements per [`RECORDS_PER_STATEMENT`] records: one multi-row insert
/// of the attempts and one `UPDATE … FROM` a `VALUES` list of outcomes.
/// A delivery no longer pending (retried or dead-lettered meanwhile by an
/// operator) keeps its state; its attempt is still stored.
pub async fn record_attempts(db: &impl ConnectionTrait, records: &[AttemptRecord]) -> Result<()> {
    let now = crate::store::now();
    for chunk in records.chunks(RECORDS_PER_STATEMENT) {
        let attempts: Vec<attempt::ActiveModel> = chunk
            .iter()
            .filter_map(|record| {
                Some(attempt::ActiveModel {
                    id: Set(crate::crypto::new_id("att_")),
                    delivery_id: Set(record.delivery_id.clone()),
                    org_id: Set(record.org_id.clone()),
                    number: Set(record.number?),
                    started_at: Set(record.started_at),
                    status_code: Set(record.status_code),
                    latency_micros: Set(record.latency_micros),
                    error: Set(record.error.clone()),
                    response_excerpt: Set(record.response_excerpt.clone()),
                })
            })
            .collect();
        if !attempts.is_empty() {
            attempt::Entity::insert_many(attempts).exec_without_returning(db).await?;
        }
        db.execute_raw(move_on(db.get_database_backend(), chunk, now)).await?;
    }
    Ok(())
}

/// The `UPDATE` that moves each delivery of `records` on. Postgres needs
/// the types of the `VALUES` columns spelled out; SQLite has none to spell.
fn move_on(backend: DbBackend, records: &[AttemptRecord], now: DateTime<Utc>) -> Statement {
    let mut values: Vec<Value> = Vec::with_capacity(records.len() * 8);
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let (status, next_attempt_at, finished_at) = match record.next {
            NextStep::Succeeded => (DeliveryStatus::Succeeded, None, Some(now)),
            NextStep::Failed => (DeliveryStatus::Failed, None, Some(now)),
            NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at), None),
        };
        let row: [(Value, &str); 8] = [
            (record.delivery_id.clone().into(), "text"),
            (record.org_id.clone().into(), "text"),
            (status.as_str().into(), "text"),
            (record.number.into(), "integer"),
            (next_attempt_at.into(), "timestamptz"),
            (record.status_code.into(), "integer"),
            (record.error.clone().into(), "text"),
            (finished_at.into(), "timestamptz"),
        ];
        let placeholders: Vec<String> = row
            .into_iter()
            .map(|(value, pg_type)| {
                values.push(value);
                match backend {
                    DbBackend::Postgres => format!("${}::{pg_type}", values.len()),
                    _ => "?".to_owned(),
                }
            })
            .collect();
        rows.push(format!("({})", placeholders.join(", ")));
    }
    let sql = format!(
        "WITH outcome (id, org_id, status, attempt_count, next_attempt_at, last_status_code, last_error, finished_at) \
         AS (VALUES {}) \
         UPDATE webhook_deliveries SET status = outcome.status, \
         attempt_count = COALESCE(outcome.attempt_count, webhook_deliveries.attempt_count), \
         next_attempt_at = COALESCE(outcome.next_attempt_at, webhook_deliveries.next_attempt_at), \
         last_status_code = outcome.last_status_code, last_error = outcome.last_error, \
         finished_at = outcome.finished_at \
         FROM outcome WHERE webhook_deliveries.id = outcome.id AND webhook_deliveries.org_id = outcome.org_id \
         AND webhook_deliveries.status = 'pending'",
        rows.join(", ")
    );
    Statement::from_sql_and_values(backend, sql, values)
}
