//! Prometheus metrics of the sidecar.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Decision and reason labels (fixed-size: no allocation per check).
pub type CheckLabels = [(&'static str, &'static str); 2];
/// One label.
pub type Label = [(&'static str, &'static str); 1];

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    /// Checks by decision (allow/deny) and reason.
    pub checks: Family<CheckLabels, Counter>,
    /// Cache lookups by result (hit/miss); the hit ratio is hit / (hit + miss).
    pub cache_lookups: Family<Label, Counter>,
    /// The counters every allowed check from the cache adds to, looked up
    /// once: `checks{decision="allow",reason="ok"}`, `cache_lookups{result}`.
    pub hot: HotCounters,
    /// Verify calls to the control plane.
    pub verify_calls: Counter,
    /// Latency of Verify calls.
    pub verify_seconds: Histogram,
    /// Key events applied, by kind (revoked, updated, deleted, expired).
    pub key_events: Family<Label, Counter>,
    /// LeaseCredits calls by result (granted, exhausted, error).
    pub credit_leases: Family<Label, Counter>,
    /// LeaseRequests calls (global rate limits) by result (granted, exhausted, error).
    pub request_leases: Family<Label, Counter>,
    /// ReturnCredits calls by result (returned, error).
    pub credit_returns: Family<Label, Counter>,
    /// Last key-event seq applied.
    pub applied_seq: Gauge<u64, AtomicU64>,
    /// Seconds since the last event or heartbeat (stream lag / staleness).
    pub staleness_seconds: Gauge<f64, AtomicU64>,
    /// 1 while the Watch stream is connected.
    pub stream_connected: Gauge,
    /// Watch reconnect attempts.
    pub stream_reconnects: Counter,
    /// Resets received (cache flushed).
    pub stream_resets: Counter,
    /// Usage reports dropped unsent (the control plane was unreachable too long).
    pub usage_reports_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyplane_sidecar");
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register("checks", "Checks by decision and reason", checks.clone());
        let cache_lookups = Family::<Label, Counter>::default();
        registry.register("cache_lookups", "Cache lookups by result", cache_lookups.clone());
        let verify_calls = Counter::default();
        registry.register("verify_calls", "Verify calls to the control plane", verify_calls.clone());
        let verify_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register("verify_seconds", "Latency of Verify calls", verify_seconds.clone());
        let key_events = Family::<Label, Counter>::default();
        registry.register("key_events", "Key events applied, by kind", key_events.clone());
        let credit_leases = Family::<Label, Counter>::default();
        registry.register("credit_leases", "LeaseCredits calls by result", credit_leases.clone());
        let request_leases = Family::<Label, Counter>::default();
        registry.register(
            "request_leases",
            "LeaseRequests calls (global rate limits) by result",
            request_leases.clone(),
        );
        let credit_returns = Family::<Label, Counter>::default();
        registry.register("credit_returns", "ReturnCredits calls by result", credit_returns.clone());
        let applied_seq = Gauge::<u64, AtomicU64>::default();
        registry.register("applied_seq", "Last key-event seq applied", applied_seq.clone());
        let staleness_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register("staleness_seconds", "Seconds since the last event or heartbeat", staleness_seconds.clone());
        let stream_connected = Gauge::default();
        registry.register("stream_connected", "1 while the Watch stream is connected", stream_connected.clone());
        let stream_reconnects = Counter::default();
        registry.register("stream_reconnects", "Watch reconnect attempts", stream_reconnects.clone());
        let stream_resets = Counter::default();
        registry.register("stream_resets", "Resets received", stream_resets.clone());
        let usage_reports_dropped = Counter::default();
        registry.register(
            "usage_reports_dropped",
            "Usage reports dropped unsent because the control plane did not acknowledge them for too long",
            usage_reports_dropped.clone(),
        );
        // One statement each: `get_or_create` holds the family's lock until
        // its guard is dropped, and the next one may need to write.
        let allowed = checks.get_or_create(&[("decision", "allow"), ("reason", "ok")]).clone();
        let hits = cache_lookups.get_or_create(&[("result", "hit")]).clone();
        let misses = cache_lookups.get_or_create(&[("result", "miss")]).clone();
        let hot = HotCounters { allowed, hits, misses };
        Self {
            registry,
            checks,
            cache_lookups,
            hot,
            verify_calls,
            verify_seconds,
            key_events,
            credit_leases,
            request_leases,
            credit_returns,
            applied_seq,
            staleness_seconds,
            stream_connected,
            stream_reconnects,
            stream_resets,
            usage_reports_dropped,
        }
    }
}

/// Counters of [`Metrics`] families, each also in its family.
pub struct HotCounters {
    pub allowed: Counter,
    pub hits: Counter,
    pub misses: Counter,
}

impl Metrics {
    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}
