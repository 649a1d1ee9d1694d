//! Recording finished attempts: in batches, in one transaction each with
//! the delivery stats and endpoint health, and again when the database was
//! unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Dispatcher, RECORD_BATCH, stats};
use crate::error::Error;
use crate::store;
use crate::store::deliveries::{self, AttemptRecord, NextStep};

/// How long the recorder waits after the first attempt of a batch for more
/// to share its transaction (fewer statements and commits per attempt).
/// Nothing is sent later for it: the request has been answered, and the
/// record is committed asynchronously anyway (a crash before it makes the
/// delivery due again after its lease, as it always could).
const RECORD_LINGER: Duration = Duration::from_millis(20);

impl Dispatcher {
    /// Records finished attempts in batches (what arrives within
    /// [`RECORD_LINGER`] of the first, and while the previous batch was
    /// stored) until every sender is gone; sets `backlogged` while a batch
    /// waits for the database to come back.
    pub(super) async fn record_until_closed(
        self: Arc<Self>,
        mut finished: mpsc::UnboundedReceiver<AttemptRecord>,
        backlogged: Arc<AtomicBool>,
    ) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        loop {
            if batch.is_empty() {
                if finished.recv_many(&mut batch, RECORD_BATCH).await == 0 {
                    return;
                }
                linger(&mut finished, &mut batch).await;
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
/// Adds to `batch` what arrives within [`RECORD_LINGER`], up to [`RECORD_BATCH`].
async fn linger(finished: &mut mpsc::UnboundedReceiver<AttemptRecord>, batch: &mut Vec<AttemptRecord>) {
    let deadline = Instant::now() + RECORD_LINGER;
    while batch.len() < RECORD_BATCH {
        let room = RECORD_BATCH - batch.len();
        match tokio::time::timeout_at(deadline, finished.recv_many(batch, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
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

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::{RECORD_BATCH, linger};
    use crate::store::deliveries::{AttemptRecord, NextStep};

    fn record(i: usize) -> AttemptRecord {
        AttemptRecord {
            delivery_id: format!("dlv_{i}"),
            org_id: "org_a".into(),
            subscription_id: "sub_a".into(),
            event_type: "a.b".into(),
            failing_since: None,
            number: Some(1),
            started_at: crate::store::now(),
            status_code: Some(200),
            latency_micros: 1,
            error: None,
            response_excerpt: None,
            next: NextStep::Succeeded,
        }
    }

    /// A batch takes what is queued, up to its cap, and does not wait out
    /// the window once every sender is gone.
    #[tokio::test]
    async fn a_batch_gathers_what_is_queued_up_to_its_cap() {
        let (send, mut finished) = mpsc::unbounded_channel();
        for i in 0..RECORD_BATCH + 5 {
            send.send(record(i)).unwrap();
        }
        let mut batch = vec![finished.recv().await.unwrap()];
        linger(&mut finished, &mut batch).await;
        assert_eq!(batch.len(), RECORD_BATCH);
        assert_eq!(batch[RECORD_BATCH - 1].delivery_id, format!("dlv_{}", RECORD_BATCH - 1), "in order");

        drop(send);
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(30), linger(&mut finished, &mut rest))
            .await
            .expect("a closed channel ends the wait");
        assert_eq!(rest.len(), 5);
    }
}
