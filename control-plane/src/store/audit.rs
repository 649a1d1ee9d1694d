//! The append-only `audit_events` table and its per-org hash chain.
//!
//! Each row's `hash` is SHA-256 over its fields and the previous row's hash;
//! `seq` numbers the org's rows from 1, so an edited, inserted or deleted row
//! breaks the chain at that point.

use chrono::{DateTime, SecondsFormat, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{Condition, QueryOrder, QuerySelect};
use serde_json::Value;

use super::OrgTx;
pub use super::audit_actions::{AuditAction, TargetType};
use crate::error::Result;

/// An `audit_events` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    /// Event id, `aud_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    /// Position in the org's chain, from 1.
    pub seq: i64,
    /// `root`, `operator`, `system` or `api_key`.
    pub actor_type: String,
    /// `root`, a key id, or the system component.
    pub actor_id: String,
    /// E.g. `api_key.created`.
    pub action: String,
    /// E.g. `api_key`.
    pub target_type: String,
    pub target_id: String,
    pub request_id: String,
    /// Caller's socket address.
    pub peer_address: String,
    pub user_agent: String,
    /// Details (never secrets).
    #[sea_orm(column_type = "JsonBinary")]
    pub metadata: Json,
    pub created_at: DateTime<Utc>,
    /// Previous row's hash ("" for seq 1).
    pub prev_hash: String,
    pub hash: String,
}

impl ActiveModelBehavior for ActiveModel {}

/// What an audit row records; the store adds id, seq, time and hashes.
#[derive(Clone, Debug)]
pub struct NewAuditEvent {
    pub actor_type: String,
    pub actor_id: String,
    /// What was done; it names the kind of target too.
    pub action: AuditAction,
    pub target_id: String,
    pub request_id: String,
    pub peer_address: String,
    pub user_agent: String,
    /// Details (never secrets).
    pub metadata: Value,
}

impl NewAuditEvent {
    /// A row for something Keyplane did by itself (actor type `system`,
    /// actor id the component), with no request behind it.
    pub fn by_system(component: &str, action: AuditAction, target_id: &str, metadata: Value) -> Self {
        Self {
            actor_type: "system".into(),
            actor_id: component.to_owned(),
            action,
            target_id: target_id.to_owned(),
            request_id: String::new(),
            peer_address: String::new(),
            user_agent: String::new(),
            metadata,
        }
    }
}

/// What [`list`] keeps; `None` keeps every row.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub target_id: Option<String>,
    /// At or after.
    pub start_time: Option<DateTime<Utc>>,
    /// Before.
    pub end_time: Option<DateTime<Utc>>,
}

/// Appends a row to the transaction's org chain. The transaction must be
/// audited ([`OrgTx::begin`]): its lock is what keeps two appends from
/// reading the same predecessor.
pub async fn append(tx: &OrgTx, event: NewAuditEvent) -> Result<Model> {
    debug_assert!(tx.audited(), "audit::append in a transaction begun without the org's chain lock");
    let previous =
        Entity::find().filter(Column::OrgId.eq(tx.org())).order_by_desc(Column::Seq).limit(1).one(tx.conn()).await?;
    let (seq, prev_hash) = previous.map_or((1, String::new()), |p| (p.seq + 1, p.hash));
    let mut row = Model {
        id: crate::crypto::new_id("aud_"),
        org_id: tx.org().to_owned(),
        seq,
        actor_type: event.actor_type,
        actor_id: event.actor_id,
        action: event.action.as_str().to_owned(),
        target_type: event.action.target().as_str().to_owned(),
        target_id: event.target_id,
        request_id: event.request_id,
        peer_address: event.peer_address,
        user_agent: event.user_agent,
        metadata: event.metadata,
        created_at: super::now(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = chain_hash(&row);
    Ok(ActiveModel::from(row).insert(tx.conn()).await?)
}

/// The hash a row should have: SHA-256 (hex) of a canonical JSON array of
/// every field except `hash`, `prev_hash` included.
pub fn chain_hash(row: &Model) -> String {
    let fields = serde_json::json!([
        row.prev_hash,
        row.id,
        row.org_id,
        row.seq,
        row.actor_type,
        row.actor_id,
        row.action,
        row.target_type,
        row.target_id,
        row.request_id,
        row.peer_address,
        row.user_agent,
        canonical(&row.metadata),
        row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    ]);
    crate::crypto::hex(&crate::crypto::sha256(fields.to_string().as_bytes()))
}

/// `value` with object keys sorted, so Postgres jsonb (which reorders keys)
/// and SQLite text hash the same.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Up to `limit` rows of `org`, newest first, before seq `before_seq`.
pub async fn list(
    db: &impl ConnectionTrait,
    org: &str,
    filter: &AuditFilter,
    before_seq: Option<i64>,
    limit: u64,
) -> Result<Vec<Model>> {
    let mut condition = Condition::all().add(Column::OrgId.eq(org));
    if let Some(before) = before_seq {
        condition = condition.add(Column::Seq.lt(before));
    }
    if let Some(action) = &filter.action {
        condition = condition.add(Column::Action.eq(action.as_str()));
    }
    if let Some(actor) = &filter.actor_id {
        condition = condition.add(Column::ActorId.eq(actor.as_str()));
    }
    if let Some(target) = &filter.target_id {
        condition = condition.add(Column::TargetId.eq(target.as_str()));
    }
    if let Some(start) = filter.start_time {
        condition = condition.add(Column::CreatedAt.gte(start));
    }
    if let Some(end) = filter.end_time {
        condition = condition.add(Column::CreatedAt.lt(end));
    }
    Ok(Entity::find().filter(condition).order_by_desc(Column::Seq).limit(limit).all(db).await?)
}

/// Up to `limit` rows of `org` with seq greater than `after_seq`, oldest first.
pub async fn chain_page(db: &impl ConnectionTrait, org: &str, after_seq: i64, limit: u64) -> Result<Vec<Model>> {
    Ok(Entity::find()
        .filter(Column::OrgId.eq(org))
        .filter(Column::Seq.gt(after_seq))
        .order_by_asc(Column::Seq)
        .limit(limit)
        .all(db)
        .await?)
}
