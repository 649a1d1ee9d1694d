//! Test harness for Keyplane's end-to-end tests and load generators: starts
//! the control plane in-process on `127.0.0.1:0` over SQLite or a throwaway
//! Postgres, and builds authenticated gRPC clients.

pub mod certs;
pub mod connections;
pub mod console;
pub mod echo;
pub mod logs;
pub mod nemesis;
pub mod oauth_provider;
pub mod oidc_provider;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod receiver;
pub mod seed;
pub mod stats;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;

use keyplane_control_plane::{Config, Listeners};
use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1::key_sync_service_client::KeySyncServiceClient;
use pb::api_key_service_client::ApiKeyServiceClient;
use pb::audit_service_client::AuditServiceClient;
use pb::connection_service_client::ConnectionServiceClient;
use pb::delivery_service_client::DeliveryServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::event_type_service_client::EventTypeServiceClient;
use pb::identity_service_client::IdentityServiceClient;
use pb::org_service_client::OrgServiceClient;
use pb::role_service_client::RoleServiceClient;
use pb::usage_service_client::UsageServiceClient;
use pb::webhook_service_client::WebhookServiceClient;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// The throwaway Postgres.
    Postgres,
}

impl Backend {
    /// A fresh database URL for one test, or `None` when this backend is
    /// unavailable (Postgres not installed and not required: the test is skipped).
    pub async fn fresh_database(self, data_dir: &std::path::Path) -> Option<String> {
        match self {
            Backend::Sqlite => Some(format!("sqlite://{}?mode=rwc", data_dir.join("keyplane.db").display())),
            Backend::Postgres => match postgres::server() {
                Some(server) => Some(server.create_database().await),
                None => None,
            },
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that authenticates with a token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A control plane running inside the test process.
pub struct TestControlPlane {
    /// gRPC address.
    pub addr: SocketAddr,
    pub root_token: String,
    pub database_url: String,
    /// Data directory (root token, master key, SQLite file).
    pub data_dir: PathBuf,
    /// Prometheus `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// The web console's address.
    pub console_addr: SocketAddr,
    /// The configuration it runs with (for restarts and replicas).
    pub config: Config,
    /// How the harness's own clients speak TLS to it (when it serves TLS).
    pub client_tls: Option<ClientTlsConfig>,
    _temp: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<keyplane_control_plane::Result<()>>>,
}

impl TestControlPlane {
    /// [`start_with`](Self::start_with) with the production argon2id
    /// parameters, for load generators that measure hashing.
    pub async fn start_with_production_hashing(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |config| {
            let production = keyplane_control_plane::crypto::HashingParams::default();
            config.argon2_memory_kib = production.memory_kib;
            config.argon2_iterations = production.iterations;
            config.argon2_parallelism = production.parallelism;
        })
        .await
    }

    /// Starts a control plane on `backend`; `None` if the backend is skipped.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`start`](Self::start), letting the test adjust the configuration.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<Self> {
        Self::start_with_tls(backend, None, adjust).await
    }

    /// Like [`start_with`](Self::start_with) for a server configured (by
    /// `adjust`) to serve TLS; the harness's clients use `client_tls`.
    pub async fn start_with_tls(
        backend: Backend,
        client_tls: Option<ClientTlsConfig>,
        adjust: impl FnOnce(&mut Config),
    ) -> Option<Self> {
        Self::start_serving_console(backend, client_tls, None, adjust).await
    }

    /// Like [`start_with`](Self::start_with), serving the console on
    /// `console` (bound by the test, which needs its address first: an
    /// OpenID provider must know the console's callback).
    pub async fn start_with_console(
        backend: Backend,
        console: TcpListener,
        adjust: impl FnOnce(&mut Config),
    ) -> Option<Self> {
        Self::start_serving_console(backend, None, Some(console), adjust).await
    }

    async fn start_serving_console(
        backend: Backend,
        client_tls: Option<ClientTlsConfig>,
        console: Option<TcpListener>,
        adjust: impl FnOnce(&mut Config),
    ) -> Option<Self> {
        logs::init();
        let temp = tempfile::tempdir().expect("temp dir");
        let data_dir = temp.path().to_path_buf();
        let database_url = backend.fresh_database(&data_dir).await?;
        let mut config = Config::for_test(&data_dir);
        config.storage.database_url = Some(database_url);
        if backend == Backend::Postgres {
            let key_file = data_dir.join("master-key.conf");
            std::fs::write(&key_file, keyplane_control_plane::crypto::MasterKeys::generate_line("k1"))
                .expect("write master key");
            config.master_key_file = Some(key_file);
        }
        adjust(&mut config);
        let mut plane = Self::launch_serving_console(config, client_tls, console).await;
        plane._temp = Some(temp);
        Some(plane)
    }

    /// Starts a control plane with exactly this configuration (its data dir
    /// must outlive it). A random root token is written first (to
    /// `<data-dir>/root-token` unless the configuration names a file).
    pub async fn launch(config: Config) -> Self {
        Self::launch_with_tls(config, None).await
    }

    /// Like [`launch`](Self::launch); the harness's clients use `client_tls`.
    pub async fn launch_with_tls(config: Config, client_tls: Option<ClientTlsConfig>) -> Self {
        Self::launch_serving_console(config, client_tls, None).await
    }

    async fn launch_serving_console(
        mut config: Config,
        client_tls: Option<ClientTlsConfig>,
        console: Option<TcpListener>,
    ) -> Self {
        logs::init();
        std::fs::create_dir_all(&config.storage.data_dir).expect("data dir");
        let root_path =
            config.root_token_file.get_or_insert_with(|| config.storage.data_dir.join("root-token")).clone();
        if !root_path.exists() {
            std::fs::write(
                &root_path,
                format!("kproot_test_{}{}", postgres::random_suffix(), postgres::random_suffix()),
            )
            .expect("root token");
        }
        let root_token = std::fs::read_to_string(&root_path).expect("root token").trim().to_owned();
        let listener = TcpListener::bind(config.listen).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind metrics");
        let metrics_addr = metrics.local_addr().expect("metrics addr");
        let console = match console {
            Some(console) => console,
            None => TcpListener::bind("127.0.0.1:0").await.expect("bind console"),
        };
        let console_addr = console.local_addr().expect("console addr");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let database_url = config.storage.database_url();
        let data_dir = config.storage.data_dir.clone();
        let task = tokio::spawn(keyplane_control_plane::run(
            config.clone(),
            Listeners { grpc: listener, metrics: Some(metrics), console: Some(console) },
            async {
                let _ = stopped.await;
            },
        ));
        let plane = Self {
            addr,
            root_token,
            database_url,
            data_dir,
            metrics_addr,
            console_addr,
            config,
            client_tls,
            _temp: None,
            shutdown: Some(shutdown),
            task: Some(task),
        };
        plane.wait_ready().await;
        plane
    }

    async fn wait_ready(&self) {
        use tonic_health::pb::health_client::HealthClient;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(channel) = self.endpoint().connect().await {
                let response = HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                    .await;
                if response.is_ok_and(|r| r.into_inner().status == 1) {
                    return;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "control plane did not become ready");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Where the harness's clients connect: `http://`, or `https://` with
    /// the test's TLS settings.
    pub fn endpoint(&self) -> Endpoint {
        match &self.client_tls {
            None => Endpoint::from_shared(format!("http://{}", self.addr)).expect("uri"),
            Some(tls) => Endpoint::from_shared(format!("https://{}", self.addr))
                .expect("uri")
                .tls_config(tls.clone())
                .expect("tls config"),
        }
    }

    /// A channel to the control plane.
    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.expect("connect")
    }

    /// A channel that authenticates with `token`.
    pub async fn authed(&self, token: &str) -> Authed {
        InterceptedService::new(self.channel().await, bearer(token))
    }

    /// API-key client authenticated with `token`.
    pub async fn keys(&self, token: &str) -> ApiKeyServiceClient<Authed> {
        ApiKeyServiceClient::new(self.authed(token).await)
    }

    /// Webhook-subscription client authenticated with `token`.
    pub async fn webhooks(&self, token: &str) -> WebhookServiceClient<Authed> {
        WebhookServiceClient::new(self.authed(token).await)
    }

    /// Event client authenticated with `token`.
    pub async fn events(&self, token: &str) -> EventServiceClient<Authed> {
        EventServiceClient::new(self.authed(token).await)
    }

    /// OAuth-connection client authenticated with `token`.
    pub async fn connections(&self, token: &str) -> ConnectionServiceClient<Authed> {
        ConnectionServiceClient::new(self.authed(token).await)
    }

    /// Delivery client authenticated with `token`.
    pub async fn deliveries(&self, token: &str) -> DeliveryServiceClient<Authed> {
        DeliveryServiceClient::new(self.authed(token).await)
    }

    /// Audit client authenticated with `token`.
    pub async fn audit(&self, token: &str) -> AuditServiceClient<Authed> {
        AuditServiceClient::new(self.authed(token).await)
    }

    /// Identity client authenticated with `token`.
    pub async fn identities(&self, token: &str) -> IdentityServiceClient<Authed> {
        IdentityServiceClient::new(self.authed(token).await)
    }

    /// Role client authenticated with `token`.
    pub async fn roles(&self, token: &str) -> RoleServiceClient<Authed> {
        RoleServiceClient::new(self.authed(token).await)
    }

    /// Event-catalog client authenticated with `token`.
    pub async fn event_types(&self, token: &str) -> EventTypeServiceClient<Authed> {
        EventTypeServiceClient::new(self.authed(token).await)
    }

    /// Org client authenticated with `token`.
    pub async fn orgs(&self, token: &str) -> OrgServiceClient<Authed> {
        OrgServiceClient::new(self.authed(token).await)
    }

    /// Usage-analytics client authenticated with `token`.
    pub async fn usage(&self, token: &str) -> UsageServiceClient<Authed> {
        UsageServiceClient::new(self.authed(token).await)
    }

    /// Sidecar-protocol client authenticated with `token` (a platform key
    /// with `keyplane:sidecar`), for speaking as a sidecar would.
    pub async fn key_sync(&self, token: &str) -> KeySyncServiceClient<Authed> {
        KeySyncServiceClient::new(self.authed(token).await)
    }

    /// A separate connection to the same database, for inspecting or
    /// tampering with rows directly.
    pub async fn database(&self) -> DatabaseConnection {
        sea_orm::Database::connect(self.database_url.clone()).await.expect("connect to test database")
    }

    /// Creates a key in `org` with `scopes` using the root token; returns (key, token).
    pub async fn create_key(&self, org: &str, scopes: &[&str]) -> (pb::ApiKey, String) {
        let response = self
            .keys(&self.root_token)
            .await
            .create_api_key(pb::CreateApiKeyRequest {
                org_id: org.to_owned(),
                name: format!("{org} key"),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .await
            .expect("create key")
            .into_inner();
        (response.api_key.expect("key"), response.token)
    }

    /// Creates a recoverable key named `recoverable` in `org`, authenticated
    /// with `token`; returns the response (key and token).
    pub async fn create_recoverable_key(&self, token: &str, org: &str) -> pb::CreateApiKeyResponse {
        let request = pb::CreateApiKeyRequest {
            org_id: org.to_owned(),
            name: "recoverable".into(),
            recoverable: true,
            ..Default::default()
        };
        self.keys(token).await.create_api_key(request).await.expect("create recoverable key").into_inner()
    }

    /// Another control plane on the same database (a replica), on a new port.
    pub async fn replica(&self) -> Self {
        let mut config = self.config.clone();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::launch_with_tls(config, self.client_tls.clone()).await
    }

    /// The audit events of `org` (newest first, up to 1000), read with the
    /// root token; only those with `action` unless it is empty.
    pub async fn audit_events(&self, org: &str, action: &str) -> Vec<pb::AuditEvent> {
        let request = pb::ListAuditEventsRequest {
            org_id: org.to_owned(),
            action: action.to_owned(),
            page_size: 1000,
            ..Default::default()
        };
        self.audit(&self.root_token)
            .await
            .list_audit_events(request)
            .await
            .expect("audit events")
            .into_inner()
            .audit_events
    }

    /// Stops the server (drained), keeping the handle for [`start_again`](Self::start_again).
    pub async fn stop_for_now(&mut self) {
        self.shutdown_now().await;
    }

    /// Starts a stopped control plane again on the same address and database.
    pub async fn start_again(&mut self) {
        let mut config = self.config.clone();
        config.listen = self.addr;
        let mut restarted = Self::launch_with_tls(config, self.client_tls.clone()).await;
        self.shutdown = restarted.shutdown.take();
        self.task = restarted.task.take();
        self.metrics_addr = restarted.metrics_addr;
        self.console_addr = restarted.console_addr;
    }

    /// The value of a counter or gauge in the control plane's `/metrics`
    /// (summed over label sets whose text contains `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&http_get(&format!("http://{}/metrics", self.metrics_addr)).await, name, labels)
    }

    /// Every row of every table, as text.
    pub async fn dump_database(&self) -> String {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let db = self.database().await;
        let backend = db.get_database_backend();
        if backend == DbBackend::Sqlite {
            // The raw database and WAL bytes: nothing can hide from this.
            let mut dump = Vec::new();
            for file in ["keyplane.db", "keyplane.db-wal"] {
                dump.extend(std::fs::read(self.data_dir.join(file)).unwrap_or_default());
            }
            return String::from_utf8_lossy(&dump).into_owned();
        }
        let tables = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            ))
            .await
            .expect("tables");
        let mut dump = String::new();
        for table in tables {
            let name: String = table.try_get("", "tablename").expect("name");
            let rows = db
                .query_all_raw(Statement::from_string(backend, format!("SELECT t::text AS row FROM \"{name}\" t")))
                .await
                .expect("rows");
            for row in rows {
                dump.push_str(&row.try_get::<String>("", "row").expect("row text"));
                dump.push('\n');
            }
        }
        assert!(dump.contains("api_key.created"), "the dump reads real rows");
        dump
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("control plane task").expect("control plane exited cleanly");
        }
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A channel to the control plane at `addr` that authenticates with `token`.
pub async fn authed_channel(addr: &str, token: &str) -> Authed {
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    InterceptedService::new(channel, bearer(token))
}

/// The interceptor sending `authorization: Bearer <token>`.
pub fn bearer(token: &str) -> Bearer {
    Bearer(format!("Bearer {token}").parse().expect("ascii token"))
}

/// Serves HTTP/1 and HTTP/2 on `listener` with `handler` until the test
/// process ends (the fake servers: echo app, webhook receiver, OAuth provider).
pub fn serve_http<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<
            Output = Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, std::convert::Infallible>,
        > + Send
        + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo};
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handler);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// An Envoy ext_authz `CheckRequest` for `GET /orders` with these request
/// headers and context extensions.
pub fn ext_authz_request(
    headers: &[(&str, &str)],
    context: &[(&str, &str)],
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3 as envoy;
    let owned = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    envoy::CheckRequest {
        attributes: Some(envoy::AttributeContext {
            request: Some(envoy::attribute_context::Request {
                http: Some(envoy::attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/orders".into(),
                    headers: owned(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: owned(context),
            ..Default::default()
        }),
    }
}

/// A fresh random org id, so tests never see each other's data.
pub fn random_org() -> String {
    format!("org_{}", postgres::random_suffix())
}

/// Runs a test body on SQLite and on Postgres: `both_backends!(name)` turns
/// `async fn name(backend: Backend)` into `name_sqlite` and `name_postgres` tests.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            ::paste::paste! {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn [<$name _sqlite>]() {
                    $name($crate::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn [<$name _postgres>]() {
                    $name($crate::Backend::Postgres).await
                }
            }
        )*
    };
}

/// Starts a control plane or returns from the test when the backend is skipped.
#[macro_export]
macro_rules! start_or_skip {
    ($backend:expr) => {
        match $crate::TestControlPlane::start($backend).await {
            Some(plane) => plane,
            None => return,
        }
    };
    ($backend:expr, $adjust:expr) => {
        match $crate::TestControlPlane::start_with($backend, $adjust).await {
            Some(plane) => plane,
            None => return,
        }
    };
}

/// Calls `fetch` every 50 ms until `done` holds for what it returns, and
/// returns that; fails the test after [`webhooks::WAIT`].
pub async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    fetch: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    eventually_within(webhooks::WAIT, fetch, done).await
}

/// [`eventually`] with a bound of `within`.
pub async fn eventually_within<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    within: std::time::Duration,
    mut fetch: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let value = fetch().await;
        if done(&value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached the expected state: {value:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Asserts an INVALID_ARGUMENT whose `BadRequest` details name `field`.
pub fn assert_invalid_field(status: &tonic::Status, field: &str) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "expected INVALID_ARGUMENT for {field}: {status:?}");
    let details = status.get_error_details();
    let bad_request = details.bad_request().expect("BadRequest details");
    assert!(
        bad_request.field_violations.iter().any(|v| v.field == field),
        "no violation for {field:?} in {:?}",
        bad_request.field_violations
    );
}

/// Protobuf timestamp `offset` from now.
pub fn timestamp_in(offset: chrono::Duration) -> prost_types::Timestamp {
    let at = chrono::Utc::now() + offset;
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// The same token with a different secret and a correct checksum: passes
/// the format test, names a real key, and must fail with `bad_secret`.
pub fn forge_secret(token: &str) -> String {
    use keyplane_control_plane::crypto::token::{CHECKSUM_LEN, SECRET_LEN, encode_fixed};
    let body_end = token.len() - CHECKSUM_LEN;
    let head = &token[..body_end - SECRET_LEN];
    let original = &token[body_end - SECRET_LEN..body_end];
    let secret = if original.starts_with('0') { "1" } else { "0" }.repeat(SECRET_LEN);
    let signed = format!("{head}{secret}");
    let checksum = encode_fixed(&crc32fast::hash(signed.as_bytes()).to_be_bytes(), CHECKSUM_LEN);
    format!("{signed}{checksum}")
}

/// Asserts that `text` contains no complete Keyplane token (`kp_live_`/`kp_test_`
/// followed by the 71 characters of id, secret and checksum).
pub fn assert_no_token_in(text: &str) {
    for head in ["kp_live_", "kp_test_"] {
        for (at, _) in text.match_indices(head) {
            let rest = &text[at + head.len()..];
            let run = rest.bytes().take_while(u8::is_ascii_alphanumeric).count();
            assert!(run < 71, "a full token appears in the text: {}", &text[at..at + head.len() + run]);
        }
    }
}

/// GET `url` and return the body (panics on transport errors).
pub async fn http_get(url: &str) -> String {
    reqwest::get(url).await.expect("GET").text().await.expect("body")
}

/// Sum of the samples of `name` whose label text contains `labels`.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && label_text.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A sidecar running inside the test process, following a control plane.
pub struct TestSidecar {
    /// ext_authz gRPC address.
    pub grpc_addr: SocketAddr,
    /// HTTP address (forward-auth, health, metrics).
    pub http_addr: SocketAddr,
    /// A pooled HTTP client for calling it.
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<keyplane_sidecar::Result<()>>>,
    _credential: tempfile::NamedTempFile,
}

impl TestSidecar {
    /// Starts a sidecar for `plane` with a fresh `keyplane:sidecar` platform
    /// key, adjusted by `adjust`, and waits until it has caught up.
    pub async fn start(plane: &TestControlPlane, adjust: impl FnOnce(&mut keyplane_sidecar::Config)) -> Self {
        let (_, token) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
        let sidecar = Self::start_unready(plane, &token, adjust).await;
        sidecar.wait_ready().await;
        sidecar
    }

    /// Starts a sidecar with this credential without waiting for readiness.
    pub async fn start_unready(
        plane: &TestControlPlane,
        credential: &str,
        adjust: impl FnOnce(&mut keyplane_sidecar::Config),
    ) -> Self {
        logs::init();
        let mut file = tempfile::NamedTempFile::new().expect("credential file");
        std::io::Write::write_all(&mut file, credential.as_bytes()).expect("write credential");
        let mut config =
            keyplane_sidecar::Config::for_test(format!("http://{}", plane.addr), file.path().to_path_buf());
        adjust(&mut config);
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (grpc_addr, http_addr) = (grpc.local_addr().expect("addr"), http.local_addr().expect("addr"));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let listeners = keyplane_sidecar::Listeners { grpc: grpc.into(), http: http.into() };
        let task = tokio::spawn(keyplane_sidecar::run(config, listeners, async {
            let _ = stopped.await;
        }));
        Self {
            grpc_addr,
            http_addr,
            http: reqwest::Client::new(),
            shutdown: Some(shutdown),
            task: Some(task),
            _credential: file,
        }
    }

    /// Waits until `/readyz` answers 200 (caught up with the log).
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.get("/readyz").await.0 != 200 {
            assert!(tokio::time::Instant::now() < deadline, "sidecar did not become ready");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// GET a path of the HTTP front end: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self.http.get(format!("http://{}{path}", self.http_addr)).send().await.expect("GET");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    }

    /// Forward-auth check with a bearer token and optional required scopes.
    pub async fn check(&self, token: &str, scopes: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .get(format!("http://{}/check", self.http_addr))
            .header("authorization", format!("Bearer {token}"));
        if let Some(scopes) = scopes {
            request = request.header("x-required-scopes", scopes);
        }
        request.send().await.expect("check")
    }

    /// Status of a forward-auth check.
    pub async fn check_status(&self, token: &str) -> u16 {
        self.check(token, None).await.status().as_u16()
    }

    /// Polls until a check of `token` answers `status` (bounded); returns how long it took.
    pub async fn wait_for_status(&self, token: &str, status: u16) -> std::time::Duration {
        let started = std::time::Instant::now();
        while self.check_status(token).await != status {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "check never answered {status}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        started.elapsed()
    }

    /// A sample of the sidecar's `/metrics`.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric_value(&self.get("/metrics").await.1, name, labels)
    }

    /// Stops the sidecar.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("sidecar task").expect("sidecar exited cleanly");
        }
    }
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Whether an external tool (`program args` exits 0) is installed; in CI
/// a missing tool fails the run, elsewhere the test is skipped with a note.
pub fn tool_available(program: &str, args: &[&str], install: &str) -> bool {
    let found = std::process::Command::new(program).args(args).output().is_ok_and(|o| o.status.success());
    if !found && postgres::required() {
        panic!("{program} is required in CI: {install}");
    }
    if !found {
        eprintln!("NOTE: {program} not installed; a test that needs it is SKIPPED ({install})");
    }
    found
}
