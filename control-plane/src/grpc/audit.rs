//! `keyplane.admin.v1.AuditService` over [`AuditService`].

use std::sync::Arc;

use keyplane_proto::admin::v1 as pb;
use pb::audit_service_server::AuditService as AuditServiceApi;
use tonic::{Request, Response, Status};

use super::convert;
use super::request_context;
use crate::service::paging::{ListQuery, PageRequest};
use crate::service::records::AuditFilter;
use crate::service::{AuditService, Authenticator};

/// The gRPC adapter of the audit service.
pub struct AuditGrpc {
    audit: Arc<AuditService>,
    auth: Authenticator,
}

impl AuditGrpc {
    /// An adapter over `audit`.
    pub fn new(audit: Arc<AuditService>, auth: Authenticator) -> Self {
        Self { audit, auth }
    }
}

#[tonic::async_trait]
impl AuditServiceApi for AuditGrpc {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        let query = ListQuery {
            filter: AuditFilter {
                action: non_empty(request.action),
                actor_id: non_empty(request.actor_id),
                target_id: non_empty(request.target_id),
                start_time: request.start_time.map(|t| convert::time_from_proto("start_time", t)).transpose()?,
                end_time: request.end_time.map(|t| convert::time_from_proto("end_time", t)).transpose()?,
            },
            org_id: request.org_id,
            page: PageRequest { size: request.page_size, token: request.page_token },
        };
        let page = self.audit.list(&ctx, query).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            audit_events: page.items.into_iter().map(convert::audit_event_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn verify_audit_chain(
        &self,
        request: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        let ctx = request_context(&self.auth, &request).await?;
        let report = self.audit.verify_chain(&ctx, &request.get_ref().org_id).await?;
        let (first_broken_seq, first_broken_id, problem) = report
            .first_broken
            .clone()
            .map(|(seq, id, problem)| (u64::try_from(seq).unwrap_or(0), id, problem))
            .unwrap_or_default();
        Ok(Response::new(pb::VerifyAuditChainResponse {
            intact: report.first_broken.is_none(),
            events_checked: report.events_checked,
            first_broken_seq,
            first_broken_id,
            problem,
        }))
    }
}
