//! Keyplane sidecar: answers "is this key allowed?" next to an application,
//! from a cache kept correct by the control plane's key-event stream.
//!
//! Front ends: Envoy ext_authz gRPC ([`ext_authz`]) and HTTP forward-auth
//! ([`http`]). Both call the same [`check::Checker`]. No database.

pub mod cache;
pub mod check;
pub mod client_address;
pub mod config;
pub mod control_plane;
pub mod credits;
pub mod error;
pub mod ext_authz;
pub mod failover;
pub mod http;
pub mod listen;
pub mod log_sample;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod sync;
pub mod usage;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use keyplane_proto::sync::v1::key_sync_service_client::KeySyncServiceClient;
use keyplane_proto::token::TokenFormat;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

pub use config::Config;
pub use error::{Error, Result};
use listen::CopiedWrites;
pub use listen::Listener;

/// Sockets the sidecar serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    /// ext_authz gRPC, health, reflection.
    pub grpc: Listener,
    /// Forward-auth, health, readiness, metrics.
    pub http: Listener,
}

/// How often health and staleness gauges are refreshed.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// Idle rate limiters are dropped after this long.
const LIMITER_IDLE: Duration = Duration::from_secs(600);

/// Warns when the credential file can be read by others than its owner
/// (it holds an API key that can verify every key of its org).
fn warn_if_shared(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else { return };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{mode:o}"),
            "the credential file is readable by other users: chmod 600 it"
        );
    }
}

/// Runs the sidecar until `shutdown` resolves; then stops its background
/// work and sends the last usage counts.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let credential = std::fs::read_to_string(&config.credential_file)
        .map_err(|e| Error::Config(format!("cannot read credential file {}: {e}", config.credential_file.display())))?;
    warn_if_shared(&config.credential_file);
    let credential = control_plane::Credential::bearer(credential.trim())?;
    // tonic's TLS uses rustls; make ring the process-wide provider explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let failover = control_plane::control_plane_channel(&config).await?;
    let client = KeySyncServiceClient::new(InterceptedService::new(failover.clone(), credential));

    let metrics = Arc::new(metrics::Metrics::default());
    let cache = cache::KeyCache::new(config.cache_capacity, config.cache_ttl, config.negative_cache_ttl);
    let state = Arc::new(sync::SyncState::default());
    let usage = usage::UsageReporter::new(metrics.clone());
    let lease = |budget| {
        Arc::new(credits::CreditLeases::new(budget, client.clone(), config.control_plane_timeout, metrics.clone()))
    };
    let credits = lease(credits::Budget::Credits);
    let global_limits = lease(credits::Budget::Requests);
    let checker = Arc::new(check::Checker::new(check::CheckerParts {
        tokens: TokenFormat::new(config.token_prefix.clone()),
        imported_prefixes: config.imported_token_prefixes.clone(),
        orgs: config.orgs.iter().cloned().collect(),
        environment: config.environment,
        max_staleness: config.max_staleness,
        fail_open: config.fail_open,
        expose_denial_reasons: config.expose_denial_reasons,
        control_plane_timeout: config.control_plane_timeout,
        cache: cache.clone(),
        limits: ratelimit::RateLimits::new(config.cache_capacity, LIMITER_IDLE),
        credits: credits.clone(),
        global_limits: global_limits.clone(),
        usage: usage.clone(),
        sync: state.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
    }));

    // One cancellation signal and one task set for all background work.
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let follow = sync::follow(
        (client.clone(), failover),
        cache,
        (credits.clone(), global_limits),
        state.clone(),
        metrics.clone(),
        (config.max_staleness, config.orgs.clone()),
    );
    spawn(&tasks, "key-event-stream", until(stop.clone(), follow));
    let reporting = usage.clone().report_every(client.clone(), config.usage_interval, config.control_plane_timeout);
    spawn(&tasks, "usage-reports", until(stop.clone(), reporting));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_not_serving::<AuthorizationServer<ext_authz::ExtAuthz>>().await;
    health_reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    let health = report_health(checker.clone(), state, metrics.clone(), health_reporter);
    spawn(&tasks, "health", until(stop.clone(), health));

    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(keyplane_proto::EXT_AUTHZ_FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| Error::Config(format!("reflection: {e}")))?;

    let strip = !config.keep_credential;
    let header = config.credential_header.to_ascii_lowercase();
    let credential_header = hyper::header::HeaderName::from_bytes(header.as_bytes())
        .map_err(|_| Error::Config(format!("--credential-header {header:?} is not a header name")))?;
    let front = Arc::new(http::HttpFrontEnd {
        checker: checker.clone(),
        metrics: metrics.clone(),
        credential_header,
        strip_credential: strip,
        default_scopes: config.default_scopes.clone(),
        routes: routes::Routes::new(&config.route_permissions),
        trusted_proxies: client_address::TrustedProxies::new(config.trusted_proxies.clone()),
    });
    let http_address = listeners.http.address_text();
    spawn(&tasks, "http", front.serve(listeners.http, stop.clone().cancelled_owned()));
    tracing::info!(
        grpc = %listeners.grpc.address_text(),
        http = %http_address,
        control_plane = %config.control_plane.join(","),
        environment = %config.environment,
        "keyplane sidecar serving"
    );
    let authz = ext_authz::ExtAuthz::new(checker, header, strip, config.default_scopes.clone());
    let router = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AuthorizationServer::new(authz));
    let stopping = stop.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };
    let result = match listeners.grpc {
        Listener::Tcp(listener) => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming.map(|connection| connection.map(CopiedWrites)), shutdown).await
        }
        Listener::Unix(listener) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming.map(|connection| connection.map(CopiedWrites)), shutdown).await
        }
    };

    stop.cancel();
    tasks.close();
    tasks.wait().await;
    // Give unspent credits back and send the last usage counts before exiting.
    credits.return_all().await;
    usage.flush(&mut client.clone(), config.control_plane_timeout).await;
    tracing::info!("keyplane sidecar stopped");
    Ok(result?)
}

/// Runs `task` in a tracing span named `task` with field `name`.
fn spawn(tasks: &TaskTracker, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
    tasks.spawn(task.instrument(tracing::info_span!("task", name)));
}

/// Runs `task` (a loop that never ends by itself) until `stop` is cancelled.
async fn until(stop: CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = task => {}
    }
}

/// Keeps grpc.health.v1 and the staleness gauge in line with the stream.
async fn report_health(
    checker: Arc<check::Checker>,
    state: Arc<sync::SyncState>,
    metrics: Arc<metrics::Metrics>,
    reporter: tonic_health::server::HealthReporter,
) {
    let mut serving = false;
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        metrics.staleness_seconds.set(state.silence().as_secs_f64());
        let ready = checker.readiness() == sync::Readiness::Fresh;
        if ready != serving {
            serving = ready;
            let status =
                if ready { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            if ready {
                reporter.set_serving::<AuthorizationServer<ext_authz::ExtAuthz>>().await;
            } else {
                reporter.set_not_serving::<AuthorizationServer<ext_authz::ExtAuthz>>().await;
            }
        }
    }
}
