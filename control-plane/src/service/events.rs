//! Publishing events: the event and one delivery per matching active
//! subscription are written in the caller's transaction (an outbox), so a
//! committed event is delivered even if the process dies right after.

use std::sync::Arc;

use chrono::SecondsFormat;
use sea_orm::{ActiveValue::Set, IntoActiveModel};
use serde_json::{Value, json};

use super::Core;
use super::auth::{RequestContext, Scope};
use super::validate::Violations;
use super::webhooks::{self, WebhookPolicy, check_event_type};
use crate::error::Result;
use crate::store::{self, OrgTx, audit, deliveries, events};

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// Result of [`EventService::publish`].
#[derive(Debug)]
pub struct Published {
    /// The event (the earlier one for a repeated idempotency key).
    pub event: events::Model,
    /// Deliveries created.
    pub deliveries_created: usize,
    /// Whether the idempotency key had been used before.
    pub duplicate: bool,
}

/// The event service.
pub struct EventService {
    core: Arc<Core>,
    policy: Arc<WebhookPolicy>,
}

impl EventService {
    /// An event service over `core` with the operator's `policy`.
    pub fn new(core: Arc<Core>, policy: Arc<WebhookPolicy>) -> Self {
        Self { core, policy }
    }

    /// Publishes an event to the org's matching subscriptions.
    pub async fn publish(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        event_type: &str,
        payload_json: String,
        idempotency_key: &str,
    ) -> Result<Published> {
        let org = ctx.authorize(Scope::EventsPublish, org_id)?;
        let mut violations = Violations::default();
        if let Err(why) = check_event_type(event_type, false) {
            violations.add("event_type", why);
        }
        if payload_json.len() > self.policy.max_payload_bytes {
            violations.add(
                "payload_json",
                format!("is {} bytes; at most {} are allowed", payload_json.len(), self.policy.max_payload_bytes),
            );
        } else {
            match serde_json::from_str::<Value>(&payload_json) {
                Ok(value) if value.is_object() => {}
                Ok(_) => violations.add("payload_json", "must be a JSON object"),
                Err(e) => violations.add("payload_json", format!("is not JSON: {e}")),
            }
        }
        violations.text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY_LEN, false);
        violations.finish()?;

        let idempotency_key = (!idempotency_key.is_empty()).then(|| idempotency_key.to_owned());
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        if let Some(key) = &idempotency_key
            && let Some(event) = events::find_by_idempotency_key(tx.conn(), tx.org(), key).await?
        {
            return Ok(Published { event, deliveries_created: 0, duplicate: true });
        }
        let (event, deliveries) = publish_in(&tx, event_type, payload_json, idempotency_key).await?;
        audit::append(
            &tx,
            ctx.audit(
                "event.published",
                "event",
                &event.id,
                json!({ "event_type": event.event_type, "deliveries": deliveries }),
            ),
        )
        .await?;
        commit_with_deliveries(&self.core, tx).await?;
        Ok(Published { event, deliveries_created: deliveries, duplicate: false })
    }
}

/// Commits a transaction that created deliveries and wakes the dispatcher.
pub async fn commit_with_deliveries(core: &Core, tx: OrgTx) -> Result<()> {
    tx.commit().await?;
    core.deliveries_due.notify_one();
    Ok(())
}

/// Stores an event of the transaction's org and a delivery to each active
/// subscription whose event types match; returns it and the delivery count.
pub async fn publish_in(
    tx: &OrgTx,
    event_type: &str,
    payload: String,
    idempotency_key: Option<String>,
) -> Result<(events::Model, usize)> {
    let targets: Vec<String> = store::webhooks::active(tx.conn(), tx.org())
        .await?
        .into_iter()
        .filter(|s| s.event_type_list().iter().any(|pattern| webhooks::matches(pattern, event_type)))
        .map(|s| s.id)
        .collect();
    let (event, deliveries) = store_event(tx, event_type, payload, idempotency_key, &targets).await?;
    Ok((event, deliveries.len()))
}

/// Publishes one of Keyplane's own events (`api_key.created`, …) in `tx`.
pub async fn publish_own(tx: &OrgTx, event_type: &str, data: Value) -> Result<()> {
    publish_in(tx, event_type, data.to_string(), None).await.map(drop)
}

/// Stores an event of the transaction's org with a delivery to each of `targets`.
pub async fn store_event(
    tx: &OrgTx,
    event_type: &str,
    payload: String,
    idempotency_key: Option<String>,
    targets: &[String],
) -> Result<(events::Model, Vec<deliveries::Model>)> {
    let now = store::now();
    let event = events::insert(
        tx,
        events::ActiveModel {
            id: Set(crate::crypto::new_id("msg_")),
            org_id: Set(String::new()),
            event_type: Set(event_type.to_owned()),
            payload: Set(payload),
            idempotency_key: Set(idempotency_key),
            created_at: Set(now),
        },
    )
    .await?;
    let rows: Vec<deliveries::Model> = targets
        .iter()
        .map(|subscription_id| deliveries::Model {
            id: crate::crypto::new_id("dlv_"),
            org_id: tx.org().to_owned(),
            subscription_id: subscription_id.clone(),
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            status: deliveries::PENDING.to_owned(),
            attempt_count: 0,
            next_attempt_at: now,
            last_status_code: None,
            last_error: None,
            created_at: now,
            finished_at: None,
        })
        .collect();
    deliveries::insert_many(tx, rows.iter().cloned().map(IntoActiveModel::into_active_model).collect()).await?;
    Ok((event, rows))
}

/// The request body of a delivery: `{"type","timestamp","data"}` with the
/// payload copied byte for byte.
pub fn delivery_body(event: &events::Model) -> String {
    let event_type = Value::String(event.event_type.clone());
    let timestamp = Value::String(event.created_at.to_rfc3339_opts(SecondsFormat::Micros, true));
    format!(r#"{{"type":{event_type},"timestamp":{timestamp},"data":{}}}"#, event.payload)
}
