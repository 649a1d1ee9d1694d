//! `keyplane.admin.v1.ConnectionService` over [`ConnectionService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::connection_service_server;
use tonic::{Request, Response, Status};

use super::convert::{connection_to_proto, time_to_proto};
use super::request_context;
use crate::service::connections::CodeExchange;
use crate::service::paging::PageRequest;
use crate::service::{Authenticator, ConnectionService};

/// The gRPC adapter of the connection service.
pub struct ConnectionGrpc {
    connections: Arc<ConnectionService>,
    auth: Authenticator,
}

impl ConnectionGrpc {
    /// An adapter over `connections`.
    pub fn new(connections: Arc<ConnectionService>, auth: Authenticator) -> Self {
        Self { connections, auth }
    }
}

#[tonic::async_trait]
impl connection_service_server::ConnectionService for ConnectionGrpc {
    async fn exchange_code(
        &self,
        request: Request<pb::ExchangeCodeRequest>,
    ) -> Result<Response<pb::ExchangeCodeResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ExchangeCodeRequest { org_id, provider, code, redirect_uri, code_verifier, account_label } =
            request.into_inner();
        let exchange = CodeExchange { org_id, provider, code, redirect_uri, code_verifier, account_label };
        let connection = self.connections.exchange_code(&ctx, exchange).await?;
        Ok(Response::new(pb::ExchangeCodeResponse { connection: Some(connection_to_proto(&connection)) }))
    }

    async fn get_connection(
        &self,
        request: Request<pb::GetConnectionRequest>,
    ) -> Result<Response<pb::GetConnectionResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetConnectionRequest { org_id, id } = request.into_inner();
        let connection = self.connections.get(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::GetConnectionResponse { connection: Some(connection_to_proto(&connection)) }))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::ListConnectionsRequest { org_id, page_size, page_token, provider } = request.into_inner();
        let page = PageRequest { size: page_size, token: page_token };
        let page = self.connections.list(&ctx, &org_id, &provider, &page).await?;
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: page.items.iter().map(connection_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_access_token(
        &self,
        request: Request<pb::GetAccessTokenRequest>,
    ) -> Result<Response<pb::GetAccessTokenResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::GetAccessTokenRequest { org_id, id } = request.into_inner();
        let issued = self.connections.access_token(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::GetAccessTokenResponse {
            access_token: issued.token,
            expires_at: issued.connection.expires_at.map(time_to_proto),
            connection: Some(connection_to_proto(&issued.connection)),
        }))
    }

    async fn delete_connection(
        &self,
        request: Request<pb::DeleteConnectionRequest>,
    ) -> Result<Response<pb::DeleteConnectionResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let pb::DeleteConnectionRequest { org_id, id } = request.into_inner();
        let revocation = self.connections.delete(&ctx, &org_id, &id).await?;
        Ok(Response::new(pb::DeleteConnectionResponse {
            revoked: revocation.revoked,
            revocation_error: revocation.error,
        }))
    }
}
