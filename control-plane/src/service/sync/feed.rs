//! The key-event feed (ARCHITECTURE.md, "A revocation"): each control-plane
//! process tails `key_events` itself (woken at once by its own commits and,
//! on Postgres, by other replicas' through LISTEN/NOTIFY; polling as the
//! fallback) and fans events out to its Watch streams, so a change made
//! through any replica reaches every sidecar.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sea_orm::sqlx::postgres::{PgListener, PgPool};
use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::background::Background;
use crate::error::{Error, Result};
use crate::store::key_events;

use super::channels::{Channels, Interest, Live};

/// Events read from the log per query.
const BATCH: u64 = 1000;

/// Wakes the tailer on every notification of [`key_events::CHANNEL`] (and
/// once listening starts, for what was missed before) until the listener fails.
async fn listen(pool: &PgPool, committed: &Notify) -> std::result::Result<Infallible, sea_orm::sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(key_events::CHANNEL).await?;
    committed.notify_one();
    loop {
        // `None`: the connection was lost; the next call reconnects.
        listener.try_recv().await?;
        committed.notify_one();
    }
}

/// One message of a Watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedMessage {
    /// A key changed.
    Event(key_events::Model),
    /// Every event up to this seq has been delivered on the stream, and the
    /// log was read successfully within the last heartbeat period.
    Heartbeat(i64),
    /// The requested position is gone: flush and continue from this head.
    Reset(i64),
}

/// Timing of the feed.
#[derive(Clone, Copy, Debug)]
pub struct FeedSettings {
    /// Heartbeat period of each stream; also how long a read of the log may
    /// take before it counts as failed.
    pub heartbeat: Duration,
    /// How often the log is polled for other replicas' commits.
    pub poll: Duration,
}

/// The key-event feed of this process.
pub struct KeyEventFeed {
    db: DatabaseConnection,
    settings: FeedSettings,
    /// What the tailer sends each stream.
    channels: Channels,
    /// Highest seq broadcast so far.
    tailed: AtomicI64,
    /// When the log was last read successfully (by the tailer or a replay).
    last_read: std::sync::Mutex<tokio::time::Instant>,
    /// Its streams' tasks; its stop is cancelled at shutdown: open streams
    /// end (sidecars reconnect elsewhere) so the server can drain.
    background: Background,
}

impl KeyEventFeed {
    /// A feed starting at the current head of the log, whose streams end at shutdown.
    pub async fn new(db: DatabaseConnection, settings: FeedSettings, background: Background) -> Result<Arc<Self>> {
        let head = key_events::head_seq(&db).await?;
        Ok(Arc::new(Self {
            db,
            settings,
            channels: Channels::default(),
            tailed: AtomicI64::new(head),
            last_read: std::sync::Mutex::new(tokio::time::Instant::now()),
            background,
        }))
    }

    /// The heartbeat period of every stream.
    pub fn heartbeat_interval(&self) -> Duration {
        self.settings.heartbeat
    }

    /// Tails the log until the feed stops: woken by local commits, polling otherwise.
    pub async fn tail(self: Arc<Self>, committed: Arc<Notify>) {
        loop {
            tokio::select! {
                () = self.background.stop.cancelled() => return,
                () = committed.notified() => {},
                () = tokio::time::sleep(self.settings.poll) => {},
            }
            if let Err(error) = self.tail_once().await {
                tracing::warn!(%error, "reading the key-event log failed; retrying");
            }
        }
    }

    /// Wakes the tailer whenever any replica commits key events (Postgres
    /// LISTEN/NOTIFY on [`key_events::CHANNEL`]), until the feed stops.
    /// Notifications sent while the listening connection is down are lost,
    /// so every reconnection wakes the tailer too, and polling stays as the
    /// fallback. SQLite serves one process: nothing to listen for.
    pub async fn wake_on_notifications(self: Arc<Self>, committed: Arc<Notify>) {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        let pool = self.db.get_postgres_connection_pool();
        loop {
            let error = tokio::select! {
                () = self.background.stop.cancelled() => return,
                Err(error) = listen(pool, &committed) => error,
            };
            tracing::warn!(%error, "listening for other replicas' key events failed; polling until it recovers");
            tokio::select! {
                () = self.background.stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.heartbeat) => {},
            }
        }
    }

    async fn tail_once(&self) -> Result<()> {
        loop {
            let after = self.tailed.load(Ordering::Acquire);
            let events = self.read_log(after).await?;
            let Some(last) = events.last().map(|e| e.seq) else {
                return Ok(());
            };
            self.channels.send(events);
            // After the events are in the channels: a stream that reads this
            // finds every event up to it in its channel (see `stream`).
            self.tailed.store(last, Ordering::Release);
        }
    }

    /// Reads up to a batch of events after `after`, recording a successful
    /// read. A read that does not answer within a heartbeat period counts as
    /// failed, so a database that hangs stops heartbeats as surely as one
    /// that refuses connections.
    async fn read_log(&self, after: i64) -> Result<Vec<key_events::Model>> {
        let started = tokio::time::Instant::now();
        let events = tokio::time::timeout(self.settings.heartbeat, key_events::after(&self.db, after, BATCH))
            .await
            .map_err(|_| Error::Unavailable("reading the key-event log timed out".into()))??;
        let mut last_read = self.last_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *last_read = (*last_read).max(started);
        Ok(events)
    }

    /// Whether this replica may vouch for its streams: it has read the log
    /// successfully within the last heartbeat period (plus one poll). A
    /// heartbeat promises "nothing committed is missing", which a replica
    /// cut off from its database cannot promise.
    fn vouches(&self) -> bool {
        let last_read = *self.last_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last_read.elapsed() <= self.settings.heartbeat + self.settings.poll
    }

    /// Starts a Watch stream of the events `interest` names after
    /// `after_seq` (or at the head, for a sidecar with nothing cached).
    pub fn watch(
        self: &Arc<Self>,
        after_seq: i64,
        from_head: bool,
        interest: Interest,
    ) -> mpsc::Receiver<Result<FeedMessage>> {
        // Subscribe before reading the log so nothing committed in between is missed.
        let live = self.channels.subscribe(&interest);
        let (sender, receiver) = mpsc::channel(256);
        let feed = self.clone();
        self.background.spawn_child(async move {
            if let Err(error) = feed.stream(after_seq, from_head, &interest, live, &sender).await {
                let _ = sender.send(Err(error)).await;
            }
        });
        receiver
    }

    async fn stream(
        &self,
        after_seq: i64,
        from_head: bool,
        interest: &Interest,
        mut live: Live,
        sender: &mpsc::Sender<Result<FeedMessage>>,
    ) -> Result<()> {
        let send = |message| async { sender.send(Ok(message)).await.map_err(|_| Error::StreamClosed) };
        let head = key_events::head_seq(&self.db).await?;
        let oldest = key_events::oldest_seq(&self.db).await?;
        let mut position = after_seq;
        let gap = oldest.is_some_and(|oldest| after_seq + 1 < oldest);
        if from_head {
            position = head;
        } else if after_seq > head || gap {
            position = head;
            send(FeedMessage::Reset(head)).await?;
        }
        position = self.replay(position, interest, sender).await?;
        // A heartbeat carries only what this stream delivered (or left out):
        // resuming after it can never skip an event still queued for this stream.
        send(FeedMessage::Heartbeat(position)).await?;
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                () = sender.closed() => return Ok(()),
                () = self.background.stop.cancelled() => return Ok(()),
                _ = heartbeat.tick() => {
                    if self.vouches() {
                        // Every event up to `tailed` is in this stream's channel: once
                        // it is drained, the stream has had all of them that it wants,
                        // including those its channel never carried (other orgs').
                        let tailed = self.tailed.load(Ordering::Acquire);
                        position = self.drain(position, interest, &mut live, sender).await?.max(tailed);
                        send(FeedMessage::Heartbeat(position)).await?;
                    } else {
                        tracing::warn!("the key-event log has not been read recently; withholding heartbeats");
                    }
                }
                received = live.recv() => match received {
                    Ok(event) => forward(&mut position, interest, event, sender).await?,
                    // Fell behind the broadcast buffer: catch up from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        position = self.replay(position, interest, sender).await?;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }

    /// Sends what is waiting in `live` (from the log when the stream fell
    /// behind); returns the new position.
    async fn drain(
        &self,
        mut position: i64,
        interest: &Interest,
        live: &mut Live,
        sender: &mpsc::Sender<Result<FeedMessage>>,
    ) -> Result<i64> {
        loop {
            match live.try_recv() {
                Ok(event) => forward(&mut position, interest, event, sender).await?,
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    position = self.replay(position, interest, sender).await?;
                }
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => {
                    return Ok(position);
                }
            }
        }
    }

    /// Sends every logged event after `position` that `interest` names;
    /// returns the new position (the last event read, sent or not).
    async fn replay(
        &self,
        mut position: i64,
        interest: &Interest,
        sender: &mpsc::Sender<Result<FeedMessage>>,
    ) -> Result<i64> {
        loop {
            let events = self.read_log(position).await?;
            if events.is_empty() {
                return Ok(position);
            }
            for event in events {
                position = event.seq;
                if interest.wants(&event) {
                    sender.send(Ok(FeedMessage::Event(event))).await.map_err(|_| Error::StreamClosed)?;
                }
            }
        }
    }
}

/// Sends a live `event` on a stream at `position` when the stream has not
/// had it and wants it; either way the stream moves past it.
async fn forward(
    position: &mut i64,
    interest: &Interest,
    event: Arc<key_events::Model>,
    sender: &mpsc::Sender<Result<FeedMessage>>,
) -> Result<()> {
    if event.seq <= *position {
        return Ok(());
    }
    *position = event.seq;
    if interest.wants(&event) {
        sender.send(Ok(FeedMessage::Event(Arc::unwrap_or_clone(event)))).await.map_err(|_| Error::StreamClosed)?;
    }
    Ok(())
}
