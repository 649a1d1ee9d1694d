//! `keyplane.admin.v1.WebhookService` over [`WebhookService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::webhook_service_server;
use tonic::{Request, Response, Status};

use super::convert::{self, subscription_to_proto};
use super::{allowed_context, request_context};
use crate::error::Result;
use crate::service::authz::Action;
use crate::service::paging::PageRequest;
use crate::service::webhooks::PortalLinks;
use crate::service::webhooks::subscriptions::{NewSubscription, SubscriptionChanges};
use crate::service::{Authenticator, WebhookService};
use crate::store::webhooks::Model as Subscription;

/// The gRPC adapter of the subscription service.
pub struct WebhookGrpc {
    webhooks: Arc<WebhookService>,
    portal: Arc<PortalLinks>,
    auth: Authenticator,
}

impl WebhookGrpc {
    pub fn new(webhooks: Arc<WebhookService>, portal: Arc<PortalLinks>, auth: Authenticator) -> Self {
        Self { webhooks, portal, auth }
    }

    fn show(&self, subscription: &Subscription) -> Result<pb::Subscription> {
        Ok(subscription_to_proto(subscription, self.webhooks.options(subscription)?))
    }
}

fn changes(request: &pb::UpdateSubscriptionRequest) -> Result<SubscriptionChanges> {
    let update = request.update.clone().unwrap_or_default();
    let mut changes = SubscriptionChanges::default();
    convert::read_mask(request.update_mask.as_ref(), |path| {
        match path {
            "url" => changes.url = Some(update.url.clone()),
            "event_types" => changes.event_types = Some(update.event_types.clone()),
            "description" => changes.description = Some(update.description.clone()),
            "enabled" => changes.enabled = Some(update.enabled),
            "rate_limit_per_second" => changes.rate_limit_per_second = Some(update.rate_limit_per_second),
            "signature_scheme" => {
                let scheme = convert::scheme_from_proto("update.signature_scheme", update.signature_scheme.clone())?;
                changes.signature_scheme = Some(scheme);
            }
            "channels" => changes.channels = Some(update.channels.clone()),
            "delivery_options" => {
                let field = "update.delivery_options";
                changes.delivery_options =
                    Some(convert::delivery_options_from_proto(field, update.delivery_options.clone())?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(changes)
}

#[tonic::async_trait]
impl webhook_service_server::WebhookService for WebhookGrpc {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let ctx = allowed_context(&self.auth, &request, Action::WriteSubscriptions, |r| &r.org_id).await?;
        let request = request.into_inner();
        let new = NewSubscription {
            org_id: request.org_id,
            url: request.url,
            event_types: request.event_types,
            description: request.description,
            rate_limit_per_second: request.rate_limit_per_second,
            signature_scheme: convert::scheme_from_proto("signature_scheme", request.signature_scheme)?,
            secret: request.secret,
            channels: request.channels,
            delivery_options: convert::delivery_options_from_proto("delivery_options", request.delivery_options)?,
        };
        let created = self.webhooks.create(&ctx, new).await?;
        Ok(Response::new(pb::CreateSubscriptionResponse {
            subscription: Some(self.show(&created.subscription)?),
            secret: created.secret,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::GetSubscriptionResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetSubscriptionRequest { org_id, id } = request.into_inner();
        let subscription = self.webhooks.get(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::GetSubscriptionResponse { subscription: Some(self.show(&subscription)?) }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ListSubscriptionsRequest { org_id, page_size, page_token } = request.into_inner();
        let page = self.webhooks.list(&ctx, &org_id, &PageRequest { size: page_size, token: page_token }).await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: page.items.iter().map(|s| self.show(s)).collect::<Result<_>>()?,
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_subscription(
        &self,
        request: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::UpdateSubscriptionResponse>, Status> {
        let ctx = allowed_context(&self.auth, &request, Action::WriteSubscriptions, |r| &r.org_id).await?;
        let request = request.into_inner();
        let changes = changes(&request)?;
        let subscription = self.webhooks.update(&ctx, &request.org_id, &request.id, changes).await?;
        Ok(Response::new(pb::UpdateSubscriptionResponse { subscription: Some(self.show(&subscription)?) }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::DeleteSubscriptionRequest { org_id, id } = request.into_inner();
        self.webhooks.delete(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn rotate_subscription_secret(
        &self,
        request: Request<pb::RotateSubscriptionSecretRequest>,
    ) -> Result<Response<pb::RotateSubscriptionSecretResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::RotateSubscriptionSecretRequest { org_id, id, grace_period } = request.into_inner();
        let grace = grace_period.map(|g| convert::duration_from_proto("grace_period", g)).transpose()?;
        let rotated = self.webhooks.rotate_secret(&ctx, &org_id, &id, grace).await?;
        Ok(Response::new(pb::RotateSubscriptionSecretResponse {
            subscription: Some(self.show(&rotated.subscription)?),
            secret: rotated.secret,
        }))
    }

    async fn approve_subscription(
        &self,
        request: Request<pb::ApproveSubscriptionRequest>,
    ) -> Result<Response<pb::ApproveSubscriptionResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ApproveSubscriptionRequest { org_id, id } = request.into_inner();
        let subscription = self.webhooks.approve(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::ApproveSubscriptionResponse { subscription: Some(self.show(&subscription)?) }))
    }

    async fn create_portal_link(
        &self,
        request: Request<pb::CreatePortalLinkRequest>,
    ) -> Result<Response<pb::CreatePortalLinkResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let ttl = request.ttl.map(|ttl| convert::duration_from_proto("ttl", ttl)).transpose()?;
        let link = self.portal.create(&ctx, &request.org_id, ttl, request.frame_ancestors).await?;
        Ok(Response::new(pb::CreatePortalLinkResponse {
            url: link.url,
            id: link.id,
            expires_at: Some(convert::time_to_proto(link.expires_at)),
        }))
    }
}
