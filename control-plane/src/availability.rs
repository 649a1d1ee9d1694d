//! Fast failure while the database is lost.
//!
//! A pool that is merely busy and a database that is gone look the same to
//! a caller waiting for a connection, so they are told apart by a probe:
//! its own connection, pinged every [`PROBE_INTERVAL`] with a short timeout.
//! While the probe fails, the health service reports NOT_SERVING and the
//! [`DatabaseGate`] answers every API call UNAVAILABLE at once (with
//! `RetryInfo`) — including calls already waiting, which would otherwise
//! hang until the pool's acquire timeout. Health and reflection stay up.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tonic::Status;

use crate::error::{DATABASE_UNAVAILABLE, Error};

/// How often the probe pings the database.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Whether the database answers, as the probe last saw it.
#[derive(Clone)]
pub struct Reachability(watch::Sender<bool>);

impl Default for Reachability {
    fn default() -> Self {
        Self(watch::channel(true).0)
    }
}

impl Reachability {
    /// Whether the last probe succeeded.
    pub fn is_reachable(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the database is unreachable (at once if it is now).
    async fn lost(&self) {
        let mut receiver = self.0.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = receiver.wait_for(|reachable| !reachable).await;
    }

    /// Pings `probe` (a connection of its own, so a busy pool cannot make the
    /// database look lost) until `stop` is cancelled, keeping the health
    /// service in line.
    pub async fn probe(
        self,
        probe: DatabaseConnection,
        timeout: Duration,
        health: tonic_health::server::HealthReporter,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
            let reachable = tokio::time::timeout(timeout, probe.ping()).await.is_ok_and(|ping| ping.is_ok());
            if reachable == self.is_reachable() {
                continue;
            }
            self.0.send_replace(reachable);
            let status = if reachable {
                tracing::info!("database reachable again; serving");
                tonic_health::ServingStatus::Serving
            } else {
                tracing::warn!("database unreachable; answering UNAVAILABLE and reporting NOT_SERVING");
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
        }
    }
}

/// Tower layer that fails API calls fast while the database is lost.
#[derive(Clone)]
pub struct DatabaseGate(pub Reachability);

impl<S> tower::Layer<S> for DatabaseGate {
    type Service = Gated<S>;

    fn layer(&self, inner: S) -> Gated<S> {
        Gated { inner, reachability: self.0.clone() }
    }
}

/// A service behind the [`DatabaseGate`].
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    reachability: Reachability,
}

/// Calls that do not touch the database.
fn bypasses_gate(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The answer while the database is lost: the same Status as any call that
/// found the database unreachable (one mapping, in `error.rs`).
fn unavailable() -> http::Response<tonic::body::Body> {
    Status::from(Error::Unavailable(DATABASE_UNAVAILABLE.into())).into_http()
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if bypasses_gate(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        if !self.reachability.is_reachable() {
            return Box::pin(async { Ok(unavailable()) });
        }
        let reachability = self.reachability.clone();
        let call = self.inner.call(request);
        Box::pin(async move {
            tokio::select! {
                response = call => response,
                // Dropping the call rolls back any transaction it had open.
                () = reachability.lost() => Ok(unavailable()),
            }
        })
    }
}
