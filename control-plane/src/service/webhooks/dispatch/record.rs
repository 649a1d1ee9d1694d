//! Recording finished attempts: in batches, in one transaction each with
//! the delivery stats and endpoint health, and again when the database was
//! unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

use super::{Dispatcher, RECORD_BATCH, stats};
use crate::error::Error;
use crate::store;
use crate::store::deliveries::{self, AttemptRecord, NextStep};

impl Dispatcher {
    /// Records finished attempts in batches (whatever arrived while the
    /// previous batch was stored) until every sender is gone; sets
    /// `backlogged` while a batch waits for the database to come back.
    pub(super) async fn record_until_closed(
        self: Arc<Self>,
        mut finished: mpsc::UnboundedReceiver<AttemptRecord>,
        backlogged: Arc<AtomicBool>,
    ) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        loop {
            if batch.is_empty() && finished.recv_many(&mut batch, RECORD_BATCH).await == 0 {
                return;
            }
            let stored = self.record(&mut batch).await;
            backlogged.store(!stored, Ordering::Release);
            if !stored {
                tokio::time::sleep(self.settings.poll).await;
            }
        }
    }

    /// Records finished attempts, their statistics and endpoint health in one transaction,
    /// then announces failure runs and exhausted deliveries and disables
    /// endpoints that answered 410 or have failed for too long.
    /// Empties `batch` when stored; when the database cannot be reached,
    /// leaves it for the caller to try again and returns false. A batch the
    /// database rejects is dropped (logged): its deliveries are retried
    /// after their lease, rather than blocking every later delivery.
    async fn record(&self, batch: &mut Vec<AttemptRecord>) -> bool {
        let stored = async {
            let tx = store::begin_relaxed(&self.db).await?;
            deliveries::record_attempts(&tx, batch).await?;
            stats::record(&tx, batch).await?;
            let news = self.health.record(&tx, batch).await?;
            tx.commit().await?;
            Ok::<_, Error>(news)
        };
        match stored.await {
            Ok(news) => {
                batch.clear();
                self.health.announce(news).await;
                true
            }
            Err(Error::Database(error)) if crate::error::is_unavailable(&error) => {
                tracing::warn!(%error, attempts = batch.len(), "the database is unreachable; recording webhook attempts again before claiming more");
                false
            }
            Err(error) => {
                tracing::error!(%error, attempts = batch.len(), "recording webhook attempts failed; those deliveries are retried after their lease");
                batch.clear();
                true
            }
        }
    }
}
/// A claimed delivery that fails without a request: its subscription or
/// event is gone, or its secrets cannot be opened.
pub(super) fn abandon(delivery: &deliveries::Model, why: &str) -> AttemptRecord {
    AttemptRecord {
        delivery_id: delivery.id.clone(),
        org_id: delivery.org_id.clone(),
        subscription_id: delivery.subscription_id.clone(),
        event_type: delivery.event_type.clone(),
        failing_since: None,
        number: None,
        started_at: store::now(),
        status_code: None,
        latency_micros: 0,
        error: Some(why.to_owned()),
        response_excerpt: None,
        next: NextStep::Failed,
    }
}
