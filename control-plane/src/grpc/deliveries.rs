//! `keyplane.admin.v1.DeliveryService` over [`DeliveryService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::delivery_service_server;
use tonic::{Request, Response, Status};

use super::convert::{self, attempt_to_proto, delivery_to_proto};
use super::{allowed_context, request_context};
use crate::error::Error;
use crate::service::authz::Action;
use crate::service::paging::{ListQuery, PageRequest};
use crate::service::records::DeliveryFilter;
use crate::service::{Authenticator, DeliveryService};

/// The gRPC adapter of the delivery service.
pub struct DeliveryGrpc {
    deliveries: Arc<DeliveryService>,
    auth: Authenticator,
}

impl DeliveryGrpc {
    /// An adapter over `deliveries`.
    pub fn new(deliveries: Arc<DeliveryService>, auth: Authenticator) -> Self {
        Self { deliveries, auth }
    }
}

#[tonic::async_trait]
impl delivery_service_server::DeliveryService for DeliveryGrpc {
    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let query = ListQuery {
            filter: DeliveryFilter {
                subscription_id: Some(request.subscription_id).filter(|s| !s.is_empty()),
                status: convert::delivery_status_from_proto("status", request.status)?,
                event_type: Some(request.event_type).filter(|s| !s.is_empty()),
                created_after: request
                    .created_after
                    .map(|t| convert::time_from_proto("created_after", t))
                    .transpose()?,
                created_before: request
                    .created_before
                    .map(|t| convert::time_from_proto("created_before", t))
                    .transpose()?,
            },
            org_id: request.org_id,
            page: PageRequest { size: request.page_size, token: request.page_token },
        };
        let page = self.deliveries.list(&ctx, query).await?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: page.items.iter().map(delivery_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_delivery(
        &self,
        request: Request<pb::GetDeliveryRequest>,
    ) -> Result<Response<pb::GetDeliveryResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetDeliveryRequest { org_id, id } = request.into_inner();
        let (delivery, attempts) = self.deliveries.get(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::GetDeliveryResponse {
            delivery: Some(delivery_to_proto(&delivery)),
            attempts: attempts.iter().map(attempt_to_proto).collect(),
        }))
    }

    async fn retry_delivery(
        &self,
        request: Request<pb::RetryDeliveryRequest>,
    ) -> Result<Response<pb::RetryDeliveryResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::RetryDeliveryRequest { org_id, id } = request.into_inner();
        let delivery = self.deliveries.retry(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::RetryDeliveryResponse { delivery: Some(delivery_to_proto(&delivery)) }))
    }

    async fn recover_failed(
        &self,
        request: Request<pb::RecoverFailedRequest>,
    ) -> Result<Response<pb::RecoverFailedResponse>, Status> {
        let ctx = allowed_context(&self.auth, &request, Action::RetryDeliveries, |r| &r.org_id).await?;
        let pb::RecoverFailedRequest { org_id, subscription_id, since } = request.into_inner();
        let since = since.ok_or_else(|| Error::invalid("since", "is required"))?;
        let since = convert::time_from_proto("since", since)?;
        let recovered = self.deliveries.recover_failed(&ctx, &org_id, &subscription_id, since).await?;
        Ok(Response::new(pb::RecoverFailedResponse { recovered: u32::try_from(recovered).unwrap_or(u32::MAX) }))
    }

    async fn send_test_event(
        &self,
        request: Request<pb::SendTestEventRequest>,
    ) -> Result<Response<pb::SendTestEventResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::SendTestEventRequest { org_id, subscription_id, event_type } = request.into_inner();
        let delivery = self.deliveries.send_test(&ctx, &org_id, &subscription_id, &event_type).await?;
        Ok(Response::new(pb::SendTestEventResponse { delivery: Some(delivery_to_proto(&delivery)) }))
    }
}
