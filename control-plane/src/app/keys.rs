//! The keys subsystem: orgs, keys, identities, credits, usage, the audit log and
//! the key-event feed sidecars watch, with their sweeps and their gRPC
//! services.

use std::sync::Arc;
use std::time::Duration;

use keyplane_proto::admin::v1::api_key_service_server::ApiKeyServiceServer;
use keyplane_proto::admin::v1::audit_service_server::AuditServiceServer;
use keyplane_proto::admin::v1::identity_service_server::IdentityServiceServer;
use keyplane_proto::admin::v1::org_service_server::OrgServiceServer;
use keyplane_proto::admin::v1::role_service_server::RoleServiceServer;
use keyplane_proto::admin::v1::usage_service_server::UsageServiceServer;
use keyplane_proto::sync::v1::key_sync_service_server::KeySyncServiceServer;

use super::Core;
use super::grpc::GrpcServices;
use crate::config::Config;
use crate::error::Result;
use crate::grpc;
use crate::service::retention;
use crate::service::sync::{FeedSettings, KeyEventFeed};
use crate::service::usage::ingest::{LocalUsage, UsageRecorder};
use crate::service::{
    AuditService, CreditService, IdentityService, KeyService, OrgService, RoleService, SidecarSync, UsageService,
};

/// How often old key events are compacted.
const KEY_EVENT_PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// The subsystem's services.
pub struct Keys {
    pub keys: Arc<KeyService>,
    pub identities: Arc<IdentityService>,
    pub roles: Arc<RoleService>,
    pub orgs: Arc<OrgService>,
    pub credits: Arc<CreditService>,
    pub usage: Arc<UsageService>,
    pub audit: Arc<AuditService>,
    sync: Arc<SidecarSync>,
}

impl Keys {
    /// Builds the services and starts their background work.
    pub async fn start(core: &Core, config: &Config) -> Result<Self> {
        let (db, background, stop) = (&core.db, &core.background, &core.background.stop);
        let recorder = Arc::new(UsageRecorder::new(db.clone(), core.metrics.clone(), core.wakeups.clone()));
        let local_usage = Arc::new(LocalUsage::new(recorder.clone()));
        let credits = Arc::new(CreditService::new(db.clone(), core.wakeups.clone(), config.credit_lease_ttl));
        let keys = Arc::new(KeyService::new(
            db.clone(),
            core.crypto.clone(),
            core.wakeups.clone(),
            core.verifier.clone(),
            local_usage.clone(),
            credits.clone(),
        ));
        let feed_settings = FeedSettings { heartbeat: config.heartbeat_interval, poll: config.event_poll_interval };
        let feed = KeyEventFeed::new(db.clone(), feed_settings, background.clone()).await?;
        let sync = Arc::new(SidecarSync::new(db.clone(), core.verifier.clone(), feed.clone(), recorder));

        let sweep = config.expiry_sweep_interval;
        background.spawn("key-event-tailer", feed.clone().tail(core.wakeups.key_events()));
        background.spawn("key-event-listener", feed.wake_on_notifications(core.wakeups.key_events()));
        let expiring = config.key_expiring_notice;
        background.spawn("expire-keys", retention::expire_keys(keys.clone(), sweep, expiring, stop.clone()));
        background.spawn("refill-credits", retention::refill_credits(credits.clone(), sweep, stop.clone()));
        if let Some(after) = config.delete_expired_keys_after {
            background.spawn("purge-ended-keys", retention::purge_ended_keys(keys.clone(), after, stop.clone()));
        }
        let retention = config.key_event_retention;
        let purge = retention::purge_key_events(db.clone(), retention, KEY_EVENT_PURGE_INTERVAL, stop.clone());
        background.spawn("purge-key-events", purge);
        let usage = &config.usage;
        let purge =
            retention::purge_usage_rollups(db.clone(), usage.retention(), usage.report_dedup_window, stop.clone());
        background.spawn("purge-usage-rollups", purge);
        background.spawn("usage-flush", local_usage.flush_every(usage.flush_interval, stop.clone()));

        Ok(Self {
            keys,
            identities: Arc::new(IdentityService::new(db.clone(), core.wakeups.clone())),
            roles: Arc::new(RoleService::new(db.clone(), core.wakeups.clone())),
            orgs: Arc::new(OrgService::new(db.clone(), core.wakeups.clone())),
            credits,
            usage: Arc::new(UsageService::new(db.clone(), usage.retention(), usage.ranking_cache_bytes())),
            audit: Arc::new(AuditService::new(db.clone())),
            sync,
        })
    }

    /// Adds the subsystem's gRPC services.
    pub async fn serve(self, core: &Core, grpc: &mut GrpcServices) {
        let auth = &core.auth;
        grpc.add(ApiKeyServiceServer::new(grpc::api_keys::ApiKeyGrpc::new(self.keys, auth.clone()))).await;
        grpc.add(IdentityServiceServer::new(grpc::identities::IdentityGrpc::new(self.identities, auth.clone()))).await;
        grpc.add(RoleServiceServer::new(grpc::roles::RoleGrpc::new(self.roles, auth.clone()))).await;
        grpc.add(OrgServiceServer::new(grpc::orgs::OrgGrpc::new(self.orgs, auth.clone()))).await;
        grpc.add(UsageServiceServer::new(grpc::usage::UsageGrpc::new(self.usage, auth.clone()))).await;
        grpc.add(AuditServiceServer::new(grpc::audit::AuditGrpc::new(self.audit, auth.clone()))).await;
        let sync = grpc::key_sync::KeySyncGrpc::new(self.sync, self.credits, auth.clone());
        grpc.add(KeySyncServiceServer::new(sync)).await;
    }
}
