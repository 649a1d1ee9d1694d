//! Keyplane control plane: issues, verifies and revokes API keys, delivers
//! webhooks, records every change in a tamper-evident audit log, and serves
//! the admin gRPC API.
//!
//! [`run`] wires everything; `main.rs` only parses, binds and waits for a signal.

pub mod availability;
pub mod bootstrap;
pub mod config;
pub mod crypto;
pub mod egress;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod oauth;
pub mod service;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keyplane_proto::admin::v1::api_key_service_server::ApiKeyServiceServer;
use keyplane_proto::admin::v1::audit_service_server::AuditServiceServer;
use keyplane_proto::admin::v1::connection_service_server::ConnectionServiceServer;
use keyplane_proto::admin::v1::delivery_service_server::DeliveryServiceServer;
use keyplane_proto::admin::v1::event_service_server::EventServiceServer;
use keyplane_proto::admin::v1::webhook_service_server::WebhookServiceServer;
use keyplane_proto::sync::v1::key_sync_service_server::KeySyncServiceServer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpConnectInfo;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use config::Config;
use crypto::{SecretHasher, TokenFormat};
pub use error::{Error, Result};
use service::dispatch::DispatchSettings;
use service::sync::{FeedSettings, KeyEventFeed};
use service::verify::AbuseLimits;
use service::webhooks::WebhookPolicy;
use service::{
    AuditService, Authenticator, ConnectionService, Core, DeliveryService, Dispatcher, EventService, KeyService,
    Verifier, WebhookService,
};

/// Sockets the control plane serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    /// gRPC API.
    pub grpc: TcpListener,
    /// Prometheus `/metrics`, if enabled.
    pub metrics: Option<TcpListener>,
}

/// Verified secrets remembered by the verifier.
const VERIFIED_SECRETS_CAPACITY: u64 = 100_000;
/// How often old key events are compacted.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Runs the control plane until `shutdown` resolves, then drains in-flight calls.
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
    let master_keys = bootstrap::master_keys(&config)?;
    let dispatch_settings = DispatchSettings::new(&config.webhooks)?;
    let providers = match &config.oauth_providers {
        Some(path) => oauth::Providers::load(path)?,
        None => oauth::Providers::default(),
    };

    let db = config.storage.connect().await?;
    store::migrate(&db).await?;
    let metrics = Arc::new(metrics::Metrics::default());
    let workers = config.hash_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let core = Arc::new(Core::new(
        db.clone(),
        TokenFormat::new(config.token_prefix.clone()),
        SecretHasher::new(config.hashing_params(), workers)?,
        master_keys,
        metrics.clone(),
    ));
    let verifier = Arc::new(Verifier::new(core.clone(), VERIFIED_SECRETS_CAPACITY, abuse_limits(&config)));
    let auth = Authenticator::new(root_token.as_deref(), verifier.clone());
    let keys = Arc::new(KeyService::new(core.clone(), verifier.clone()));
    let audit = Arc::new(AuditService::new(core.clone()));
    let feed = KeyEventFeed::new(
        core.clone(),
        FeedSettings { heartbeat: config.heartbeat_interval, poll: config.event_poll_interval },
    )
    .await?;
    let closing_feed = feed.clone();
    let egress = Arc::new(egress::EgressPolicy {
        allowed_networks: config.egress.allow_cidr.clone(),
        allow_http: config.egress.allow_http,
    });
    let policy = Arc::new(WebhookPolicy::new(egress.clone(), &config.webhooks));
    let webhooks = Arc::new(WebhookService::new(core.clone(), policy.clone()));
    let events = Arc::new(EventService::new(core.clone(), policy));
    let deliveries = Arc::new(DeliveryService::new(core.clone()));
    let oauth_client = oauth::OAuthClient::new(&egress, config.oauth_timeout)?;
    let connections = Arc::new(ConnectionService::new(core.clone(), providers, oauth_client));
    let dispatcher = Dispatcher::new(core.clone(), dispatch_settings, egress)?;
    let (stop_dispatcher, dispatcher_stop) = tokio::sync::watch::channel(false);
    let dispatcher_task = tokio::spawn(dispatcher.run(dispatcher_stop));
    let mut background = vec![
        tokio::spawn(feed.clone().tail(core.key_events_committed.clone())),
        tokio::spawn(service::sync::enforce_retention(core.clone(), config.key_event_retention, RETENTION_INTERVAL)),
        tokio::spawn(service::dispatch::enforce_retention(core.clone(), config.webhooks.delivery_retention)),
    ];
    if let Some(tls) = &tls {
        background.push(tokio::spawn(tls.clone().reload_on_change(config.tls.reload_interval)));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<ApiKeyServiceServer<grpc::api_keys::ApiKeyGrpc>>().await;
    health_reporter.set_serving::<AuditServiceServer<grpc::audit::AuditGrpc>>().await;
    health_reporter.set_serving::<KeySyncServiceServer<grpc::key_sync::KeySyncGrpc>>().await;
    health_reporter.set_serving::<WebhookServiceServer<grpc::webhooks::WebhookGrpc>>().await;
    health_reporter.set_serving::<EventServiceServer<grpc::events::EventGrpc>>().await;
    health_reporter.set_serving::<DeliveryServiceServer<grpc::deliveries::DeliveryGrpc>>().await;
    health_reporter.set_serving::<ConnectionServiceServer<grpc::connections::ConnectionGrpc>>().await;
    let reachability = availability::Reachability::default();
    let probe = store::connect_probe(&config.storage.database_url(), config.database_probe_timeout).await?;
    let health_task = probe
        .map(|probe| tokio::spawn(reachability.clone().probe(probe, config.database_probe_timeout, health_reporter)));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keyplane_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = listeners.metrics.map(|listener| {
        tokio::spawn(metrics::serve(listener, metrics.clone(), async {
            let _ = metrics_stopped.await;
        }))
    });

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
        .add_service(WebhookServiceServer::new(grpc::webhooks::WebhookGrpc::new(webhooks, auth.clone())))
        .add_service(EventServiceServer::new(grpc::events::EventGrpc::new(events, auth.clone())))
        .add_service(DeliveryServiceServer::new(grpc::deliveries::DeliveryGrpc::new(deliveries, auth.clone())))
        .add_service(ConnectionServiceServer::new(grpc::connections::ConnectionGrpc::new(connections, auth.clone())))
        .add_service(KeySyncServiceServer::new(grpc::key_sync::KeySyncGrpc::new(core, verifier, feed, auth)))
        .serve_with_incoming_shutdown(tls::incoming(listeners.grpc, tls), async move {
            shutdown.await;
            // Watch streams never end by themselves: end them so the server drains.
            closing_feed.close();
        })
        .await;

    if let Some(task) = health_task {
        task.abort();
    }
    let _ = stop_dispatcher.send(true);
    let _ = dispatcher_task.await;
    for task in background {
        task.abort();
    }
    let _ = stop_metrics.send(());
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    db.close().await?;
    tracing::info!("keyplane control plane stopped");
    Ok(result?)
}

fn abuse_limits(config: &Config) -> AbuseLimits {
    AbuseLimits {
        failures_per_key: config.abuse.failures_per_key,
        failure_window: config.abuse.failure_window,
        suspect_hashes_per_second: config.abuse.suspect_hashes_per_second,
    }
}

/// `keyplane migrate`: applies pending migrations (or only reports them).
pub async fn migrate(storage: &config::StorageArgs, status_only: bool) -> Result<(Vec<String>, Vec<String>)> {
    if !storage.is_postgres() {
        bootstrap::data_dir(&storage.data_dir)?;
    }
    let db = storage.connect().await?;
    if !status_only {
        store::migrate(&db).await?;
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
    let db = storage.connect().await?;
    store::migrate(&db).await?;
    let core = Arc::new(Core::new(
        db.clone(),
        TokenFormat::new(token_prefix.to_owned()),
        SecretHasher::new(crypto::HashingParams::default(), 1)?,
        keys,
        Arc::new(metrics::Metrics::default()),
    ));
    let verifier = Arc::new(Verifier::new(
        core.clone(),
        1,
        AbuseLimits { failures_per_key: 1, failure_window: Duration::from_secs(1), suspect_hashes_per_second: 1 },
    ));
    let issued = KeyService::new(core, verifier).create_admin_key(name).await;
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
