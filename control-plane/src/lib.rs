//! Keyplane control plane: issues, verifies and revokes API keys, delivers
//! webhooks, records every change in a tamper-evident audit log, and serves
//! the admin gRPC API.
//!
//! [`run`] wires everything; `main.rs` only parses, binds and waits for a signal.

pub mod availability;
pub mod background;
pub mod bootstrap;
pub mod config;
pub mod console;
pub mod crypto;
pub mod egress;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod oauth;
pub mod service;
pub mod store;
pub mod tls;
pub mod wakeups;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyplane_proto::admin::v1::api_key_service_server::ApiKeyServiceServer;
use keyplane_proto::admin::v1::audit_service_server::AuditServiceServer;
use keyplane_proto::admin::v1::connection_service_server::ConnectionServiceServer;
use keyplane_proto::admin::v1::delivery_service_server::DeliveryServiceServer;
use keyplane_proto::admin::v1::event_service_server::EventServiceServer;
use keyplane_proto::admin::v1::identity_service_server::IdentityServiceServer;
use keyplane_proto::admin::v1::usage_service_server::UsageServiceServer;
use keyplane_proto::admin::v1::webhook_service_server::WebhookServiceServer;
use keyplane_proto::sync::v1::key_sync_service_server::KeySyncServiceServer;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpConnectInfo;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use background::Background;
pub use config::Config;
use crypto::{SecretHasher, TokenFormat};
pub use error::{Error, Result};
use service::admission::Admission;
use service::sessions::SessionSettings;
use service::sync::{FeedSettings, KeyEventFeed};
use service::usage::ingest::{LocalUsage, UsageRecorder};
use service::verify::AbuseLimits;
use service::webhooks::PortalLinks;
use service::webhooks::dispatch::queue::DispatchQueue;
use service::{
    AuditService, Authenticator, ConnectionService, CreditService, Crypto, DeliveryService, Dispatcher, EventService,
    IdentityService, KeyService, SessionService, SidecarSync, UsageService, Verifier, WebhookService, retention,
};

/// Sockets the control plane serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    /// gRPC API.
    pub grpc: TcpListener,
    /// Prometheus `/metrics`, if enabled.
    pub metrics: Option<TcpListener>,
    /// The web console, if enabled.
    pub console: Option<TcpListener>,
}

/// Verified secrets remembered by the verifier.
const VERIFIED_SECRETS_CAPACITY: u64 = 100_000;
/// How often old key events are compacted.
const KEY_EVENT_PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the control plane until `shutdown` resolves, then drains in-flight
/// calls and background work (deliveries in flight are recorded).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // reqwest brings aws-lc and sqlx brings ring: pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    config.validate()?;
    bootstrap::data_dir(&config.storage.data_dir)?;
    let root_token = bootstrap::root_token(&config)?;
    let tls = tls::ReloadingTls::load(&config.tls)?;
    let grpc_addr = listeners.grpc.local_addr()?;
    if tls.is_none() && !grpc_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %grpc_addr,
            "serving plaintext gRPC on a non-loopback address: credentials cross the network in clear; \
             set --tls-cert-file and --tls-key-file"
        );
    }
    let master_keys = Arc::new(bootstrap::master_keys(&config)?);
    let providers = match &config.oauth_providers {
        Some(path) => oauth::Providers::load(path)?,
        None => oauth::Providers::default(),
    };

    let db = config.storage.connect().await?;
    store::migrate(&db).await?;
    let metrics = Arc::new(metrics::Metrics::default());
    let workers = config.hash_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let crypto = Arc::new(Crypto {
        tokens: TokenFormat::new(config.token_prefix.clone()),
        hasher: SecretHasher::new(config.hashing_params(), workers)?,
        master_keys: master_keys.clone(),
    });
    let wakeups = wakeups::Wakeups::default();
    let dispatch_queue = DispatchQueue::new(wakeups.clone());
    let background = Background::default();

    let verifier = Arc::new(Verifier::new(
        db.clone(),
        crypto.clone(),
        metrics.clone(),
        VERIFIED_SECRETS_CAPACITY,
        config.abuse_limits(),
    ));
    let admission = Arc::new(Admission::new(config.admission_limits(), metrics.clone()));
    let auth = Authenticator::new(root_token.as_deref(), verifier.clone(), admission);
    let recorder = Arc::new(UsageRecorder::new(db.clone(), metrics.clone()));
    let local_usage = Arc::new(LocalUsage::new(recorder.clone()));
    let credits = Arc::new(CreditService::new(db.clone(), wakeups.clone(), config.credit_lease_ttl));
    let keys = Arc::new(KeyService::new(
        db.clone(),
        crypto.clone(),
        wakeups.clone(),
        verifier.clone(),
        local_usage.clone(),
        credits.clone(),
    ));
    let identities = Arc::new(IdentityService::new(db.clone(), wakeups.clone()));
    let usage = Arc::new(UsageService::new(db.clone(), config.usage.retention(), config.usage.ranking_cache_bytes()));
    let audit = Arc::new(AuditService::new(db.clone()));
    let feed_settings = FeedSettings { heartbeat: config.heartbeat_interval, poll: config.event_poll_interval };
    let feed = KeyEventFeed::new(db.clone(), feed_settings, background.clone()).await?;
    let sync = Arc::new(SidecarSync::new(db.clone(), verifier, feed.clone(), recorder));
    let egress = Arc::new(config.egress_policy());
    let policy = Arc::new(config.webhooks.policy(egress.clone()));
    let webhooks = Arc::new(WebhookService::new(db.clone(), master_keys.clone(), policy.clone()));
    let console_url = match (&config.console.url, &listeners.console) {
        (Some(url), _) => Some(url.trim_end_matches('/').to_owned()),
        (None, Some(listener)) => {
            Some(format!("{}://{}", if tls.is_some() { "https" } else { "http" }, listener.local_addr()?))
        }
        (None, None) => None,
    };
    let portal = Arc::new(PortalLinks::new(db.clone(), console_url.clone()));
    let events = Arc::new(EventService::new(db.clone(), dispatch_queue.clone(), policy, metrics.clone(), &background));
    let deliveries = Arc::new(DeliveryService::new(db.clone(), wakeups.clone()));
    let oauth_client = oauth::OAuthClient::new(&egress, config.oauth_timeout)?;
    let connections = Arc::new(ConnectionService::new(db.clone(), master_keys.clone(), providers, oauth_client));
    let dispatcher = Dispatcher::new(
        db.clone(),
        master_keys,
        metrics.clone(),
        dispatch_queue,
        config.webhooks.dispatch_settings(),
        &egress,
        background.clone(),
    )?;

    let stop = &background.stop;
    if let Some(listener) = listeners.console {
        let settings = SessionSettings { idle: config.console.session_idle, lifetime: config.console.session_lifetime };
        let sessions = Arc::new(SessionService::new(db.clone(), auth.clone(), settings));
        let console = Arc::new(console::Console {
            keys: keys.clone(),
            webhooks: webhooks.clone(),
            deliveries: deliveries.clone(),
            audit: audit.clone(),
            connections: connections.clone(),
            usage: usage.clone(),
            portal: portal.clone(),
            sessions: sessions.clone(),
            secure_cookies: config.console.secure_cookies || tls.is_some(),
        });
        let sign_in = match bootstrap_root_hint(&config) {
            Some(path) => format!("the root token in {path}, or a Keyplane API key with keyplane: scopes"),
            None => "a Keyplane API key with keyplane: scopes (see keyplane create-admin-key)".to_owned(),
        };
        tracing::info!(url = console_url.as_deref().unwrap_or_default(), sign_in = %sign_in, "web console serving");
        let incoming = tls::incoming(listener, tls.clone(), &background);
        background.spawn("console", console::serve(incoming, console::router(console), background.clone()));
        background.spawn("purge-console-sessions", retention::purge_console_sessions(sessions, stop.clone()));
    }
    background.spawn("webhook-dispatcher", dispatcher.run(stop.clone()));
    background.spawn("key-event-tailer", feed.clone().tail(wakeups.key_events()));
    background.spawn("key-event-listener", feed.clone().wake_on_notifications(wakeups.key_events()));
    background.spawn("expire-keys", retention::expire_keys(keys.clone(), config.expiry_sweep_interval, stop.clone()));
    background.spawn(
        "refill-credits",
        retention::refill_credits(credits.clone(), config.expiry_sweep_interval, stop.clone()),
    );
    if let Some(after) = config.delete_expired_keys_after {
        background.spawn("purge-ended-keys", retention::purge_ended_keys(keys.clone(), after, stop.clone()));
    }
    background.spawn(
        "purge-key-events",
        retention::purge_key_events(db.clone(), config.key_event_retention, KEY_EVENT_PURGE_INTERVAL, stop.clone()),
    );
    background.spawn(
        "purge-delivered-webhooks",
        retention::purge_delivered_webhooks(db.clone(), config.webhooks.delivery_retention, stop.clone()),
    );
    background.spawn(
        "purge-usage-rollups",
        retention::purge_usage_rollups(
            db.clone(),
            config.usage.retention(),
            config.usage.report_dedup_window,
            stop.clone(),
        ),
    );
    background.spawn("usage-flush", local_usage.flush_every(config.usage.flush_interval, stop.clone()));
    if let Some(tls) = &tls {
        background.spawn("tls-reload", tls.clone().reload_on_change(config.tls.reload_interval, stop.clone()));
    }
    if let Some(listener) = listeners.metrics {
        background.spawn("metrics-server", metrics::serve(listener, metrics.clone(), background.clone()));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ApiKeyServiceServer<grpc::api_keys::ApiKeyGrpc>>().await;
    health_reporter.set_serving::<AuditServiceServer<grpc::audit::AuditGrpc>>().await;
    health_reporter.set_serving::<KeySyncServiceServer<grpc::key_sync::KeySyncGrpc>>().await;
    health_reporter.set_serving::<WebhookServiceServer<grpc::webhooks::WebhookGrpc>>().await;
    health_reporter.set_serving::<EventServiceServer<grpc::events::EventGrpc>>().await;
    health_reporter.set_serving::<DeliveryServiceServer<grpc::deliveries::DeliveryGrpc>>().await;
    health_reporter.set_serving::<ConnectionServiceServer<grpc::connections::ConnectionGrpc>>().await;
    health_reporter.set_serving::<UsageServiceServer<grpc::usage::UsageGrpc>>().await;
    health_reporter.set_serving::<IdentityServiceServer<grpc::identities::IdentityGrpc>>().await;
    let reachability = availability::Reachability::default();
    let timeout = config.database_probe_timeout;
    if let Some(probe) = store::connect_probe(&config.storage.database_url(), timeout).await? {
        let probing = reachability.clone().probe(probe, timeout, health_reporter, stop.clone());
        background.spawn("database-probe", probing);
    }

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keyplane_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Config(format!("reflection: {e}")))?;

    tracing::info!(
        addr = %grpc_addr,
        database = if config.storage.is_postgres() { "postgres" } else { "sqlite" },
        tls = match &tls {
            None => "off",
            Some(tls) if tls.requires_client_certificates() => "mtls",
            Some(_) => "on",
        },
        "keyplane control plane serving"
    );
    let request_span = |request: &http::Request<_>| {
        let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let peer = request.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr);
        let peer = peer.map(|addr| addr.to_string()).unwrap_or_default();
        tracing::info_span!("rpc", method = %request.uri().path(), request_id = %request_id, peer = %peer)
    };
    let stopping = stop.clone();
    let result = Server::builder()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_grpc().make_span_with(request_span))
        .layer(availability::DatabaseGate(reachability))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ApiKeyServiceServer::new(grpc::api_keys::ApiKeyGrpc::new(keys, auth.clone())))
        .add_service(AuditServiceServer::new(grpc::audit::AuditGrpc::new(audit, auth.clone())))
        .add_service(WebhookServiceServer::new(grpc::webhooks::WebhookGrpc::new(webhooks, portal, auth.clone())))
        .add_service(EventServiceServer::new(grpc::events::EventGrpc::new(events, auth.clone())))
        .add_service(DeliveryServiceServer::new(grpc::deliveries::DeliveryGrpc::new(deliveries, auth.clone())))
        .add_service(ConnectionServiceServer::new(grpc::connections::ConnectionGrpc::new(connections, auth.clone())))
        .add_service(UsageServiceServer::new(grpc::usage::UsageGrpc::new(usage, auth.clone())))
        .add_service(IdentityServiceServer::new(grpc::identities::IdentityGrpc::new(identities, auth.clone())))
        .add_service(KeySyncServiceServer::new(grpc::key_sync::KeySyncGrpc::new(sync, credits, auth)))
        .serve_with_incoming_shutdown(tls::incoming(listeners.grpc, tls, &background), async move {
            shutdown.await;
            // Watch streams never end by themselves: the feed ends them when
            // stopped, so the server can drain.
            stopping.cancel();
        })
        .await;

    background.drain().await;
    db.close().await?;
    tracing::info!("keyplane control plane stopped");
    Ok(result?)
}

/// Where the root token file is, for the console's start-up line (the path, never the token).
fn bootstrap_root_hint(config: &Config) -> Option<String> {
    config.root_token_path().filter(|path| path.exists()).map(|path| path.display().to_string())
}

/// Opens the database named by `storage` with its migrations applied and a
/// key service over it, for the operator's commands.
async fn operator_services(
    storage: &config::StorageArgs,
    master_keys: crypto::MasterKeys,
    token_prefix: &str,
) -> Result<(DatabaseConnection, KeyService)> {
    let db = storage.connect().await?;
    store::migrate(&db).await?;
    let crypto = Arc::new(Crypto {
        tokens: TokenFormat::new(token_prefix.to_owned()),
        hasher: SecretHasher::new(crypto::HashingParams::default(), 1)?,
        master_keys: Arc::new(master_keys),
    });
    let metrics = Arc::new(metrics::Metrics::default());
    let limits =
        AbuseLimits { failures_per_key: 1, failure_window: Duration::from_secs(1), suspect_hashes_per_second: 1 };
    let verifier = Arc::new(Verifier::new(db.clone(), crypto.clone(), metrics.clone(), 1, limits));
    let usage = Arc::new(LocalUsage::new(Arc::new(UsageRecorder::new(db.clone(), metrics))));
    let credits =
        Arc::new(CreditService::new(db.clone(), wakeups::Wakeups::default(), config::DEFAULT_CREDIT_LEASE_TTL));
    let keys = KeyService::new(db.clone(), crypto, wakeups::Wakeups::default(), verifier, usage, credits);
    Ok((db, keys))
}

/// What `keyplane migrate` does before it reports applied and pending migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Apply,
    /// Change nothing.
    Status,
    /// Undo this many applied migrations, newest first.
    Rollback(u32),
}

/// `keyplane migrate`: applies pending migrations, rolls back the newest, or
/// only reports them.
pub async fn migrate(storage: &config::StorageArgs, action: MigrateAction) -> Result<(Vec<String>, Vec<String>)> {
    if !storage.is_postgres() {
        bootstrap::data_dir(&storage.data_dir)?;
    }
    let db = storage.connect().await?;
    match action {
        MigrateAction::Apply => store::migrate(&db).await?,
        MigrateAction::Status => {}
        MigrateAction::Rollback(count) => store::roll_back(&db, count).await?,
    }
    let report = (store::applied_migrations(&db).await?, store::pending_migrations(&db).await?);
    db.close().await?;
    Ok(report)
}

/// `keyplane create-admin-key`: creates a platform admin key (org
/// `keyplane`, scope `keyplane:admin`) straight in the database, audited with
/// actor `operator`, and returns its token (shown once by the caller).
pub async fn create_admin_key(
    storage: &config::StorageArgs,
    master_key_file: Option<&std::path::Path>,
    name: &str,
    token_prefix: &str,
) -> Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = match master_key_file {
        Some(path) => crypto::MasterKeys::load(path)?,
        None if storage.is_postgres() => {
            return Err(Error::Config("Postgres needs --master-key-file (or KEYPLANE_MASTER_KEY_FILE)".into()));
        }
        None => {
            bootstrap::data_dir(&storage.data_dir)?;
            crypto::MasterKeys::load(&storage.data_dir.join("master-key"))?
        }
    };
    let (db, keys) = operator_services(storage, keys, token_prefix).await?;
    let issued = keys.create_admin_key(name).await;
    db.close().await?;
    Ok(issued?.token)
}

/// `keyplane reseal`: re-encrypts every sealed value under the newest key in
/// `master_key_file` (default `<data-dir>/master-key`).
pub async fn reseal(
    storage: &config::StorageArgs,
    master_key_file: Option<&std::path::Path>,
) -> Result<service::reseal::ResealReport> {
    let path = master_key_file.map_or_else(|| storage.data_dir.join("master-key"), std::path::Path::to_path_buf);
    let keys = crypto::MasterKeys::load(&path)?;
    let db = storage.connect().await?;
    let report = service::reseal::reseal_all(&db, &keys).await;
    db.close().await?;
    report
}
