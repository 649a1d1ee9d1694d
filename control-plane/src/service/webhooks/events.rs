//! PublishEvent: the caller's event, validated (its payload against its
//! type's schema in the catalog, when it has one), then written to the outbox
//! with a delivery per matching subscription by the [`super::publisher`].

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use serde_json::Value;

use super::catalog::EventCatalog;
use super::channels::check_channels;
use super::dispatch::queue::DispatchQueue;
use super::event_types::check_event_type;
use super::policy::WebhookPolicy;
pub use super::publisher::Published;
use super::publisher::{Publication, Publisher};
use crate::background::Background;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::service::validate::Violations;
use crate::store::events::NewEvent;

/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// What PublishEvent asks for.
#[derive(Debug, Default)]
pub struct Publish {
    /// May be empty for callers that act in their own org.
    pub org_id: String,
    pub event_type: String,
    /// A JSON object.
    pub payload_json: String,
    /// Empty for none.
    pub idempotency_key: String,
    pub channels: Vec<String>,
}

/// The event service.
pub struct EventService {
    publisher: Publisher,
    policy: Arc<WebhookPolicy>,
    catalog: Arc<EventCatalog>,
}

impl EventService {
    pub fn new(
        db: DatabaseConnection,
        dispatch: DispatchQueue,
        policy: Arc<WebhookPolicy>,
        catalog: Arc<EventCatalog>,
        metrics: Arc<Metrics>,
        background: &Background,
    ) -> Self {
        Self { publisher: Publisher::start(db, dispatch, metrics, background), policy, catalog }
    }

    /// Publishes an event to the org's matching subscriptions.
    pub async fn publish(&self, ctx: &RequestContext, publication: Publish) -> Result<Published> {
        let Publish { org_id, event_type, payload_json, idempotency_key, channels } = publication;
        let (event_type, idempotency_key) = (event_type.as_str(), idempotency_key.as_str());
        let org = ctx.authorize(Action::PublishEvent, Target::Org(&org_id))?;
        let mut violations = Violations::default();
        let type_ok = check_event_type(event_type).map_err(|why| violations.add("event_type", why)).is_ok();
        let mut payload = None;
        if payload_json.len() > self.policy.max_payload_bytes {
            violations.add(
                "payload_json",
                format!("is {} bytes; at most {} are allowed", payload_json.len(), self.policy.max_payload_bytes),
            );
        } else {
            match serde_json::from_str::<Value>(&payload_json) {
                Ok(value) if value.is_object() => payload = Some(value),
                Ok(_) => violations.add("payload_json", "must be a JSON object"),
                Err(e) => violations.add("payload_json", format!("is not JSON: {e}")),
            }
        }
        violations.optional_text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY_LEN);
        check_channels(&mut violations, "channels", &channels);
        if let Some(payload) = payload.filter(|_| type_ok) {
            violations.absorb(self.catalog.check_payload(&org, event_type, &payload).await)?;
        }
        violations.finish()?;

        // A publication is data-plane traffic: it is not audited, so it
        // takes no org-wide lock and the org's publishers do not queue
        // behind one another (ARCHITECTURE.md, "A webhook delivery").
        self.publisher
            .publish(Publication {
                org,
                event: NewEvent {
                    event_type: event_type.to_owned(),
                    payload: payload_json,
                    idempotency_key: (!idempotency_key.is_empty()).then(|| idempotency_key.to_owned()),
                    channels,
                },
            })
            .await
    }
}
