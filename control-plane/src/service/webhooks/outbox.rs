//! The outbox: an event and its deliveries are written in the caller's
//! transaction, so a committed event is delivered even if the process dies
//! right after. Commit with [`crate::service::Wakeups::commit_deliveries`]
//! (or `commit_key_change`) so the dispatcher sends at once.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::event_types::matches;
use crate::error::Result;
use crate::store::deliveries::EventRef;
use crate::store::{OrgTx, deliveries, events, webhooks};

/// Stores an event of the transaction's org with a delivery to every active
/// subscription whose patterns match it (due at once, or leased to this
/// process's dispatcher until `leased_until`); returns it and its deliveries.
pub async fn publish_to_matching(
    tx: &OrgTx,
    event_type: &str,
    payload: String,
    idempotency_key: Option<String>,
    leased_until: Option<DateTime<Utc>>,
) -> Result<(events::Model, Vec<deliveries::Model>)> {
    let targets: Vec<String> = webhooks::active(tx.conn(), tx.org())
        .await?
        .into_iter()
        .filter(|s| s.event_type_list().iter().any(|pattern| matches(pattern, event_type)))
        .map(|s| s.id)
        .collect();
    publish_to(tx, event_type, payload, idempotency_key, &targets, leased_until).await
}

/// Publishes one of Keyplane's own events (`api_key.created`,
/// `webhook.endpoint_disabled`, …) to the org's matching subscriptions.
pub async fn publish_system_event(tx: &OrgTx, event_type: &str, data: Value) -> Result<()> {
    publish_to_matching(tx, event_type, data.to_string(), None, None).await.map(drop)
}

/// Stores an event of the transaction's org with a delivery to each of
/// `subscription_ids`, whatever their patterns (a test event, say).
pub async fn publish_to(
    tx: &OrgTx,
    event_type: &str,
    payload: String,
    idempotency_key: Option<String>,
    subscription_ids: &[String],
    leased_until: Option<DateTime<Utc>>,
) -> Result<(events::Model, Vec<deliveries::Model>)> {
    let event = events::insert(tx, event_type, payload, idempotency_key).await?;
    let carried = EventRef { id: &event.id, event_type: &event.event_type, published_at: event.created_at };
    let deliveries = deliveries::insert_for_event(tx, carried, subscription_ids, leased_until).await?;
    Ok((event, deliveries))
}
