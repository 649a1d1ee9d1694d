//! Prometheus metrics of the control plane and the `/metrics` endpoint.

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::background::Background;

/// Label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the control plane exports.
pub struct Metrics {
    registry: Registry,
    /// Token verifications by outcome.
    pub verifications: Family<Labels, Counter>,
    /// Argon2id verification time.
    pub argon2_seconds: Histogram,
    /// Secrets refused without hashing, by the limit that refused them.
    pub verify_throttled: Family<Labels, Counter>,
    /// Webhook delivery attempts by outcome.
    pub webhook_attempts: Family<Labels, Counter>,
    /// Webhook request time.
    pub webhook_attempt_seconds: Histogram,
    /// Publications stored per transaction (group commit).
    pub publication_batch_size: Histogram,
    /// Usage counts applied, and those naming no key.
    pub usage_counts: Family<Labels, Counter>,
    /// Requests refused before any work, by the limit that refused them.
    pub admission_refused: Family<Labels, Counter>,
    /// Imported keys re-hashed to Keyplane's argon2id on use.
    pub hash_upgrades: Counter,
    /// Keys still on another system's hash (refreshed by the expiry sweep).
    pub keys_on_legacy_hashes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyplane");
        let verifications = Family::<Labels, Counter>::default();
        registry.register("verifications", "Token verifications by outcome", verifications.clone());
        let argon2_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 12));
        registry.register("argon2_verify_seconds", "Argon2id verification time", argon2_seconds.clone());
        let verify_throttled = Family::<Labels, Counter>::default();
        registry.register(
            "verify_throttled",
            "Secrets refused without hashing (limit=key: too many failures for the key id; limit=global: too many \
             failures overall)",
            verify_throttled.clone(),
        );
        let webhook_attempts = Family::<Labels, Counter>::default();
        registry.register("webhook_attempts", "Webhook delivery attempts by outcome", webhook_attempts.clone());
        let webhook_attempt_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register("webhook_attempt_seconds", "Webhook request time", webhook_attempt_seconds.clone());
        let publication_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 7));
        registry.register(
            "publication_batch_size",
            "Publications stored per transaction (concurrent PublishEvent calls are group-committed)",
            publication_batch_size.clone(),
        );
        let usage_counts = Family::<Labels, Counter>::default();
        registry.register(
            "usage_counts",
            "Per-key minute counts of usage reports, by result (applied; unknown_key: the key does not exist)",
            usage_counts.clone(),
        );
        let admission_refused = Family::<Labels, Counter>::default();
        registry.register(
            "admission_refused",
            "Requests refused with RESOURCE_EXHAUSTED before any work (limit=credential: over the credential's \
             request rate; limit=failed_authentications: the address failed to authenticate too often)",
            admission_refused.clone(),
        );
        let hash_upgrades = Counter::default();
        registry.register(
            "api_key_hash_upgrades",
            "Imported keys re-hashed to Keyplane's argon2id at their first verification",
            hash_upgrades.clone(),
        );
        let keys_on_legacy_hashes = Gauge::default();
        registry.register(
            "api_keys_on_legacy_hashes",
            "Keys (of every org) still verified with the hash of the system they were imported from",
            keys_on_legacy_hashes.clone(),
        );
        Self {
            registry,
            hash_upgrades,
            keys_on_legacy_hashes,
            admission_refused,
            verifications,
            argon2_seconds,
            verify_throttled,
            webhook_attempts,
            webhook_attempt_seconds,
            publication_batch_size,
            usage_counts,
        }
    }
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>, background: Background) {
    let stop = background.stop.clone();
    loop {
        let (stream, _peer): (_, SocketAddr) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let metrics = metrics.clone();
            async move {
                if request.uri().path() == "/metrics" {
                    Response::builder()
                        .header("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")
                        .body(Full::new(Bytes::from(metrics.render())))
                } else {
                    Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::new()))
                }
            }
        });
        background.serve_connection(stream, service);
    }
}
