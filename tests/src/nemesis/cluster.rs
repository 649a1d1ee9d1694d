//! The system under test: a dedicated Postgres, three `keyplane serve`
//! replicas each reaching it through its own TCP proxy, three
//! `keyplane-sidecar`s each reaching every replica through a proxy of its
//! own, and a webhook receiver. Every process can be killed, paused and
//! restarted on the address it had; every link can be cut or black-holed.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use tokio::sync::Mutex;

use crate::Backend;
use crate::postgres::PgServer;
use crate::process::{ControlPlaneProcess, SidecarProcess, WebhookServer};
use crate::proxy::{TcpProxy, Upstream};
use crate::receiver::Receiver;

/// How often replicas send heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a sidecar allows from cache without word from a replica.
pub const MAX_STALENESS: Duration = Duration::from_secs(3);
/// The revocation bound the checker holds the cluster to: a sidecar cut off
/// from the log fails closed within `--max-staleness` plus one heartbeat
/// (docs/operations.md, "Losing the database"); one more heartbeat covers
/// the moment the last one was sent.
pub const STALENESS_BOUND: Duration = Duration::from_secs(MAX_STALENESS.as_secs() + 2 * HEARTBEAT.as_secs());
/// Replicas and sidecars.
pub const SIZE: usize = 3;

/// A replica and how to bring it back.
struct Replica {
    listen: String,
    args: Vec<String>,
    process: Option<ControlPlaneProcess>,
}

/// A sidecar and how to bring it back.
struct Sidecar {
    grpc: String,
    http: String,
    /// Its proxies to replica 0, 1, 2 in the order it follows them.
    follows: Vec<String>,
    process: Option<SidecarProcess>,
}

/// The running cluster.
pub struct Cluster {
    pub postgres: PgServer,
    /// Replica i's link to Postgres.
    pub database_links: Vec<TcpProxy>,
    /// `sidecar_links[s][r]`: sidecar s's link to replica r.
    pub sidecar_links: Vec<Vec<TcpProxy>>,
    pub receiver: Receiver,
    pub root_token: String,
    /// The database's name on [`Self::postgres`].
    pub database: String,
    /// Replica gRPC addresses (stable across restarts).
    pub replica_addrs: Vec<String>,
    /// Sidecar (gRPC, HTTP) addresses (stable across restarts).
    pub sidecar_addrs: Vec<(String, String)>,
    replicas: Vec<Mutex<Replica>>,
    sidecars: Vec<Mutex<Sidecar>>,
    credential: String,
    _dir: tempfile::TempDir,
}

/// The replicas' flags: short heartbeats, retries and leases, so that a
/// short run sees faults end and the system recover.
fn replica_flags() -> Vec<String> {
    let heartbeat = humantime::format_duration(HEARTBEAT).to_string();
    ["--heartbeat-interval", &heartbeat].into_iter().chain(WEBHOOK_FLAGS.iter().copied()).map(str::to_owned).collect()
}

const WEBHOOK_FLAGS: &[&str] = &[
    "--webhook-timeout",
    "2s",
    "--webhook-lease",
    "5s",
    "--webhook-retry-schedule",
    "0s,1s,2s,4s,8s,8s,8s,8s,8s,8s,8s,8s",
    "--credit-lease-ttl",
    "5s",
];

impl Cluster {
    /// Starts everything; `None` when Postgres is not installed (and not required).
    pub async fn start() -> Option<Self> {
        let postgres = crate::postgres::dedicated()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let database = postgres.new_database().await;
        let mut database_links = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..SIZE {
            let link = TcpProxy::start(Upstream::Unix(postgres.socket_path())).await;
            urls.push(PgServer::tcp_url(&database, link.addr));
            database_links.push(link);
        }
        let flags = replica_flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = WebhookServer::with_database(Backend::Postgres, urls[0].clone(), dir.path(), &flags);
        let root_token = server.root_token();
        let mut replicas = Vec::new();
        let mut replica_addrs = Vec::new();
        for url in &urls {
            let args = with_database_url(&server.args, url);
            let process = ControlPlaneProcess::start(&args).await;
            replica_addrs.push(process.addr.clone());
            replicas.push(Mutex::new(Replica { listen: process.addr.clone(), args, process: Some(process) }));
        }
        let mut sidecar_links = Vec::new();
        for _ in 0..SIZE {
            let mut links = Vec::new();
            for addr in &replica_addrs {
                links.push(TcpProxy::start(Upstream::Tcp(addr.parse().expect("replica address"))).await);
            }
            sidecar_links.push(links);
        }
        let credential = platform_credential(&replica_addrs[0], &root_token).await;
        let mut sidecars = Vec::new();
        let mut sidecar_addrs = Vec::new();
        for (s, links) in sidecar_links.iter().enumerate() {
            // Sidecar s follows replica s first, then the others.
            let follows: Vec<String> = (0..SIZE).map(|i| links[(s + i) % SIZE].addr.to_string()).collect();
            let process = start_sidecar(&follows, &credential, ("127.0.0.1:0", "127.0.0.1:0")).await;
            sidecar_addrs.push((process.grpc_addr.clone(), process.http_addr.clone()));
            sidecars.push(Mutex::new(Sidecar {
                grpc: process.grpc_addr.clone(),
                http: process.http_addr.clone(),
                follows,
                process: Some(process),
            }));
        }
        Some(Self {
            postgres,
            database_links,
            sidecar_links,
            receiver: Receiver::start().await,
            root_token,
            database,
            replica_addrs,
            sidecar_addrs,
            replicas,
            sidecars,
            credential,
            _dir: dir,
        })
    }

    /// SIGKILLs replica `i`.
    pub async fn kill_replica(&self, i: usize) {
        if let Some(process) = self.replicas[i].lock().await.process.take() {
            process.kill().await;
        }
    }

    /// Starts replica `i` again on its address, if it is down.
    pub async fn restart_replica(&self, i: usize) {
        let mut replica = self.replicas[i].lock().await;
        if replica.process.is_none() {
            replica.process = Some(ControlPlaneProcess::start_at(&replica.listen, &replica.args).await);
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to replica `i`.
    pub async fn signal_replica(&self, i: usize, signal: &str) {
        if let Some(process) = &self.replicas[i].lock().await.process {
            process.signal(signal);
        }
    }

    /// SIGKILLs sidecar `s`.
    pub async fn kill_sidecar(&self, s: usize) {
        if let Some(process) = self.sidecars[s].lock().await.process.take() {
            process.kill().await;
        }
    }

    /// Starts sidecar `s` again on its addresses, if it is down.
    pub async fn restart_sidecar(&self, s: usize) {
        let mut sidecar = self.sidecars[s].lock().await;
        if sidecar.process.is_none() {
            let listen = (sidecar.grpc.clone(), sidecar.http.clone());
            let process = start_sidecar(&sidecar.follows, &self.credential, (&listen.0, &listen.1)).await;
            sidecar.process = Some(process);
        }
    }

    /// Waits until every replica serves (gRPC health) and every sidecar is
    /// ready; returns how long each took (`None`: not within `within`).
    pub async fn wait_ready(&self, within: Duration) -> Vec<(String, Option<Duration>)> {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let started = std::time::Instant::now();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("http client");
        let mut components: Vec<(String, Option<Duration>)> = (0..SIZE)
            .map(|i| (format!("replica {i}"), None))
            .chain((0..SIZE).map(|s| (format!("sidecar {s}"), None)))
            .collect();
        while started.elapsed() < within && components.iter().any(|(_, took)| took.is_none()) {
            for (i, (_, took)) in components.iter_mut().enumerate().filter(|(_, (_, took))| took.is_none()) {
                let ready = if i < SIZE {
                    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.replica_addrs[i]))
                        .expect("uri")
                        .timeout(Duration::from_secs(1));
                    match endpoint.connect().await {
                        Ok(channel) => HealthClient::new(channel)
                            .check(HealthCheckRequest { service: String::new() })
                            .await
                            .is_ok_and(|r| r.into_inner().status == 1),
                        Err(_) => false,
                    }
                } else {
                    let url = format!("http://{}/readyz", self.sidecar_addrs[i - SIZE].1);
                    http.get(url).send().await.is_ok_and(|r| r.status() == 200)
                };
                if ready {
                    *took = Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        components
    }

    /// Stops every process (the harness's end).
    pub async fn stop(self) {
        for sidecar in &self.sidecars {
            if let Some(process) = sidecar.lock().await.process.take() {
                process.kill().await;
            }
        }
        for replica in &self.replicas {
            if let Some(process) = replica.lock().await.process.take() {
                process.signal("CONT");
                process.kill().await;
            }
        }
    }
}

/// The sidecars' flags: a short staleness bound (three heartbeats) and
/// usage reported often.
fn sidecar_flags() -> Vec<String> {
    let staleness = humantime::format_duration(MAX_STALENESS).to_string();
    ["--max-staleness", &staleness, "--usage-interval", "1s"].map(str::to_owned).to_vec()
}

async fn start_sidecar(follows: &[String], credential: &str, listen: (&str, &str)) -> SidecarProcess {
    let flags = sidecar_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    SidecarProcess::start_at(follows, credential, listen, &flags).await
}

/// `args` with `--database-url` set to `url`.
fn with_database_url(args: &[String], url: &str) -> Vec<String> {
    let mut args = args.to_vec();
    let at = args.iter().position(|a| a == "--database-url").expect("a --database-url flag");
    args[at + 1] = url.to_owned();
    args
}

/// A `keyplane:sidecar` platform key, made with the root token.
async fn platform_credential(replica: &str, root: &str) -> String {
    let mut keys = pb::api_key_service_client::ApiKeyServiceClient::new(crate::authed_channel(replica, root).await);
    let request = pb::CreateApiKeyRequest {
        org_id: "keyplane".into(),
        name: "nemesis sidecars".into(),
        scopes: vec!["keyplane:sidecar".into()],
        ..Default::default()
    };
    keys.create_api_key(request).await.expect("sidecar credential").into_inner().token
}
