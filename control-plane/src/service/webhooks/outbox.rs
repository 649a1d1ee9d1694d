//! The outbox: events and their deliveries are written in the caller's
//! transaction, so a committed event is delivered even if the process dies
//! right after. The transaction is a [`ChangeTx`], whose commit wakes the
//! dispatcher to send at once.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::channels::listens;
use super::event_types::matches;
use super::system_events::SystemEvent;
use crate::error::Result;
use crate::store::events::NewEvent;
use crate::store::{ChangeTx, OrgTx, deliveries, events, webhooks};

/// A delivery leased to this process's dispatcher and not started, with
/// its event when the publication that wrote it handed that over: events
/// never change, so the dispatcher need not read it again. (Its
/// subscription it does read again: that may have been paused, rotated
/// or marked failing since.)
#[derive(Clone, Debug, PartialEq)]
pub struct Leased {
    pub delivery: deliveries::Model,
    pub event: Option<Arc<events::Model>>,
}

impl From<deliveries::Model> for Leased {
    fn from(delivery: deliveries::Model) -> Self {
        Self { delivery, event: None }
    }
}

/// Events of one org and their deliveries, stored together by [`Outbox::write`]:
/// a statement per table for the lot, not per event.
pub struct Outbox {
    published_at: DateTime<Utc>,
    leased_until: Option<DateTime<Utc>>,
    events: Vec<Arc<events::Model>>,
    deliveries: Vec<deliveries::Model>,
}

impl Outbox {
    /// An empty outbox for events published at `published_at`, whose
    /// deliveries are due at once or, when `leased_until` is set, leased to
    /// this process's dispatcher until then.
    pub fn new(published_at: DateTime<Utc>, leased_until: Option<DateTime<Utc>>) -> Self {
        Self { published_at, leased_until, events: Vec::new(), deliveries: Vec::new() }
    }

    /// Adds an event of the transaction's org with a delivery to each of
    /// `subscription_ids`; returns it.
    pub fn add(&mut self, tx: &OrgTx, event: NewEvent, subscription_ids: &[String]) -> &events::Model {
        let event = events::new(tx, event, self.published_at);
        self.deliveries.extend(deliveries::new_for_event(&event, subscription_ids, self.leased_until));
        self.events.push(Arc::new(event));
        &self.events[self.events.len() - 1]
    }

    /// Stores what was added; returns the deliveries, each with its event.
    pub async fn write(self, tx: &ChangeTx) -> Result<Vec<Leased>> {
        let Self { events, deliveries, .. } = self;
        events::insert_all(tx, events.iter().map(|event| events::Model::clone(event)).collect()).await?;
        deliveries::insert_all(tx, &deliveries).await?;
        let by_id: HashMap<&str, &Arc<events::Model>> = events.iter().map(|event| (event.id.as_str(), event)).collect();
        Ok(deliveries
            .into_iter()
            .map(|delivery| {
                let event = by_id.get(delivery.event_id.as_str()).map(|event| Arc::clone(event));
                Leased { delivery, event }
            })
            .collect())
    }
}

/// The ids of `subscriptions` with a pattern that matches `event_type`
/// and listening to one of `channels` (or to every channel).
pub fn matching(subscriptions: &[webhooks::Model], event_type: &str, channels: &[String]) -> Vec<String> {
    subscriptions
        .iter()
        .filter(|s| s.event_type_list().iter().any(|pattern| matches(pattern, event_type)))
        .filter(|s| listens(&s.channel_list(), channels))
        .map(|s| s.id.clone())
        .collect()
}

/// Publishes one of Keyplane's own events to the org's matching subscriptions.
pub async fn publish_system_event(tx: &ChangeTx, event: SystemEvent) -> Result<()> {
    let subscriptions = webhooks::active(tx.conn(), tx.org()).await?;
    let event_type = event.name();
    publish_to(tx, event_type, event.payload().to_string(), &matching(&subscriptions, event_type, &[])).await.map(drop)
}

/// Stores an event of the transaction's org, due at once to each of
/// `subscription_ids`, whatever their patterns (a test event, say).
pub async fn publish_to(
    tx: &ChangeTx,
    event_type: &str,
    payload: String,
    subscription_ids: &[String],
) -> Result<(events::Model, Vec<deliveries::Model>)> {
    let mut outbox = Outbox::new(crate::store::now(), None);
    let event = NewEvent { event_type: event_type.to_owned(), payload, ..NewEvent::default() };
    let event = outbox.add(tx, event, subscription_ids).clone();
    let written = outbox.write(tx).await?;
    Ok((event, written.into_iter().map(|leased| leased.delivery).collect()))
}
