//! `keyplane.admin.v1.EventTypeService` over [`EventCatalog`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::event_type_service_server;
use tonic::{Request, Response, Status};

use super::convert::{read_mask, time_to_proto};
use super::{allowed_context, request_context};
use crate::service::Action;
use crate::service::Authenticator;
use crate::service::webhooks::EventCatalog;
use crate::service::webhooks::catalog::{EventTypeView, NewType, TypeChanges};

/// The gRPC adapter of the event catalog.
pub struct EventTypeGrpc {
    catalog: Arc<EventCatalog>,
    auth: Authenticator,
}

impl EventTypeGrpc {
    pub fn new(catalog: Arc<EventCatalog>, auth: Authenticator) -> Self {
        Self { catalog, auth }
    }
}

fn event_type_to_proto(view: EventTypeView) -> pb::EventType {
    pb::EventType {
        org_id: view.org_id,
        name: view.name,
        description: view.description,
        group: view.group,
        schemas: view
            .schemas
            .into_iter()
            .map(|version| pb::EventSchema {
                version: version.version,
                schema_json: version.schema.to_string(),
                created_at: Some(time_to_proto(version.created_at)),
            })
            .collect(),
        examples_json: view.examples.iter().map(ToString::to_string).collect(),
        deprecated: view.deprecated,
        archived: view.archived,
        system: view.system,
        created_at: view.created_at.map(time_to_proto),
        updated_at: view.updated_at.map(time_to_proto),
    }
}

#[tonic::async_trait]
impl event_type_service_server::EventTypeService for EventTypeGrpc {
    async fn create_event_type(
        &self,
        request: Request<pb::CreateEventTypeRequest>,
    ) -> Result<Response<pb::CreateEventTypeResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::CreateEventTypeRequest { org_id, name, description, group, schema_json, examples_json } =
            request.into_inner();
        let new = NewType { name, description, group, schema_json, examples_json };
        let created = self.catalog.create(&ctx, &org_id, new).await?;
        Ok(Response::new(pb::CreateEventTypeResponse { event_type: Some(event_type_to_proto(created)) }))
    }

    async fn get_event_type(
        &self,
        request: Request<pb::GetEventTypeRequest>,
    ) -> Result<Response<pb::GetEventTypeResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetEventTypeRequest { org_id, name } = request.into_inner();
        let found = self.catalog.get(&ctx, &org_id, &name).await?;
        Ok(Response::new(pb::GetEventTypeResponse { event_type: Some(event_type_to_proto(found)) }))
    }

    async fn list_event_types(
        &self,
        request: Request<pb::ListEventTypesRequest>,
    ) -> Result<Response<pb::ListEventTypesResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ListEventTypesRequest { org_id, include_archived } = request.into_inner();
        let listed = self.catalog.list(&ctx, &org_id, include_archived).await?;
        let require_cataloged_events = self.catalog.requires_cataloged(&ctx, &org_id).await?;
        Ok(Response::new(pb::ListEventTypesResponse {
            event_types: listed.into_iter().map(event_type_to_proto).collect(),
            require_cataloged_events,
        }))
    }

    async fn update_event_type(
        &self,
        request: Request<pb::UpdateEventTypeRequest>,
    ) -> Result<Response<pb::UpdateEventTypeResponse>, Status> {
        // Authorized before the mask is read: a refusal comes first.
        let ctx = allowed_context(&self.auth, &request, Action::WriteSubscriptions, |r| &r.org_id).await?;
        let request = request.into_inner();
        let mut changes = TypeChanges::default();
        read_mask(request.update_mask.as_ref(), |path| {
            match path {
                "description" => changes.description = Some(request.description.clone()),
                "group" => changes.group = Some(request.group.clone()),
                "schema_json" => changes.schema_json = Some(request.schema_json.clone()),
                "examples_json" => changes.examples_json = Some(request.examples_json.clone()),
                "deprecated" => changes.deprecated = Some(request.deprecated),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        let updated = self.catalog.update(&ctx, &request.org_id, &request.name, changes).await?;
        Ok(Response::new(pb::UpdateEventTypeResponse { event_type: Some(event_type_to_proto(updated)) }))
    }

    async fn archive_event_type(
        &self,
        request: Request<pb::ArchiveEventTypeRequest>,
    ) -> Result<Response<pb::ArchiveEventTypeResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ArchiveEventTypeRequest { org_id, name, archived } = request.into_inner();
        let changed = self.catalog.archive(&ctx, &org_id, &name, archived).await?;
        Ok(Response::new(pb::ArchiveEventTypeResponse { event_type: Some(event_type_to_proto(changed)) }))
    }

    async fn set_catalog_policy(
        &self,
        request: Request<pb::SetCatalogPolicyRequest>,
    ) -> Result<Response<pb::SetCatalogPolicyResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::SetCatalogPolicyRequest { org_id, require_cataloged_events } = request.into_inner();
        let set = self.catalog.set_policy(&ctx, &org_id, require_cataloged_events).await?;
        Ok(Response::new(pb::SetCatalogPolicyResponse { require_cataloged_events: set }))
    }
}
