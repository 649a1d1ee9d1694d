//! `keyplane.admin.v1.EventService` over [`EventService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::event_service_server;
use tonic::{Request, Response, Status};

use super::convert::event_to_proto;
use super::request_context;
use crate::service::webhooks::events::Publish;
use crate::service::{Authenticator, EventService};

/// The gRPC adapter of the event service.
pub struct EventGrpc {
    events: Arc<EventService>,
    auth: Authenticator,
}

impl EventGrpc {
    /// An adapter over `events`.
    pub fn new(events: Arc<EventService>, auth: Authenticator) -> Self {
        Self { events, auth }
    }
}

#[tonic::async_trait]
impl event_service_server::EventService for EventGrpc {
    async fn publish_event(
        &self,
        request: Request<pb::PublishEventRequest>,
    ) -> Result<Response<pb::PublishEventResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::PublishEventRequest { org_id, event_type, payload_json, idempotency_key, channels } =
            request.into_inner();
        let publication = Publish { org_id, event_type, payload_json, idempotency_key, channels };
        let published = self.events.publish(&ctx, publication).await?;
        Ok(Response::new(pb::PublishEventResponse {
            event: Some(event_to_proto(&published.event)),
            deliveries_created: u32::try_from(published.deliveries_created).unwrap_or(u32::MAX),
            duplicate: published.duplicate,
        }))
    }
}
