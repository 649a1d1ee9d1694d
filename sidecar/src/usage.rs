//! Batched usage reports: allowed checks are counted in memory per key and
//! sent to the control plane every few seconds (no write per check).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keyplane_proto::sync::v1 as pb;

use crate::sync::ControlPlaneClient;

/// Most entries in one report (the control plane's limit).
pub const MAX_ENTRIES: usize = 1000;

/// Counts since the last report.
#[derive(Clone, Default)]
pub struct UsageCounter {
    pending: Arc<Mutex<HashMap<String, (u64, SystemTime)>>>,
}

impl UsageCounter {
    /// Counts one allowed check of `key_id`.
    pub fn record(&self, key_id: &str) {
        let now = SystemTime::now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get_mut(key_id) {
            Some((count, last)) => {
                *count += 1;
                *last = now;
            }
            None => {
                pending.insert(key_id.to_owned(), (1, now));
            }
        }
    }

    fn take(&self) -> HashMap<String, (u64, SystemTime)> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn restore(&self, batch: HashMap<String, (u64, SystemTime)>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        for (key, (count, last)) in batch {
            let entry = pending.entry(key).or_insert((0, last));
            entry.0 += count;
            entry.1 = entry.1.max(last);
        }
    }

    /// Sends the counts in reports of at most [`MAX_ENTRIES`]; counts of a
    /// failed report are kept for the next flush.
    pub async fn flush(&self, client: &mut ControlPlaneClient, timeout: Duration) {
        let pending: Vec<_> = self.take().into_iter().collect();
        for chunk in pending.chunks(MAX_ENTRIES) {
            let entries = chunk
                .iter()
                .map(|(key_id, (count, last))| pb::UsageEntry {
                    key_id: key_id.clone(),
                    count: *count,
                    last_used_at: Some(prost_types::Timestamp::from(*last)),
                })
                .collect();
            let report = tokio::time::timeout(timeout, client.report_usage(pb::ReportUsageRequest { entries })).await;
            let failure = match report {
                Ok(Ok(_)) => continue,
                Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                Err(_) => format!("no answer within {timeout:?}"),
            };
            tracing::warn!(%failure, "usage report failed; will retry");
            self.restore(chunk.iter().cloned().collect());
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
