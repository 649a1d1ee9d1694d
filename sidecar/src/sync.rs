//! Following the control plane's key-event stream (ARCHITECTURE.md, "A revocation"): resume from
//! the last applied seq, reconnect with exponential backoff and jitter, flush
//! on Reset, and track staleness so the sidecar fails closed when cut off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyplane_proto::admin::v1 as admin;
use keyplane_proto::sync::v1 as pb;
use keyplane_proto::token::Environment;
use rand::Rng;

use keyplane_proto::permissions::Held;

use crate::cache::{Grants, IdentityPrincipal, KeyCache, KeyId, Limits, Principal, Refusal, SharedPrincipals, Verdict};
use crate::control_plane::ControlPlaneClient;
use crate::credits::CreditLeases;
use crate::error::{Error, Result};
use crate::failover::Failover;
use crate::metrics::Metrics;

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
    (max_staleness, orgs): (Duration, Vec<String>),
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let replica = failover.current();
        let url = failover.url(replica).to_owned();
        let limits = (&credits, &global_limits);
        match watch_once(client.clone(), &cache, limits, &state, &metrics, (max_staleness, &orgs)).await {
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
    (max_staleness, orgs): (Duration, &[String]),
) -> Result<()> {
    let after_seq = state.position();
    // Until the first catch-up nothing is cached (checks answer 503), so
    // there is nothing to replay: start at the head.
    let from_head = !state.caught_up.load(Ordering::Acquire);
    let request = pb::WatchRequest { after_seq, from_head, org_ids: orgs.to_vec() };
    let mut stream = client.watch(request).await?.into_inner();
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
    let grants = grants_from_proto(&principal);
    Principal {
        environment: if principal.environment == admin::Environment::Test as i32 {
            Environment::Test
        } else {
            Environment::Live
        },
        expires_at: principal.expires_at.and_then(|t| std::time::SystemTime::try_from(t).ok()),
        limits: Limits::from(&principal).boxed(),
        identity: principal.identity.map(|identity| {
            Box::new(IdentityPrincipal {
                limits: Limits::from(&identity),
                id: identity.id,
                external_id: identity.external_id,
            })
        }),
        grants,
        org_id: shared.string(&principal.org_id),
        scopes: shared.scopes(&principal.scopes),
    }
}

/// What a key holds beyond its scopes, if anything.
fn grants_from_proto(principal: &admin::Principal) -> Option<Box<Grants>> {
    let beyond_scopes = principal.permissions.iter().any(|permission| !principal.scopes.contains(permission));
    (beyond_scopes || !principal.roles.is_empty()).then(|| {
        Box::new(Grants {
            held: Held::new(principal.permissions.iter().chain(&principal.scopes).cloned()),
            role_ids: principal.roles.iter().map(|role| role.id.clone()).collect(),
        })
    })
}
