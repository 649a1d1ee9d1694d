//! `keyplane.admin.v1.RoleService` over [`RoleService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::role_service_server;
use tonic::{Request, Response, Status};

use super::convert::roles::{effective_to_proto, role_changes, role_ref_to_proto, role_to_proto};
use super::{allowed_context, request_context};
use crate::service::authz::Action;
use crate::service::paging::PageRequest;
use crate::service::records::{HolderId, NewRole, RoleLookup};
use crate::service::{Authenticator, RoleService};

/// The gRPC adapter of the role service.
pub struct RoleGrpc {
    roles: Arc<RoleService>,
    auth: Authenticator,
}

impl RoleGrpc {
    pub fn new(roles: Arc<RoleService>, auth: Authenticator) -> Self {
        Self { roles, auth }
    }
}

#[tonic::async_trait]
impl role_service_server::RoleService for RoleGrpc {
    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::CreateRoleResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::CreateRoleRequest { org_id, name, description, permissions } = request.into_inner();
        let role = self.roles.create(&ctx, &org_id, NewRole { name, description, permissions }).await?;
        Ok(Response::new(pb::CreateRoleResponse { role: Some(role_to_proto(&role)) }))
    }

    async fn get_role(&self, request: Request<pb::GetRoleRequest>) -> Result<Response<pb::GetRoleResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetRoleRequest { org_id, id, name } = request.into_inner();
        let which = if id.is_empty() { RoleLookup::Name(&name) } else { RoleLookup::Id(&id) };
        let role = self.roles.get(&ctx, &org_id, which).await?;
        Ok(Response::new(pb::GetRoleResponse { role: Some(role_to_proto(&role)) }))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ListRolesRequest { org_id, page_size, page_token } = request.into_inner();
        let page = self.roles.list(&ctx, &org_id, &PageRequest { size: page_size, token: page_token }).await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: page.items.iter().map(role_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::UpdateRoleResponse>, Status> {
        let ctx = allowed_context(&self.auth, &request, Action::WriteRoles, |r| &r.org_id).await?;
        let request = request.into_inner();
        let (org_id, id) = (request.org_id.clone(), request.id.clone());
        let role = self.roles.update(&ctx, &org_id, &id, role_changes(request)?).await?;
        Ok(Response::new(pb::UpdateRoleResponse { role: Some(role_to_proto(&role)) }))
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::DeleteRoleRequest { org_id, id, detach } = request.into_inner();
        let detached = self.roles.delete(&ctx, &org_id, &id, detach).await?;
        Ok(Response::new(pb::DeleteRoleResponse { detached }))
    }

    async fn set_roles(&self, request: Request<pb::SetRolesRequest>) -> Result<Response<pb::SetRolesResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::SetRolesRequest { org_id, holder_id, roles } = request.into_inner();
        let held = self.roles.set_roles(&ctx, &org_id, &HolderId::parse(&holder_id), &roles).await?;
        Ok(Response::new(pb::SetRolesResponse { roles: held.iter().map(role_ref_to_proto).collect() }))
    }

    async fn set_identity_permissions(
        &self,
        request: Request<pb::SetIdentityPermissionsRequest>,
    ) -> Result<Response<pb::SetIdentityPermissionsResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::SetIdentityPermissionsRequest { org_id, identity_id, permissions } = request.into_inner();
        let permissions = self.roles.set_identity_permissions(&ctx, &org_id, &identity_id, permissions).await?;
        Ok(Response::new(pb::SetIdentityPermissionsResponse { permissions }))
    }

    async fn get_effective_permissions(
        &self,
        request: Request<pb::GetEffectivePermissionsRequest>,
    ) -> Result<Response<pb::GetEffectivePermissionsResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetEffectivePermissionsRequest { org_id, holder_id } = request.into_inner();
        let effective = self.roles.effective(&ctx, &org_id, &HolderId::parse(&holder_id)).await?;
        Ok(Response::new(effective_to_proto(&effective)))
    }
}
