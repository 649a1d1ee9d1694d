//! The `webhook_subscriptions` table and its org-scoped queries.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, IntoActiveModel, QueryOrder, QuerySelect};
use serde::Serialize;

use super::OrgTx;
use crate::crypto::signing::legacy::SignatureScheme;
use crate::error::Result;

/// A webhook subscription. `sealed_secrets` holds the signing secrets sealed
/// with the master key (row id as associated data); it never leaves the service layer.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_subscriptions")]
pub struct Model {
    /// Subscription id, `sub_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    pub url: String,
    /// JSON array of event types and patterns.
    #[sea_orm(column_type = "JsonBinary")]
    pub event_types: Json,
    pub description: String,
    pub status: SubscriptionStatus,
    pub disabled_reason: Option<String>,
    /// Deliveries per second at most; 0 means no limit.
    pub rate_limit_per_second: i32,
    /// Sealed JSON list of signing secrets with their expiry.
    pub sealed_secrets: String,
    /// Start of the current run of failed attempts.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A [`SignatureScheme`] as JSON; null means Standard Webhooks only.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub signature_scheme: Option<Json>,
    /// JSON array of the channels it listens to; NULL: every channel.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub channels: Option<Json>,
    /// Sealed delivery options (headers, client certificate and key, CA
    /// bundle; `<id>:options` as associated data); never leaves the service layer.
    pub sealed_options: Option<String>,
    /// The endpoint's own request timeout.
    pub timeout_ms: Option<i32>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Whether a subscription receives deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Receives deliveries.
    #[sea_orm(string_value = "active")]
    Active,
    /// Turned off by its owner or by the dispatcher (see `disabled_reason`).
    #[sea_orm(string_value = "disabled")]
    Disabled,
    /// Its host is outside the operator's allow-list: waits for an admin.
    #[sea_orm(string_value = "pending_approval")]
    PendingApproval,
}

impl SubscriptionStatus {
    /// The stored name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::PendingApproval => "pending_approval",
        }
    }
}

/// A subscription about to be stored; org and timestamps are the store's.
#[derive(Debug)]
pub struct NewSubscriptionRow {
    pub id: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub status: SubscriptionStatus,
    pub rate_limit_per_second: i32,
    pub sealed_secrets: String,
    pub signature_scheme: SignatureScheme,
    pub channels: Vec<String>,
    pub sealed_options: Option<String>,
    pub timeout_ms: Option<i32>,
}

/// Column changes of [`update`]; `None` leaves a column alone, and for the
/// nullable ones `Some(None)` clears it.
#[derive(Debug, Default)]
pub struct SubscriptionUpdate {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub status: Option<SubscriptionStatus>,
    pub disabled_reason: Option<Option<String>>,
    pub failing_since: Option<Option<DateTime<Utc>>>,
    pub rate_limit_per_second: Option<i32>,
    pub sealed_secrets: Option<String>,
    pub signature_scheme: Option<SignatureScheme>,
    pub channels: Option<Vec<String>>,
    /// Sealed options and timeout, set together.
    pub options: Option<(Option<String>, Option<i32>)>,
}

/// The stored form of a scheme: null for the default.
fn scheme_column(scheme: &SignatureScheme) -> Option<Json> {
    (*scheme != SignatureScheme::StandardWebhooks).then(|| serde_json::to_value(scheme).unwrap_or_default())
}

impl Model {
    /// The subscription's event types and patterns.
    pub fn event_type_list(&self) -> Vec<String> {
        serde_json::from_value(self.event_types.clone()).unwrap_or_default()
    }

    /// The channels it listens to; empty: every channel.
    pub fn channel_list(&self) -> Vec<String> {
        super::list_from_column(self.channels.as_ref())
    }

    /// Whether its deliveries need more than the shared client and no headers.
    pub fn has_options(&self) -> bool {
        self.sealed_options.is_some() || self.timeout_ms.is_some()
    }

    /// How its deliveries are signed. Only [`insert`] and [`update`] write
    /// the column, from a checked scheme.
    pub fn signature_scheme(&self) -> SignatureScheme {
        self.signature_scheme.clone().and_then(|json| serde_json::from_value(json).ok()).unwrap_or_default()
    }
}

/// Stores a new subscription in the transaction's org.
pub async fn insert(tx: &OrgTx, new: NewSubscriptionRow) -> Result<Model> {
    let now = super::now();
    let row = ActiveModel {
        id: Set(new.id),
        org_id: Set(tx.org().to_owned()),
        url: Set(new.url),
        event_types: Set(serde_json::json!(new.event_types)),
        description: Set(new.description),
        status: Set(new.status),
        disabled_reason: Set(None),
        rate_limit_per_second: Set(new.rate_limit_per_second),
        sealed_secrets: Set(new.sealed_secrets),
        failing_since: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
        signature_scheme: Set(scheme_column(&new.signature_scheme)),
        channels: Set(super::list_column(&new.channels)),
        sealed_options: Set(new.sealed_options),
        timeout_ms: Set(new.timeout_ms),
    };
    Ok(row.insert(tx.conn()).await?)
}

/// Subscription `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id.to_owned()).filter(Column::OrgId.eq(org)).one(db).await?)
}

/// Up to `limit` subscriptions of `org` after `after_id`, in creation order.
pub async fn list(db: &impl ConnectionTrait, org: &str, after_id: Option<&str>, limit: u64) -> Result<Vec<Model>> {
    let mut query = Entity::find().filter(Column::OrgId.eq(org));
    if let Some(after) = after_id {
        query = query.filter(Column::Id.gt(after));
    }
    Ok(query.order_by_asc(Column::Id).limit(limit).all(db).await?)
}

/// How many subscriptions `org` has.
pub async fn count(db: &impl ConnectionTrait, org: &str) -> Result<u64> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).count(db).await?)
}

/// Active subscriptions of `org` (at most the per-org limit).
pub async fn active(db: &impl ConnectionTrait, org: &str) -> Result<Vec<Model>> {
    Ok(Entity::find()
        .filter(Column::OrgId.eq(org))
        .filter(Column::Status.eq(SubscriptionStatus::Active))
        .all(db)
        .await?)
}

/// Applies `changes` to `subscription`, loaded in the transaction's org.
pub async fn update(tx: &OrgTx, subscription: Model, changes: SubscriptionUpdate) -> Result<Model> {
    let mut row = subscription.into_active_model();
    if let Some(url) = changes.url {
        row.url = Set(url);
    }
    if let Some(event_types) = changes.event_types {
        row.event_types = Set(serde_json::json!(event_types));
    }
    if let Some(description) = changes.description {
        row.description = Set(description);
    }
    if let Some(status) = changes.status {
        row.status = Set(status);
    }
    if let Some(reason) = changes.disabled_reason {
        row.disabled_reason = Set(reason);
    }
    if let Some(since) = changes.failing_since {
        row.failing_since = Set(since);
    }
    if let Some(limit) = changes.rate_limit_per_second {
        row.rate_limit_per_second = Set(limit);
    }
    if let Some(sealed) = changes.sealed_secrets {
        row.sealed_secrets = Set(sealed);
    }
    if let Some(scheme) = changes.signature_scheme {
        row.signature_scheme = Set(scheme_column(&scheme));
    }
    if let Some(channels) = changes.channels {
        row.channels = Set(super::list_column(&channels));
    }
    if let Some((sealed, timeout_ms)) = changes.options {
        row.sealed_options = Set(sealed);
        row.timeout_ms = Set(timeout_ms);
    }
    row.updated_at = Set(super::now());
    Ok(row.update(tx.conn()).await?)
}

/// Deletes subscription `id` of the transaction's org; false if there was none.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<bool> {
    let result =
        Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(result.rows_affected > 0)
}

/// Disables an active subscription of the transaction's org; false if it was
/// not active (already disabled, deleted, or never approved).
pub async fn disable(tx: &OrgTx, id: &str, reason: &str) -> Result<bool> {
    let result = Entity::update_many()
        .col_expr(Column::Status, Expr::val(SubscriptionStatus::Disabled))
        .col_expr(Column::DisabledReason, Expr::val(reason))
        .col_expr(Column::UpdatedAt, Expr::val(super::now()))
        .filter(Column::Id.eq(id))
        .filter(Column::OrgId.eq(tx.org()))
        .filter(Column::Status.eq(SubscriptionStatus::Active))
        .exec(tx.conn())
        .await?;
    Ok(result.rows_affected > 0)
}

/// Starts (`Some(at)`) or ends (`None`) the failure run of each of `ids`
/// (of any org) whose run is not already so: for the dispatcher, which
/// records every org's attempts. Rows already in that state are not written.
pub async fn set_failure_run(db: &impl ConnectionTrait, ids: &[&str], started: Option<DateTime<Utc>>) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let unchanged = if started.is_some() { Column::FailingSince.is_null() } else { Column::FailingSince.is_not_null() };
    Entity::update_many()
        .col_expr(Column::FailingSince, Expr::val(started))
        .filter(Column::Id.is_in(ids.iter().copied()))
        .filter(unchanged)
        .exec(db)
        .await?;
    Ok(())
}

/// Subscriptions by id, across orgs: for the dispatcher, which sends every
/// org's deliveries and reads ids from deliveries it has claimed.
pub async fn find_for_dispatch(db: &impl ConnectionTrait, ids: &[String]) -> Result<Vec<Model>> {
    Ok(Entity::find().filter(Column::Id.is_in(ids.iter().map(String::as_str))).all(db).await?)
}
