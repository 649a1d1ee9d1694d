//! The webhooks subsystem: subscriptions, publication, delivery and the
//! customer portal, plus OAuth connections (egress too), with the
//! dispatcher and its sweep and their gRPC services.

use std::sync::Arc;

use keyplane_proto::admin::v1::connection_service_server::ConnectionServiceServer;
use keyplane_proto::admin::v1::delivery_service_server::DeliveryServiceServer;
use keyplane_proto::admin::v1::event_service_server::EventServiceServer;
use keyplane_proto::admin::v1::event_type_service_server::EventTypeServiceServer;
use keyplane_proto::admin::v1::webhook_service_server::WebhookServiceServer;

use super::Core;
use super::grpc::GrpcServices;
use crate::config::Config;
use crate::error::Result;
use crate::service::retention;
use crate::service::webhooks::dispatch::queue::DispatchQueue;
use crate::service::webhooks::{EventCatalog, PortalLinks};
use crate::service::{ConnectionService, DeliveryService, Dispatcher, EventService, WebhookService};
use crate::{grpc, oauth};

/// The subsystem's services.
pub struct Webhooks {
    pub webhooks: Arc<WebhookService>,
    pub portal: Arc<PortalLinks>,
    pub events: Arc<EventService>,
    pub catalog: Arc<EventCatalog>,
    pub deliveries: Arc<DeliveryService>,
    pub connections: Arc<ConnectionService>,
}

impl Webhooks {
    /// Builds the services and starts the dispatcher; portal links point
    /// at `console_url`.
    pub fn start(core: &Core, config: &Config, console_url: Option<String>) -> Result<Self> {
        let (db, background) = (&core.db, &core.background);
        let egress = Arc::new(config.egress_policy());
        let policy = Arc::new(config.webhooks.policy(egress.clone()));
        let queue = DispatchQueue::new(core.wakeups.clone());
        let providers = match &config.oauth_providers {
            Some(path) => oauth::Providers::load(path)?,
            None => oauth::Providers::default(),
        };
        let oauth_client = oauth::OAuthClient::new(&egress, config.oauth_timeout)?;
        let dispatcher = Dispatcher::new(
            db.clone(),
            core.master_keys.clone(),
            core.metrics.clone(),
            queue.clone(),
            config.webhooks.dispatch_settings(),
            &egress,
            background.clone(),
        )?;
        background.spawn("webhook-dispatcher", dispatcher.run(background.stop.clone()));
        let retention = config.webhooks.delivery_retention;
        let purge = retention::purge_delivered_webhooks(db.clone(), retention, background.stop.clone());
        background.spawn("purge-delivered-webhooks", purge);

        let catalog = Arc::new(EventCatalog::new(db.clone()));
        let events =
            EventService::new(db.clone(), queue, policy.clone(), catalog.clone(), core.metrics.clone(), background);
        Ok(Self {
            webhooks: Arc::new(WebhookService::new(db.clone(), core.master_keys.clone(), policy.clone())),
            portal: Arc::new(PortalLinks::new(db.clone(), console_url)),
            events: Arc::new(events),
            catalog,
            deliveries: Arc::new(DeliveryService::new(db.clone(), core.wakeups.clone())),
            connections: Arc::new(ConnectionService::new(
                db.clone(),
                core.master_keys.clone(),
                providers,
                oauth_client,
            )),
        })
    }

    /// Adds the subsystem's gRPC services.
    pub async fn serve(self, core: &Core, grpc: &mut GrpcServices) {
        let auth = &core.auth;
        let webhooks = grpc::webhooks::WebhookGrpc::new(self.webhooks, self.portal, auth.clone());
        grpc.add(WebhookServiceServer::new(webhooks)).await;
        grpc.add(EventServiceServer::new(grpc::events::EventGrpc::new(self.events, auth.clone()))).await;
        let catalog = grpc::event_types::EventTypeGrpc::new(self.catalog, auth.clone());
        grpc.add(EventTypeServiceServer::new(catalog)).await;
        grpc.add(DeliveryServiceServer::new(grpc::deliveries::DeliveryGrpc::new(self.deliveries, auth.clone()))).await;
        let connections = grpc::connections::ConnectionGrpc::new(self.connections, auth.clone());
        grpc.add(ConnectionServiceServer::new(connections)).await;
    }
}
