//! What happened to deliveries, and resending them by hand.

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::json;

use super::catalog::EventTypeView;
use super::dispatch::delivery_body;
use super::outbox;
use crate::crypto::signing::legacy::SignatureScheme;
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::service::paging::{ListQuery, Listing, Page};
use crate::store::audit::AuditAction;
use crate::store::deliveries::{DeliveryFilter, DeliveryStatus};
use crate::store::webhooks::SubscriptionStatus;
use crate::store::{ChangeTx, OrgTx, audit, deliveries, event_types, events, webhooks};
use crate::wakeups::Wakeups;

const LISTING: Listing = Listing::named("deliveries");

/// What [`DeliveryService::detail`] returns.
pub struct DeliveryDetail {
    pub delivery: deliveries::Model,
    pub attempts: Vec<deliveries::attempt::Model>,
    /// The request body each attempt sends.
    pub body: Option<String>,
    /// Where it is sent.
    pub url: Option<String>,
    /// How it is signed (Standard Webhooks when the endpoint is gone).
    pub signature_scheme: SignatureScheme,
}

/// Event type of [`DeliveryService::send_test`].
pub const TEST_EVENT_TYPE: &str = "webhook.test";

/// The delivery service.
pub struct DeliveryService {
    db: DatabaseConnection,
    wakeups: Wakeups,
}

impl DeliveryService {
    pub fn new(db: DatabaseConnection, wakeups: Wakeups) -> Self {
        Self { db, wakeups }
    }

    /// A page of deliveries, newest first.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        query: ListQuery<DeliveryFilter>,
    ) -> Result<Page<deliveries::Model>> {
        let org = ctx.authorize(Action::ReadDeliveries, Target::Org(&query.org_id))?;
        let cursor = LISTING.start(&query.page)?;
        if let (Some(after), Some(before)) = (query.filter.created_after, query.filter.created_before)
            && after >= before
        {
            return Err(Error::invalid("created_before", "must be after created_after"));
        }
        let rows = deliveries::list(&self.db, &org, &query.filter, cursor.position.as_deref(), cursor.fetch()).await?;
        Ok(cursor.page(rows, |d| d.id.clone()))
    }

    /// One delivery with every attempt.
    pub async fn get(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
    ) -> Result<(deliveries::Model, Vec<deliveries::attempt::Model>)> {
        let org = ctx.authorize(Action::ReadDeliveries, Target::Org(org_id))?;
        let delivery = deliveries::find(&self.db, &org, id).await?.ok_or(Error::NotFound("delivery"))?;
        let attempts = deliveries::attempts(&self.db, &org, id).await?;
        Ok((delivery, attempts))
    }

    /// One delivery as its page shows it: with its attempts, the body it
    /// sends and the endpoint's URL (either gone when the event or the
    /// endpoint was deleted).
    pub async fn detail(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<DeliveryDetail> {
        let (delivery, attempts) = self.get(ctx, org_id, id).await?;
        let event = events::find(&self.db, &delivery.org_id, &delivery.event_id).await?;
        let endpoint = webhooks::find(&self.db, &delivery.org_id, &delivery.subscription_id).await?;
        Ok(DeliveryDetail {
            body: event.as_ref().map(delivery_body),
            signature_scheme: endpoint.as_ref().map(webhooks::Model::signature_scheme).unwrap_or_default(),
            url: endpoint.map(|endpoint| endpoint.url),
            delivery,
            attempts,
        })
    }

    /// Schedules one more attempt of a finished delivery, now.
    pub async fn retry(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<deliveries::Model> {
        let org = ctx.authorize(Action::RetryDeliveries, Target::Org(org_id))?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        let current = deliveries::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("delivery"))?;
        if current.status == DeliveryStatus::Pending {
            return Err(Error::FailedPrecondition("the delivery is already pending".into()));
        }
        require_active(&tx, &current.subscription_id).await?;
        let previous_status = current.status;
        let delivery = deliveries::retry(&tx, current).await?;
        audit::append(&tx, ctx.audit(AuditAction::DeliveryRetried, id, json!({ "previous_status": previous_status })))
            .await?;
        tx.commit(&self.wakeups).await?;
        Ok(delivery)
    }

    /// Schedules every failed delivery of a subscription created since `since`, now.
    pub async fn recover_failed(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        subscription_id: &str,
        since: DateTime<Utc>,
    ) -> Result<u64> {
        let org = ctx.authorize(Action::RetryDeliveries, Target::Org(org_id))?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        require_active(&tx, subscription_id).await?;
        let recovered = deliveries::recover_failed(&tx, subscription_id, since).await?;
        audit::append(
            &tx,
            ctx.audit(
                AuditAction::DeliveriesRecovered,
                subscription_id,
                json!({ "since": since, "recovered": recovered }),
            ),
        )
        .await?;
        tx.commit(&self.wakeups).await?;
        Ok(recovered)
    }

    /// Sends a `webhook.test` event to one active subscription, or, when
    /// `example_of` names a catalog type, that type's first example.
    pub async fn send_test(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        subscription_id: &str,
        example_of: &str,
    ) -> Result<deliveries::Model> {
        let org = ctx.authorize(Action::RetryDeliveries, Target::Org(org_id))?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        let subscription = require_active(&tx, subscription_id).await?;
        let (event_type, payload) = if example_of.is_empty() {
            (TEST_EVENT_TYPE, json!({ "subscription_id": subscription.id, "message": "test event from Keyplane" }))
        } else {
            let listed = event_types::find(tx.conn(), &org, example_of).await?.ok_or(Error::NotFound("event type"))?;
            let example = EventTypeView::from(listed).examples.into_iter().next().ok_or_else(|| {
                Error::FailedPrecondition(format!("event type {example_of} has no example in the catalog"))
            })?;
            (example_of, example)
        };
        let target = std::slice::from_ref(&subscription.id);
        let (event, mut deliveries) = outbox::publish_to(&tx, event_type, payload.to_string(), target).await?;
        audit::append(&tx, ctx.audit(AuditAction::TestEventSent, subscription_id, json!({ "event_id": event.id })))
            .await?;
        tx.commit(&self.wakeups).await?;
        deliveries.pop().ok_or(Error::NotFound("delivery"))
    }
}

/// The subscription `id` of the transaction's org, if it is active: sending
/// to a disabled or unapproved one would only fail again.
async fn require_active(tx: &OrgTx, id: &str) -> Result<webhooks::Model> {
    let subscription = webhooks::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("subscription"))?;
    if subscription.status != SubscriptionStatus::Active {
        return Err(Error::FailedPrecondition(format!(
            "the subscription is {}; enable (or approve) it before sending to it",
            subscription.status.as_str()
        )));
    }
    Ok(subscription)
}
