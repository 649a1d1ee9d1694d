//! Following the control plane's key-event stream (ARCHITECTURE.md, "A revocation"): resume from
//! the last applied seq, reconnect with exponential backoff and jitter, flush
//! on Reset, and track staleness so the sidecar fails closed when cut off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyplane_proto::admin::v1 as admin;
use keyplane_proto::sync::v1 as pb;
use keyplane_proto::token::Environment;
use pb::key_sync_service_client::KeySyncServiceClient;
use rand::Rng;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::cache::{IdentityPrincipal, KeyCache, KeyId, Limits, Principal, Refusal, SharedPrincipals, Verdict};
use crate::config::Config;
use crate::credits::CreditLeases;
use crate::error::{Error, Result};
use crate::failover::Failover;
use crate::metrics::Metrics;

/// Adds the sidecar's credential to every control-plane call.
#[derive(Clone)]
pub struct Credential(MetadataValue<Ascii>);

impl Credential {
    /// `authorization: Bearer <token>`.
    pub fn bearer(token: &str) -> Result<Self> {
        format!("Bearer {token}")
            .parse()
            .map(Self)
            .map_err(|_| Error::Config("the credential is not a valid header value".into()))
    }
}

impl Interceptor for Credential {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The channels to the control-plane replicas, followed one at a time
/// ([`Failover`]). `https://` is TLS with the system roots or
/// `--control-plane-ca-file`, and the client certificate when one is
/// configured; TLS settings with an `http://` URL, or files that do not
/// parse, are start-up errors, never a silent downgrade to plaintext.
pub async fn control_plane_channel(config: &Config) -> Result<Failover> {
    let lookup = |host: String| async move { tokio::net::lookup_host(host).await.map(Iterator::collect) };
    let replicas = replicas(&config.control_plane, lookup).await?;
    let channels = replicas
        .iter()
        .map(|replica| Ok((replica.label.clone(), replica_channel(config, replica)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Failover::new(channels))
}

/// One control-plane replica to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// For logs: the URL given (with the address, when a name stood for several).
    pub label: String,
    /// The URL as given: its host names the server (`:authority`, TLS).
    pub url: String,
    /// Where to connect, when not the URL's own host.
    pub address: Option<SocketAddr>,
}

/// The replicas behind `--control-plane`: each URL as given, except a host
/// name that resolves to several addresses, which stands for one replica
/// per address (resolved once, at start-up; a name with one address is
/// left to the connection, which resolves it each time).
pub async fn replicas<F, Fut>(urls: &[String], resolve: F) -> Result<Vec<Replica>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    if urls.is_empty() {
        return Err(Error::Config("--control-plane: give at least one URL".into()));
    }
    let mut replicas = Vec::with_capacity(urls.len());
    for url in urls {
        let uri: http::Uri = url.parse().map_err(|e| Error::Config(format!("--control-plane {url}: {e}")))?;
        let host = host_of(&uri);
        let given = Replica { label: url.clone(), url: url.clone(), address: None };
        if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
            replicas.push(given);
            continue;
        }
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        match resolve(format!("{host}:{port}")).await {
            Ok(addresses) if addresses.len() > 1 => replicas.extend(addresses.into_iter().map(|address| Replica {
                label: format!("{url} ({address})"),
                url: url.clone(),
                address: Some(address),
            })),
            Ok(_) => replicas.push(given),
            Err(error) => {
                tracing::warn!(url, %error, "cannot resolve the control plane's name now; connecting will retry");
                replicas.push(given);
            }
        }
    }
    Ok(replicas)
}

/// The URL's host without the brackets of an IPv6 literal.
fn host_of(uri: &http::Uri) -> &str {
    uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']')
}

fn replica_channel(config: &Config, replica: &Replica) -> Result<Channel> {
    let url = &replica.url;
    let endpoint =
        Endpoint::from_shared(url.clone()).map_err(|e| Error::Config(format!("--control-plane {url}: {e}")))?;
    let tls_requested = config.control_plane_ca_file.is_some() || config.tls_client_cert_file.is_some();
    let host = host_of(endpoint.uri()).to_owned();
    let endpoint = match endpoint.uri().scheme_str() {
        Some("https") => endpoint.tls_config(client_tls(config)?.domain_name(host))?,
        Some("http") if tls_requested => {
            return Err(Error::Config(format!(
                "--control-plane-ca-file and --tls-client-cert-file need an https:// control plane, not {url}"
            )));
        }
        Some("http") => endpoint,
        _ => return Err(Error::Config(format!("--control-plane {url}: use an http:// or https:// URL"))),
    };
    let endpoint = endpoint
        .tcp_nodelay(true)
        .connect_timeout(config.control_plane_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(match replica.address {
        // Connect to this address while the URL keeps naming the server.
        Some(address) => {
            let connector = tower::service_fn(move |_: http::Uri| async move {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            });
            endpoint.connect_with_connector_lazy(connector)
        }
        None => endpoint.connect_lazy(),
    })
}

fn client_tls(config: &Config) -> Result<ClientTlsConfig> {
    let tls = ClientTlsConfig::new();
    let mut tls = match &config.control_plane_ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read_pem(path, "--control-plane-ca-file", false)?)),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&config.tls_client_cert_file, &config.tls_client_key_file) {
        let cert = read_pem(cert, "--tls-client-cert-file", false)?;
        let key = read_pem(key, "--tls-client-key-file", true)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(tls)
}

/// Reads a PEM file and checks that it holds certificates (or a private key).
fn read_pem(path: &std::path::Path, flag: &str, private_key: bool) -> Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem = std::fs::read(path).map_err(|e| Error::Config(format!("{flag} {}: {e}", path.display())))?;
    let parses = if private_key {
        PrivateKeyDer::from_pem_slice(&pem).is_ok()
    } else {
        CertificateDer::pem_slice_iter(&pem).next().is_some_and(|cert| cert.is_ok())
    };
    if !parses {
        let what = if private_key { "a PEM private key" } else { "PEM certificates" };
        return Err(Error::Config(format!("{flag} {}: does not hold {what}", path.display())));
    }
    Ok(pem)
}

/// Authenticated client of `KeySyncService`.
pub type ControlPlaneClient = KeySyncServiceClient<InterceptedService<Failover, Credential>>;

/// Where the sidecar stands in the event log.
pub struct SyncState {
    started: Instant,
    position: AtomicU64,
    last_heard_ms: AtomicU64,
    caught_up: AtomicBool,
    /// Set once the staleness bound was compared with the heartbeat period.
    interval_checked: AtomicBool,
}

/// Whether the sidecar can decide from its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Never caught up with the log.
    NotSynced,
    /// Heard nothing for longer than the staleness bound.
    Stale,
    /// In sync.
    Fresh,
}

impl Default for SyncState {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            position: AtomicU64::new(0),
            last_heard_ms: AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
            interval_checked: AtomicBool::new(false),
        }
    }
}

impl SyncState {
    fn heard(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard_ms.store(now, Ordering::Release);
    }

    /// Time since the last event or heartbeat.
    pub fn silence(&self) -> Duration {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Ordering::Acquire)))
    }

    /// Readiness under the staleness bound.
    pub fn readiness(&self, max_staleness: Duration) -> Readiness {
        if !self.caught_up.load(Ordering::Acquire) {
            Readiness::NotSynced
        } else if self.silence() > max_staleness {
            Readiness::Stale
        } else {
            Readiness::Fresh
        }
    }

    /// Last seq applied.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }
}

/// Follows the Watch stream forever, resuming after the last applied seq.
/// A stream that fails, ends or goes silent (no heartbeat for two
/// periods: its replica cannot vouch for the log) moves the sidecar to the
/// next replica.
pub async fn follow(
    (client, failover): (ControlPlaneClient, Failover),
    cache: KeyCache,
    (credits, global_limits): (Arc<CreditLeases>, Arc<CreditLeases>),
    state: Arc<SyncState>,
    metrics: Arc<Metrics>,
    max_staleness: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let replica = failover.current();
        let url = failover.url(replica).to_owned();
        match watch_once(client.clone(), &cache, (&credits, &global_limits), &state, &metrics, max_staleness).await {
            Ok(()) => tracing::warn!(replica = url, "key-event stream ended; reconnecting"),
            Err(error) => {
                tracing::warn!(replica = url, error = %error_chain(&error), "key-event stream failed; reconnecting");
            }
        }
        failover.move_on_from(replica);
        metrics.stream_connected.set(0);
        metrics.stream_reconnects.inc();
        // Anything heard resets the backoff; silence doubles it, up to 5s.
        if state.silence() < backoff {
            backoff = Duration::from_millis(100);
        }
        let jitter = rand::rng().random_range(0.5..1.5);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// An error with its whole cause chain (a TLS failure sits several causes
/// below tonic's "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Warns once when `max_staleness` leaves no room for a late heartbeat: a
/// healthy sidecar would then flap to 503 `stale` under load.
fn check_staleness_bound(state: &SyncState, interval: Option<prost_types::Duration>, max_staleness: Duration) {
    let Some(interval) = interval.and_then(|i| Duration::try_from(i).ok()) else {
        return;
    };
    if state.interval_checked.swap(true, Ordering::AcqRel) {
        return;
    }
    if max_staleness < interval * 2 {
        tracing::warn!(
            max_staleness = %humantime::format_duration(max_staleness),
            heartbeat_interval = %humantime::format_duration(interval),
            "--max-staleness is less than twice the control plane's heartbeat interval; a late heartbeat \
             will make this sidecar answer 503 stale. Use at least {}",
            humantime::format_duration(interval * 3)
        );
    }
}

async fn watch_once(
    mut client: ControlPlaneClient,
    cache: &KeyCache,
    (credits, global_limits): (&Arc<CreditLeases>, &Arc<CreditLeases>),
    state: &SyncState,
    metrics: &Metrics,
    max_staleness: Duration,
) -> Result<()> {
    let after_seq = state.position();
    // Until the first catch-up nothing is cached (checks answer 503), so
    // there is nothing to replay: start at the head.
    let from_head = !state.caught_up.load(Ordering::Acquire);
    let mut stream = client.watch(pb::WatchRequest { after_seq, from_head }).await?.into_inner();
    metrics.stream_connected.set(1);
    tracing::info!(after_seq, "following the key-event stream");
    // Until the first heartbeat says how often they come, allow the staleness bound.
    let mut silence_limit = max_staleness;
    loop {
        let Ok(message) = tokio::time::timeout(silence_limit, stream.message()).await else {
            return Err(Error::Timeout(silence_limit));
        };
        let Some(message) = message? else { return Ok(()) };
        match message.message {
            Some(pb::watch_response::Message::Event(event)) => {
                let (kind, ended) = match pb::KeyEventKind::try_from(event.kind) {
                    Ok(pb::KeyEventKind::Revoked) => ("revoked", Some(Refusal::Revoked)),
                    Ok(pb::KeyEventKind::Deleted) => ("deleted", Some(Refusal::Revoked)),
                    Ok(pb::KeyEventKind::Expired) => ("expired", Some(Refusal::Expired)),
                    // Updated, or a kind this sidecar does not know yet: verify again.
                    _ => ("updated", None),
                };
                cache.apply_change(&event.key_id, event.seq, ended).await;
                // Off the stream's path: giving credits back is a call.
                for leases in [credits.clone(), global_limits.clone()] {
                    let key_id = event.key_id.clone();
                    tokio::spawn(async move {
                        match ended {
                            Some(_) => leases.key_ended(&key_id).await,
                            None => leases.key_changed(&key_id).await,
                        }
                    });
                }
                metrics.key_events.get_or_create(&[("kind", kind)]).inc();
                state.position.fetch_max(event.seq, Ordering::AcqRel);
                metrics.applied_seq.set(state.position());
            }
            Some(pb::watch_response::Message::Heartbeat(heartbeat)) => {
                check_staleness_bound(state, heartbeat.interval, max_staleness);
                if let Some(interval) = heartbeat.interval.and_then(|i| Duration::try_from(i).ok()) {
                    silence_limit = (interval * 2).max(Duration::from_millis(100));
                }
                state.position.fetch_max(heartbeat.head_seq, Ordering::AcqRel);
                if !state.caught_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(position = heartbeat.head_seq, "caught up with the key-event log");
                }
            }
            Some(pb::watch_response::Message::Reset(reset)) => {
                tracing::warn!(head = reset.head_seq, "position no longer retained; flushing the cache");
                cache.reset(reset.head_seq);
                state.position.store(reset.head_seq, Ordering::Release);
                metrics.stream_resets.inc();
            }
            None => {}
        }
        state.heard();
    }
}

/// Asks the control plane about a token, waiting at most `timeout`.
/// The principal in the answer is shared through `shared`.
pub async fn verify(
    client: &mut ControlPlaneClient,
    token: &str,
    shared: &SharedPrincipals,
    metrics: &Metrics,
    timeout: Duration,
) -> Result<Verdict> {
    let started = Instant::now();
    metrics.verify_calls.inc();
    let response = tokio::time::timeout(timeout, client.verify(pb::VerifyRequest { token: token.to_owned() })).await;
    metrics.verify_seconds.observe(started.elapsed().as_secs_f64());
    let response = response.map_err(|_| Error::Timeout(timeout))??.into_inner();
    let principal = response.principal.unwrap_or_default();
    let key_id = KeyId::parse(&principal.key_id);
    if response.valid {
        let key_id = key_id.ok_or_else(|| tonic::Status::internal("valid answer without a well-formed key id"))?;
        let principal = shared.principal(principal_from_proto(principal, shared));
        return Ok(Verdict::Valid { key_id, principal, as_of: response.as_of_seq });
    }
    let refusal = match admin::VerifyFailure::try_from(response.failure) {
        Ok(admin::VerifyFailure::BadSecret) => Refusal::BadSecret,
        Ok(admin::VerifyFailure::Revoked) => Refusal::Revoked,
        Ok(admin::VerifyFailure::Expired) => Refusal::Expired,
        Ok(admin::VerifyFailure::Throttled) => Refusal::Throttled,
        _ => Refusal::Unknown,
    };
    Ok(Verdict::Invalid { refusal, key_id, as_of: response.as_of_seq })
}

fn principal_from_proto(principal: admin::Principal, shared: &SharedPrincipals) -> Principal {
    Principal {
        environment: if principal.environment == admin::Environment::Test as i32 {
            Environment::Test
        } else {
            Environment::Live
        },
        expires_at: principal.expires_at.and_then(|t| std::time::SystemTime::try_from(t).ok()),
        limits: limits_from_proto(principal.rate_limit, &principal.allowed_cidrs, principal.has_credits).boxed(),
        identity: principal.identity.map(|identity| {
            Box::new(IdentityPrincipal {
                limits: limits_from_proto(identity.rate_limit, &identity.allowed_cidrs, identity.has_credits),
                id: identity.id,
                external_id: identity.external_id,
            })
        }),
        org_id: shared.string(&principal.org_id),
        scopes: shared.scopes(&principal.scopes),
    }
}

fn limits_from_proto(rate_limit: Option<admin::RateLimit>, allowed_cidrs: &[String], has_credits: bool) -> Limits {
    Limits {
        global_rate_limit: rate_limit.as_ref().is_some_and(|l| l.scope == admin::RateLimitScope::Global as i32),
        rate_limit: rate_limit.and_then(|limit| Some((limit.requests, Duration::try_from(limit.window?).ok()?))),
        // A list whose entries all fail to parse still allows nobody.
        allowed_networks: (!allowed_cidrs.is_empty())
            .then(|| allowed_cidrs.iter().filter_map(|cidr| cidr.parse().ok()).collect()),
        has_credits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver that knows `cp.test` (two addresses) and `one.test` (one).
    async fn resolve(host: String) -> std::io::Result<Vec<SocketAddr>> {
        match host.as_str() {
            "cp.test:443" => Ok(vec!["10.0.0.1:443".parse().unwrap(), "[fd00::2]:443".parse().unwrap()]),
            "one.test:50051" => Ok(vec!["10.0.0.3:50051".parse().unwrap()]),
            other => panic!("resolved {other}"),
        }
    }

    #[tokio::test]
    async fn a_name_with_several_addresses_is_several_replicas() {
        let urls = ["https://cp.test", "http://127.0.0.1:50051", "http://[::1]:50051", "http://one.test:50051"];
        let urls: Vec<String> = urls.iter().map(|u| (*u).to_owned()).collect();
        let found = replicas(&urls, resolve).await.unwrap();
        let summary: Vec<_> = found.iter().map(|r| (r.url.as_str(), r.address)).collect();
        assert_eq!(
            summary,
            [
                ("https://cp.test", Some("10.0.0.1:443".parse().unwrap())),
                ("https://cp.test", Some("[fd00::2]:443".parse().unwrap())),
                ("http://127.0.0.1:50051", None),
                ("http://[::1]:50051", None),
                ("http://one.test:50051", None),
            ]
        );
        assert_eq!(found[1].label, "https://cp.test ([fd00::2]:443)");
        assert!(replicas(&[], resolve).await.is_err());
    }

    #[tokio::test]
    async fn a_replica_is_reached_at_its_address_while_the_url_names_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming));
        // `cp.test` is never resolved: the channel connects to the address.
        let replica =
            Replica { label: "cp".into(), url: format!("http://cp.test:{}", address.port()), address: Some(address) };
        let config = Config::for_test(replica.url.clone(), "/unused".into());
        let channel = replica_channel(&config, &replica).unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let answer = client.check(tonic_health::pb::HealthCheckRequest::default()).await.unwrap().into_inner();
        assert_eq!(answer.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
}
