//! Following the control plane's key-event stream (DESIGN §5): resume from
//! the last applied seq, reconnect with exponential backoff and jitter, flush
//! on Reset, and track staleness so the sidecar fails closed when cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyplane_proto::admin::v1 as admin;
use keyplane_proto::sync::v1 as pb;
use pb::key_sync_service_client::KeySyncServiceClient;
use rand::Rng;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cache::{KeyCache, Principal, Refusal, Verdict};
use crate::error::{Error, Result};
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

/// Authenticated client of `KeySyncService`.
pub type ControlPlaneClient = KeySyncServiceClient<InterceptedService<Channel, Credential>>;

/// Where the sidecar stands in the event log.
pub struct SyncState {
    started: Instant,
    position: AtomicU64,
    last_heard_ms: AtomicU64,
    caught_up: AtomicBool,
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
pub async fn follow(client: ControlPlaneClient, cache: KeyCache, state: Arc<SyncState>, metrics: Arc<Metrics>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match watch_once(client.clone(), &cache, &state, &metrics).await {
            Ok(()) => tracing::warn!("key-event stream ended; reconnecting"),
            Err(error) => tracing::warn!(%error, "key-event stream failed; reconnecting"),
        }
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

async fn watch_once(
    mut client: ControlPlaneClient,
    cache: &KeyCache,
    state: &SyncState,
    metrics: &Metrics,
) -> Result<()> {
    let after_seq = state.position();
    // Until the first catch-up nothing is cached (checks answer 503), so
    // there is nothing to replay: start at the head.
    let from_head = !state.caught_up.load(Ordering::Acquire);
    let mut stream = client.watch(pb::WatchRequest { after_seq, from_head }).await?.into_inner();
    metrics.stream_connected.set(1);
    tracing::info!(after_seq, "following the key-event stream");
    while let Some(message) = stream.message().await? {
        match message.message {
            Some(pb::watch_response::Message::Event(event)) => {
                let terminal = matches!(
                    pb::KeyEventKind::try_from(event.kind),
                    Ok(pb::KeyEventKind::Revoked | pb::KeyEventKind::Deleted)
                );
                cache.apply_change(&event.key_id, event.seq, terminal).await;
                state.position.fetch_max(event.seq, Ordering::AcqRel);
                metrics.applied_seq.set(state.position());
            }
            Some(pb::watch_response::Message::Heartbeat(heartbeat)) => {
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
    Ok(())
}

/// Asks the control plane about a token.
pub async fn verify(client: &mut ControlPlaneClient, token: &str, metrics: &Metrics) -> Result<Verdict> {
    let started = Instant::now();
    metrics.verify_calls.inc();
    let response = client.verify(pb::VerifyRequest { token: token.to_owned() }).await;
    metrics.verify_seconds.observe(started.elapsed().as_secs_f64());
    let response = response?.into_inner();
    let principal = response.principal.map(principal_from_proto);
    if response.valid {
        let principal = principal.ok_or_else(|| tonic::Status::internal("valid answer without principal"))?;
        return Ok(Verdict::Valid { principal: Arc::new(principal), as_of: response.as_of_seq });
    }
    let refusal = match admin::VerifyFailure::try_from(response.failure) {
        Ok(admin::VerifyFailure::BadSecret) => Refusal::BadSecret,
        Ok(admin::VerifyFailure::Revoked) => Refusal::Revoked,
        Ok(admin::VerifyFailure::Expired) => Refusal::Expired,
        _ => Refusal::Unknown,
    };
    Ok(Verdict::Invalid { refusal, key_id: principal.map(|p| p.key_id), as_of: response.as_of_seq })
}

fn principal_from_proto(principal: admin::Principal) -> Principal {
    Principal {
        environment: if principal.environment == admin::Environment::Test as i32 { "test" } else { "live" },
        expires_at: principal.expires_at.and_then(|t| std::time::SystemTime::try_from(t).ok()),
        rate_limit: principal.rate_limit.and_then(|limit| {
            let window = Duration::try_from(limit.window?).ok()?;
            Some((limit.requests, window))
        }),
        key_id: principal.key_id,
        org_id: principal.org_id,
        scopes: principal.scopes,
    }
}
