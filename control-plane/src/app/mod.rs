//! [`run`]: the running control plane, built by subsystem. Each subsystem
//! (`keys.rs`, `webhooks.rs`, the console below) builds its services,
//! starts its background work on the one [`Background`] and adds its gRPC
//! services; this file holds what they share and the server around them.

mod grpc;
mod keys;
mod webhooks;

use std::future::Future;
use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tonic::transport::Server;
use tonic::transport::server::TcpConnectInfo;
use tower_http::classify::{GrpcCode, GrpcErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::background::Background;
use crate::config::Config;
use crate::crypto::{MasterKeys, SecretHasher, TokenFormat};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::service::admission::Admission;
use crate::service::oidc::{Oidc, OidcSettings};
use crate::service::sessions::{KeySignIn, SessionSettings};
use crate::service::{Authenticator, Crypto, SessionService, UserService, Verifier, retention};
use crate::tls::ReloadingTls;
use crate::wakeups::Wakeups;
use crate::{Listeners, availability, bootstrap, console, metrics, store, tls};
use grpc::GrpcServices;
use keys::Keys;
use webhooks::Webhooks;

/// Verified secrets remembered by the verifier.
const VERIFIED_SECRETS_CAPACITY: u64 = 100_000;

/// What every subsystem shares.
pub struct Core {
    pub db: DatabaseConnection,
    pub metrics: Arc<Metrics>,
    pub master_keys: Arc<MasterKeys>,
    pub crypto: Arc<Crypto>,
    pub verifier: Arc<Verifier>,
    pub auth: Authenticator,
    pub wakeups: Wakeups,
    pub background: Background,
}

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
    let _serving = bootstrap::serve_lock(&config.storage)?;
    let tls = ReloadingTls::load(&config.tls)?;
    let grpc_addr = listeners.grpc.local_addr()?;
    if tls.is_none() && !grpc_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %grpc_addr,
            "serving plaintext gRPC on a non-loopback address: credentials cross the network in clear; \
             set --tls-cert-file and --tls-key-file"
        );
    }
    // A bad sign-in file stops start-up before anything is served.
    let oidc = config.console.oidc_config.as_deref().map(|path| Oidc::new(OidcSettings::load(path)?)).transpose()?;
    let core = Core::start(&config).await?;
    let console_url = match (&config.console.url, &listeners.console) {
        (Some(url), _) => Some(url.trim_end_matches('/').to_owned()),
        (None, Some(listener)) => {
            Some(format!("{}://{}", if tls.is_some() { "https" } else { "http" }, listener.local_addr()?))
        }
        (None, None) => None,
    };
    let keys = Keys::start(&core, &config).await?;
    let webhooks = Webhooks::start(&core, &config, console_url.clone())?;
    let background = &core.background;
    if let Some(listener) = listeners.console {
        let url = console_url.as_deref();
        start_console(&core, &config, (&keys, &webhooks), oidc, listener, tls.clone(), url);
    }
    if let Some(tls) = &tls {
        let reload = tls.clone().reload_on_change(config.tls.reload_interval, background.stop.clone());
        background.spawn("tls-reload", reload);
    }
    if let Some(listener) = listeners.metrics {
        background.spawn("metrics-server", metrics::serve(listener, core.metrics.clone(), background.clone()));
    }

    let mut grpc = GrpcServices::new()?;
    keys.serve(&core, &mut grpc).await;
    webhooks.serve(&core, &mut grpc).await;
    let (routes, health) = grpc.routes();
    let reachability = availability::Reachability::default();
    let timeout = config.database_probe_timeout;
    if let Some(probe) = store::connect_probe(&config.storage.database_url(), timeout).await? {
        let probing = reachability.clone().probe(probe, timeout, health, background.stop.clone());
        background.spawn("database-probe", probing);
    }

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
    let stopping = background.stop.clone();
    let result = Server::builder()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new(SharedClassifier::new(server_failures())).make_span_with(request_span))
        .layer(availability::DatabaseGate(reachability))
        .add_routes(routes)
        .serve_with_incoming_shutdown(tls::incoming(listeners.grpc, tls, background), async move {
            shutdown.await;
            // Watch streams never end by themselves: the feed ends them when
            // stopped, so the server can drain.
            stopping.cancel();
        })
        .await;

    let Core { db, background, .. } = core;
    background.drain().await;
    db.close().await?;
    tracing::info!("keyplane control plane stopped");
    Ok(result?)
}

impl Core {
    async fn start(config: &Config) -> Result<Self> {
        let root_token = bootstrap::root_token(config)?;
        let master_keys = Arc::new(bootstrap::master_keys(config)?);
        let db = config.storage.connect().await?;
        store::migrate(&db).await?;
        let metrics = Arc::new(Metrics::default());
        let workers =
            config.hash_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let crypto = Arc::new(Crypto {
            tokens: TokenFormat::new(config.token_prefix.clone()),
            hasher: SecretHasher::new(config.hashing_params(), workers)?,
            master_keys: master_keys.clone(),
        });
        let verifier = Arc::new(Verifier::new(
            db.clone(),
            crypto.clone(),
            metrics.clone(),
            VERIFIED_SECRETS_CAPACITY,
            config.abuse_limits(),
        ));
        let admission = Arc::new(Admission::new(config.admission_limits(), metrics.clone()));
        let auth = Authenticator::new(root_token.as_deref(), verifier.clone(), admission);
        let (wakeups, background) = (Wakeups::default(), Background::default());
        Ok(Self { db, metrics, master_keys, crypto, verifier, auth, wakeups, background })
    }
}

/// Serves the console on `listener`, over the subsystems' services.
fn start_console(
    core: &Core,
    config: &Config,
    (keys, webhooks): (&Keys, &Webhooks),
    oidc: Option<Oidc>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ReloadingTls>>,
    url: Option<&str>,
) {
    let key_sign_in = if config.console.key_sign_in { KeySignIn::Allowed } else { KeySignIn::Refused };
    let settings =
        SessionSettings { idle: config.console.session_idle, lifetime: config.console.session_lifetime, key_sign_in };
    let sessions =
        Arc::new(SessionService::new(core.db.clone(), core.master_keys.clone(), core.auth.clone(), settings));
    let users = Arc::new(UserService::new(core.db.clone(), oidc, sessions.clone()));
    let console = Arc::new(console::Console {
        keys: keys.keys.clone(),
        webhooks: webhooks.webhooks.clone(),
        catalog: webhooks.catalog.clone(),
        deliveries: webhooks.deliveries.clone(),
        audit: keys.audit.clone(),
        connections: webhooks.connections.clone(),
        roles: keys.roles.clone(),
        orgs: keys.orgs.clone(),
        identities: keys.identities.clone(),
        usage: keys.usage.clone(),
        portal: webhooks.portal.clone(),
        sessions: sessions.clone(),
        users: users.clone(),
        secure_cookies: config.console.secure_cookies || tls.is_some(),
    });
    let root_token_file = config.root_token_path().filter(|path| path.exists());
    let sign_in = match root_token_file {
        Some(path) => format!("the root token in {}, or a Keyplane API key with keyplane: scopes", path.display()),
        None => "a Keyplane API key with keyplane: scopes (see keyplane create-admin-key)".to_owned(),
    };
    tracing::info!(url = url.unwrap_or_default(), sign_in = %sign_in, "web console serving");
    let background = &core.background;
    let incoming = tls::incoming(listener, tls, background);
    background.spawn("console", console::serve(incoming, console::router(console), background.clone()));
    let purge = retention::purge_console_sessions(sessions, users, background.stop.clone());
    background.spawn("purge-console-sessions", purge);
}

/// The answers logged as failed requests (an ERROR line): the server's own
/// failures only — INTERNAL, UNKNOWN, DATA_LOSS, UNAVAILABLE. Every other
/// code answers a caller's mistake (a typo, a missing right, an unknown
/// method asked by a reflection client), which is someone else's to fix.
fn server_failures() -> GrpcErrorsAsFailures {
    use GrpcCode::*;
    let callers = [
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Unauthenticated,
    ];
    callers.into_iter().fold(GrpcErrorsAsFailures::new(), GrpcErrorsAsFailures::with_success)
}
