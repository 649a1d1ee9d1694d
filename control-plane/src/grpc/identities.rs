//! `keyplane.admin.v1.IdentityService` over [`IdentityService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::identity_service_server;
use tonic::{Request, Response, Status};

use super::convert::{self, identity_to_proto};
use super::{allowed_context, request_context};
use crate::error::Result;
use crate::service::authz::Action;
use crate::service::identities::IdentityRef;
use crate::service::paging::{ListQuery, PageRequest};
use crate::service::records::{IdentityChanges, IdentityFilter, NewIdentity};
use crate::service::{Authenticator, IdentityService};

/// The gRPC adapter of the identity service.
pub struct IdentityGrpc {
    identities: Arc<IdentityService>,
    auth: Authenticator,
}

impl IdentityGrpc {
    pub fn new(identities: Arc<IdentityService>, auth: Authenticator) -> Self {
        Self { identities, auth }
    }
}

fn new_identity(mut request: pb::CreateIdentityRequest) -> Result<NewIdentity> {
    let limits = convert::new_limits(&mut request)?;
    Ok(NewIdentity {
        external_id: request.external_id,
        metadata: request.metadata.map(|m| convert::struct_to_json("metadata", m)).transpose()?,
        limits,
    })
}

/// An update request: the org, the identity, and the changes its mask names.
fn identity_changes(request: pb::UpdateIdentityRequest) -> Result<(String, String, IdentityChanges)> {
    let update = request.update.unwrap_or_default();
    let mut changes = IdentityChanges::default();
    changes.limits = convert::read_mask_with_limits(request.update_mask.as_ref(), (&update).into(), |path| {
        match path {
            "external_id" => changes.external_id = Some(update.external_id.clone()),
            "metadata" => {
                changes.metadata =
                    Some(update.metadata.clone().map(|m| convert::struct_to_json("update.metadata", m)).transpose()?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((request.org_id, request.id, changes))
}

#[tonic::async_trait]
impl identity_service_server::IdentityService for IdentityGrpc {
    async fn create_identity(
        &self,
        request: Request<pb::CreateIdentityRequest>,
    ) -> Result<Response<pb::CreateIdentityResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let org_id = request.org_id.clone();
        let identity = self.identities.create(&ctx, &org_id, new_identity(request)?).await?;
        Ok(Response::new(pb::CreateIdentityResponse { identity: Some(identity_to_proto(&identity)) }))
    }

    async fn get_identity(
        &self,
        request: Request<pb::GetIdentityRequest>,
    ) -> Result<Response<pb::GetIdentityResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetIdentityRequest { org_id, id, external_id } = request.into_inner();
        let which = if id.is_empty() { IdentityRef::ExternalId(&external_id) } else { IdentityRef::Id(&id) };
        let identity = self.identities.get(&ctx, &org_id, which).await?;
        Ok(Response::new(pb::GetIdentityResponse { identity: Some(identity_to_proto(&identity)) }))
    }

    async fn list_identities(
        &self,
        request: Request<pb::ListIdentitiesRequest>,
    ) -> Result<Response<pb::ListIdentitiesResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let query = ListQuery {
            filter: IdentityFilter { external_id_prefix: Some(request.external_id_prefix).filter(|p| !p.is_empty()) },
            org_id: request.org_id,
            page: PageRequest { size: request.page_size, token: request.page_token },
        };
        let (identities, next_page_token) = self.identities.list(&ctx, query).await?.convert(identity_to_proto);
        Ok(Response::new(pb::ListIdentitiesResponse { identities, next_page_token }))
    }

    async fn update_identity(
        &self,
        request: Request<pb::UpdateIdentityRequest>,
    ) -> Result<Response<pb::UpdateIdentityResponse>, Status> {
        let ctx = allowed_context(&self.auth, &request, Action::WriteIdentities, |r| &r.org_id).await?;
        let (org_id, id, changes) = identity_changes(request.into_inner())?;
        let identity = self.identities.update(&ctx, &org_id, &id, changes).await?;
        Ok(Response::new(pb::UpdateIdentityResponse { identity: Some(identity_to_proto(&identity)) }))
    }

    async fn delete_identity(
        &self,
        request: Request<pb::DeleteIdentityRequest>,
    ) -> Result<Response<pb::DeleteIdentityResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::DeleteIdentityRequest { org_id, id, revoke_keys } = request.into_inner();
        let revoked_key_ids = self.identities.delete(&ctx, &org_id, &id, revoke_keys).await?;
        Ok(Response::new(pb::DeleteIdentityResponse { revoked_key_ids }))
    }
}
