//! `keyplane.admin.v1.OrgService` over [`OrgService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::org_service_server;
use tonic::{Request, Response, Status};

use super::convert::time_to_proto;
use super::request_context;
use crate::service::paging::PageRequest;
use crate::service::records::{OrgHoldings, OrgView};
use crate::service::{Authenticator, OrgService};

/// The gRPC adapter of the org service.
pub struct OrgGrpc {
    orgs: Arc<OrgService>,
    auth: Authenticator,
}

impl OrgGrpc {
    pub fn new(orgs: Arc<OrgService>, auth: Authenticator) -> Self {
        Self { orgs, auth }
    }
}

fn holdings_to_proto(holdings: OrgHoldings) -> pb::OrgHoldings {
    pb::OrgHoldings {
        keys: holdings.keys,
        identities: holdings.identities,
        roles: holdings.roles,
        webhook_endpoints: holdings.subscriptions,
        oauth_connections: holdings.connections,
    }
}

fn org_to_proto(view: &OrgView) -> pb::Org {
    pb::Org {
        id: view.org.id.clone(),
        display_name: view.org.display_name.clone(),
        holdings: Some(holdings_to_proto(view.holdings)),
        created_at: Some(time_to_proto(view.org.created_at)),
        updated_at: Some(time_to_proto(view.org.updated_at)),
    }
}

#[tonic::async_trait]
impl org_service_server::OrgService for OrgGrpc {
    async fn create_org(
        &self,
        request: Request<pb::CreateOrgRequest>,
    ) -> Result<Response<pb::CreateOrgResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::CreateOrgRequest { org_id, display_name } = request.into_inner();
        let org = self.orgs.create(&ctx, &org_id, &display_name).await?;
        Ok(Response::new(pb::CreateOrgResponse { org: Some(org_to_proto(&org)) }))
    }

    async fn get_org(&self, request: Request<pb::GetOrgRequest>) -> Result<Response<pb::GetOrgResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let org = self.orgs.get(&ctx, &request.into_inner().org_id).await?;
        Ok(Response::new(pb::GetOrgResponse { org: Some(org_to_proto(&org)) }))
    }

    async fn list_orgs(&self, request: Request<pb::ListOrgsRequest>) -> Result<Response<pb::ListOrgsResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ListOrgsRequest { search, page_size, page_token } = request.into_inner();
        let page = self.orgs.list(&ctx, &search, &PageRequest { size: page_size, token: page_token }).await?;
        Ok(Response::new(pb::ListOrgsResponse {
            orgs: page.items.iter().map(org_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn rename_org(
        &self,
        request: Request<pb::RenameOrgRequest>,
    ) -> Result<Response<pb::RenameOrgResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::RenameOrgRequest { org_id, display_name } = request.into_inner();
        let org = self.orgs.rename(&ctx, &org_id, &display_name).await?;
        Ok(Response::new(pb::RenameOrgResponse { org: Some(org_to_proto(&org)) }))
    }

    async fn delete_org(
        &self,
        request: Request<pb::DeleteOrgRequest>,
    ) -> Result<Response<pb::DeleteOrgResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::DeleteOrgRequest { org_id, delete_holdings } = request.into_inner();
        let deleted = self.orgs.delete(&ctx, &org_id, delete_holdings).await?;
        Ok(Response::new(pb::DeleteOrgResponse { deleted: Some(holdings_to_proto(deleted)) }))
    }
}
