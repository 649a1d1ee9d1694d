//! `keyplane.sync.v1.KeySyncService` over [`SidecarSync`].

use std::pin::Pin;
use std::sync::Arc;

use keyplane_proto::sync::v1 as pb;
use pb::key_sync_service_server::KeySyncService;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{convert, sidecar_context};
use crate::error::Error;
use crate::service::records::{HolderId, KeyEventKind};
use crate::service::sync::FeedMessage;
use crate::service::{Authenticator, CreditService, SidecarSync};

/// The gRPC adapter of the sidecar protocol.
pub struct KeySyncGrpc {
    sync: Arc<SidecarSync>,
    credits: Arc<CreditService>,
    auth: Authenticator,
}

impl KeySyncGrpc {
    pub fn new(sync: Arc<SidecarSync>, credits: Arc<CreditService>, auth: Authenticator) -> Self {
        Self { sync, credits, auth }
    }
}

fn event_kind(kind: KeyEventKind) -> pb::KeyEventKind {
    match kind {
        KeyEventKind::Revoked => pb::KeyEventKind::Revoked,
        KeyEventKind::Deleted => pb::KeyEventKind::Deleted,
        KeyEventKind::Updated => pb::KeyEventKind::Updated,
        KeyEventKind::Expired => pb::KeyEventKind::Expired,
    }
}

fn to_proto(message: FeedMessage, interval: Option<prost_types::Duration>) -> pb::WatchResponse {
    let seq = |s: i64| u64::try_from(s).unwrap_or(0);
    let message = match message {
        FeedMessage::Event(event) => pb::watch_response::Message::Event(pb::KeyEvent {
            seq: seq(event.seq),
            kind: event_kind(event.kind).into(),
            key_id: event.key_id,
        }),
        FeedMessage::Heartbeat(head) => {
            pb::watch_response::Message::Heartbeat(pb::Heartbeat { head_seq: seq(head), interval })
        }
        FeedMessage::Reset(head) => pb::watch_response::Message::Reset(pb::Reset { head_seq: seq(head) }),
    };
    pb::WatchResponse { message: Some(message) }
}

/// The Watch response stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl KeySyncService for KeySyncGrpc {
    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let ctx = sidecar_context(&self.auth, &request).await?;
        let (verification, as_of) = self.sync.verify(&ctx, &request.get_ref().token).await?;
        let (valid, failure, principal) = convert::verification_to_proto(&verification);
        Ok(Response::new(pb::VerifyResponse {
            valid,
            failure: failure.into(),
            principal,
            as_of_seq: u64::try_from(as_of).unwrap_or(0),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let ctx = sidecar_context(&self.auth, &request).await?;
        let after =
            i64::try_from(request.get_ref().after_seq).map_err(|_| Error::invalid("after_seq", "is out of range"))?;
        let request = request.into_inner();
        let receiver = self.sync.watch(&ctx, after, request.from_head, request.org_ids)?;
        let interval = prost_types::Duration::try_from(self.sync.heartbeat_interval()).ok();
        let stream =
            ReceiverStream::new(receiver).map(move |item| item.map(|m| to_proto(m, interval)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_usage(
        &self,
        request: Request<pb::ReportUsageRequest>,
    ) -> Result<Response<pb::ReportUsageResponse>, Status> {
        let ctx = sidecar_context(&self.auth, &request).await?;
        let report = convert::usage_report_from_proto(request.into_inner())?;
        let applied = self.sync.report_usage(&ctx, report).await?;
        Ok(Response::new(pb::ReportUsageResponse { applied: applied.applied, duplicate: applied.duplicate }))
    }

    async fn lease_credits(
        &self,
        request: Request<pb::LeaseCreditsRequest>,
    ) -> Result<Response<pb::LeaseCreditsResponse>, Status> {
        let ctx = sidecar_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let lease =
            self.credits.lease(&ctx, &HolderId::parse(&request.key_id), request.requested, request.at_least).await?;
        Ok(Response::new(pb::LeaseCreditsResponse {
            lease_id: lease.id,
            granted: lease.granted,
            ttl: prost_types::Duration::try_from(lease.ttl).ok(),
            next_refill_at: lease.next_refill_at.map(convert::time_to_proto),
        }))
    }

    async fn lease_requests(
        &self,
        request: Request<pb::LeaseRequestsRequest>,
    ) -> Result<Response<pb::LeaseRequestsResponse>, Status> {
        let ctx = sidecar_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let (granted, window_left) =
            self.credits.lease_requests(&ctx, &HolderId::parse(&request.key_id), request.requested).await?;
        Ok(Response::new(pb::LeaseRequestsResponse {
            granted,
            window_left: prost_types::Duration::try_from(window_left).ok(),
        }))
    }

    async fn return_credits(
        &self,
        request: Request<pb::ReturnCreditsRequest>,
    ) -> Result<Response<pb::ReturnCreditsResponse>, Status> {
        let ctx = sidecar_context(&self.auth, &request).await?;
        let request = request.into_inner();
        let returned = self.credits.give_back(&ctx, &request.lease_id, request.unused).await?;
        Ok(Response::new(pb::ReturnCreditsResponse { returned }))
    }
}
