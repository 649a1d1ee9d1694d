//! Batched usage reports (no write per check): checks are counted in memory
//! per key, minute and outcome, and every `--usage-interval` the counts
//! become reports, each with its own id. A report is resent, with the same
//! id and counts, until the control plane acknowledges it, so one applied
//! whose answer was lost is not counted twice; newer reports wait behind it.
//! A sidecar that dies loses at most what it had not sent: analytics, not
//! billing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use keyplane_proto::sync::v1 as pb;
use keyplane_proto::usage::{MinuteCounts, Outcome, UsageTally};
use rand::Rng;

use crate::control_plane::ControlPlaneClient;
use crate::metrics::Metrics;

/// Most counts in one report (the control plane's limit).
pub const MAX_COUNTS: usize = 1000;
/// Reports kept while the control plane does not acknowledge them; the
/// oldest are dropped beyond this (and counted in a metric).
const MAX_QUEUED_REPORTS: usize = 1000;

/// Counts checks and sends them.
#[derive(Clone)]
pub struct UsageReporter {
    tally: Arc<UsageTally>,
    /// Reports not yet acknowledged, oldest first.
    queue: Arc<tokio::sync::Mutex<VecDeque<pb::ReportUsageRequest>>>,
    metrics: Arc<Metrics>,
}

impl UsageReporter {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { tally: Arc::default(), queue: Arc::default(), metrics }
    }

    /// Counts one check of `key_id`.
    pub fn record(&self, key_id: &str, outcome: Outcome) {
        self.tally.record(key_id, outcome);
    }

    /// Turns what was counted into reports and sends every queued report in
    /// order, stopping at the first that is not acknowledged (it is retried
    /// at the next flush, with the same id).
    pub async fn flush(&self, client: &mut ControlPlaneClient, timeout: Duration) {
        let mut queue = self.queue.lock().await;
        let mut counts: Vec<pb::UsageCount> = self.tally.drain().into_iter().map(to_proto).collect();
        // Reports cover ranges of key ids, sent from a random starting range:
        // sidecars seeing the same keys then rarely report on the same rows
        // at the same moment (each report locks its keys' rollup rows).
        counts.sort_unstable_by(|a, b| a.key_id.cmp(&b.key_id));
        let mut chunks: Vec<&[pb::UsageCount]> = counts.chunks(MAX_COUNTS).collect();
        if !chunks.is_empty() {
            let start = rand::rng().random_range(0..chunks.len());
            chunks.rotate_left(start);
        }
        for chunk in chunks {
            queue.push_back(pb::ReportUsageRequest {
                entries: Vec::new(),
                report_id: new_report_id(),
                counts: chunk.to_vec(),
            });
        }
        if queue.len() > MAX_QUEUED_REPORTS {
            let dropped = queue.len() - MAX_QUEUED_REPORTS;
            queue.drain(..dropped);
            self.metrics.usage_reports_dropped.inc_by(dropped as u64);
            tracing::warn!(dropped, "usage reports dropped: the control plane has not acknowledged them for too long");
        }
        while let Some(report) = queue.front() {
            let sent = tokio::time::timeout(timeout, client.report_usage(report.clone())).await;
            let failure = match sent {
                Ok(Ok(_)) => {
                    queue.pop_front();
                    continue;
                }
                Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            tracing::warn!(%failure, queued = queue.len(), "usage report failed; will retry it");
            return;
        }
    }

    /// Reports every `interval` until the task is dropped.
    pub async fn report_every(self, mut client: ControlPlaneClient, interval: Duration, timeout: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.flush(&mut client, timeout).await;
        }
    }
}

fn to_proto((key_id, minute): (String, MinuteCounts)) -> pb::UsageCount {
    let [allowed, unauthorized, forbidden, rate_limited] = minute.counts;
    pb::UsageCount {
        key_id,
        minute: Some(prost_types::Timestamp { seconds: minute.minute, nanos: 0 }),
        allowed,
        unauthorized,
        forbidden,
        rate_limited,
        last_used_at: minute.last_allowed.map(prost_types::Timestamp::from),
    }
}

/// A fresh report id: the time (for reading logs) and 64 random bits.
fn new_report_id() -> String {
    let millis = UNIX_EPOCH.elapsed().map_or(0, |d| d.as_millis());
    format!("sc-{millis:x}-{:016x}", rand::rng().random::<u64>())
}
