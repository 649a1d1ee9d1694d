//! Group commit of publications. Each PublishEvent call queues its
//! publication for a few writer tasks; a writer takes whatever has queued
//! since it last looked (up to [`MAX_BATCH`]) and stores it in one
//! transaction per org: one idempotency lookup, one subscription read, one
//! insert per table and one synchronous commit for the lot, where each
//! publication alone cost the same statements and a commit of its own. A
//! lone publication is a batch of one and waits for nothing; under load the
//! batches grow while the previous ones commit. Each caller is answered
//! after its batch has committed, so an acknowledged publication is stored.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::outbox::{Outbox, matching};
use crate::background::Background;
use crate::error::{DATABASE_UNAVAILABLE, Error, Result, is_unavailable, is_unique_violation};
use crate::metrics::Metrics;
use crate::service::webhooks::dispatch::queue::DispatchQueue;
use crate::store::events::NewEvent;
use crate::store::{self, OrgTx, events, webhooks};

/// Result of a publication (what `PublishEvent` answers).
#[derive(Debug)]
pub struct Published {
    /// The event (the earlier one for a repeated idempotency key).
    pub event: events::Model,
    pub deliveries_created: usize,
    /// Whether the idempotency key had been used before.
    pub duplicate: bool,
}

/// Batches being written at once at most: while one commits, the next
/// gathers (1, 2 and 4 measured alike within the noise: BENCHMARKS.md).
const WRITERS: usize = 2;
/// Publications in one batch at most.
const MAX_BATCH: usize = 64;
/// Publications waiting for a writer at most; past it, callers wait to queue.
const QUEUE_CAPACITY: usize = 1_024;
/// Times a batch is written again after losing an idempotency-key race.
const KEY_RACE_RETRIES: usize = 3;

/// A validated publication.
pub struct Publication {
    pub org: String,
    pub event: NewEvent,
}

struct Queued {
    publication: Publication,
    answer: oneshot::Sender<Result<Published>>,
}

/// Hands publications to the writer tasks.
pub struct Publisher {
    queue: mpsc::Sender<Queued>,
}

impl Publisher {
    /// Starts the writers; they stop once the publisher is dropped and the
    /// queue is empty.
    pub fn start(
        db: DatabaseConnection,
        dispatch: DispatchQueue,
        metrics: Arc<Metrics>,
        background: &Background,
    ) -> Self {
        let (queue, batches) = mpsc::channel(QUEUE_CAPACITY);
        let batches = Arc::new(Mutex::new(batches));
        for _ in 0..WRITERS {
            let writer = Writer { db: db.clone(), dispatch: dispatch.clone(), metrics: metrics.clone() };
            background.spawn("event-writer", writer.write_batches(batches.clone()));
        }
        Self { queue }
    }

    /// Stores `publication` with its batch; answers once that has committed.
    pub async fn publish(&self, publication: Publication) -> Result<Published> {
        let stopped = || Error::Unavailable("the server is shutting down".into());
        let (answer, answered) = oneshot::channel();
        self.queue.send(Queued { publication, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// What a writer task needs.
struct Writer {
    db: DatabaseConnection,
    dispatch: DispatchQueue,
    metrics: Arc<Metrics>,
}

impl Writer {
    async fn write_batches(self, batches: Arc<Mutex<mpsc::Receiver<Queued>>>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if batches.lock().await.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            let mut by_org: HashMap<String, Vec<Queued>> = HashMap::new();
            // A caller that has gone (cancelled, or answered UNAVAILABLE while
            // the database was lost) is told nothing: its publication is not
            // stored behind its back.
            for queued in batch.drain(..).filter(|queued| !queued.answer.is_closed()) {
                by_org.entry(queued.publication.org.clone()).or_default().push(queued);
            }
            for (org, queued) in by_org {
                self.metrics.publication_batch_size.observe(queued.len() as f64);
                let (publications, answers): (Vec<_>, Vec<_>) =
                    queued.into_iter().map(|q| (q.publication, q.answer)).unzip();
                match self.write_retrying(&org, &publications).await {
                    Ok(published) => {
                        for (answer, published) in answers.into_iter().zip(published) {
                            let _ = answer.send(Ok(published));
                        }
                    }
                    Err(error) => {
                        for answer in answers {
                            let _ = answer.send(Err(for_each_caller(&error)));
                        }
                    }
                }
            }
        }
    }

    /// Writes one org's batch. A unique violation means another transaction
    /// (another writer, another replica) stored one of the batch's idempotency
    /// keys and committed first (the conflicting insert waited for it): written
    /// again, the batch finds that event.
    async fn write_retrying(&self, org: &str, publications: &[Publication]) -> Result<Vec<Published>> {
        let mut retries = 0;
        loop {
            match self.write(org, publications).await {
                Err(Error::Database(error)) if is_unique_violation(&error) && retries < KEY_RACE_RETRIES => {
                    retries += 1
                }
                result => return result,
            }
        }
    }

    /// Stores the events of one org's batch, each with a delivery to every
    /// active subscription that matches it, in one transaction; an idempotency
    /// key already used (before, or earlier in the batch) answers with its
    /// first event instead.
    async fn write(&self, org: &str, publications: &[Publication]) -> Result<Vec<Published>> {
        let tx = OrgTx::begin_unaudited(&self.db, org).await?.for_changes();
        let keys: Vec<&str> = publications.iter().filter_map(|p| p.event.idempotency_key.as_deref()).collect();
        let mut first_with_key: HashMap<String, events::Model> =
            events::find_by_idempotency_keys(tx.conn(), org, &keys)
                .await?
                .into_iter()
                .filter_map(|event| Some((event.idempotency_key.clone()?, event)))
                .collect();
        let subscriptions = webhooks::active(tx.conn(), org).await?;
        let now = store::now();
        let leased_until = self.dispatch.publication_lease(now);
        let mut outbox = Outbox::new(now, leased_until);
        let mut published = Vec::with_capacity(publications.len());
        for publication in publications {
            let new = &publication.event;
            let key = new.idempotency_key.as_ref();
            if let Some(event) = key.and_then(|key| first_with_key.get(key)) {
                published.push(Published { event: event.clone(), deliveries_created: 0, duplicate: true });
                continue;
            }
            let targets = matching(&subscriptions, &new.event_type, &new.channels);
            let event = outbox.add(&tx, new.clone(), &targets).clone();
            if let Some(key) = key {
                first_with_key.insert(key.clone(), event.clone());
            }
            published.push(Published { event, deliveries_created: targets.len(), duplicate: false });
        }
        let deliveries = outbox.write(&tx).await?;
        self.dispatch.commit_published(tx, deliveries, leased_until.is_some()).await?;
        Ok(published)
    }
}

/// What each caller of a failed batch is told. [`Error`] is not `Clone`
/// (it carries the driver's error), so each gets its kind and message:
/// UNAVAILABLE stays UNAVAILABLE.
fn for_each_caller(error: &Error) -> Error {
    match error {
        Error::Database(db) if is_unavailable(db) => Error::Unavailable(DATABASE_UNAVAILABLE.into()),
        Error::Unavailable(message) => Error::Unavailable(message.clone()),
        other => Error::Database(DbErr::Custom(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Publication, Writer};
    use crate::metrics::Metrics;
    use crate::service::webhooks::dispatch::queue::DispatchQueue;
    use crate::store;
    use crate::store::events::NewEvent;

    fn publication(payload: &str, key: Option<&str>) -> Publication {
        let event = NewEvent {
            event_type: "order.paid".into(),
            payload: payload.into(),
            idempotency_key: key.map(str::to_owned),
            channels: Vec::new(),
        };
        Publication { org: "org_a".into(), event }
    }

    /// A batch in which a key repeats, and one whose key an earlier batch
    /// stored: each key is stored once and each caller gets the right event.
    #[tokio::test]
    async fn a_batch_stores_each_idempotency_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("keyplane.db").display());
        let db = store::connect(&url, std::time::Duration::from_secs(5)).await.unwrap();
        store::migrate(&db).await.unwrap();
        let writer =
            Writer { db: db.clone(), dispatch: DispatchQueue::default(), metrics: Arc::new(Metrics::default()) };

        let earlier = writer.write("org_a", &[publication(r#"{"n":0}"#, Some("b"))]).await.unwrap();
        let batch = [
            publication(r#"{"n":1}"#, Some("a")),
            publication(r#"{"n":2}"#, None),
            publication(r#"{"n":3}"#, Some("a")),
            publication(r#"{"n":4}"#, Some("b")),
        ];
        let answers = writer.write("org_a", &batch).await.unwrap();

        let payloads: Vec<&str> = answers.iter().map(|a| a.event.payload.as_str()).collect();
        assert_eq!(payloads, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":1}"#, r#"{"n":0}"#]);
        let duplicates: Vec<bool> = answers.iter().map(|a| a.duplicate).collect();
        assert_eq!(duplicates, [false, false, true, true]);
        assert_eq!(answers[2].event.id, answers[0].event.id);
        assert_eq!(answers[3].event.id, earlier[0].event.id);
        let stored =
            store::events::find_for_dispatch(&db, &answers.iter().map(|a| a.event.id.clone()).collect::<Vec<_>>())
                .await
                .unwrap();
        assert_eq!(stored.len(), 3, "a, the keyless one and the earlier b");
    }
}
