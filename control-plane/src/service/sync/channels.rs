//! How the tailer hands events to Watch streams: one broadcast channel for
//! streams of every org (or of several), and one per org for the streams
//! of a single org (a sidecar with one `--org`, the usual case), so an
//! event wakes only the streams that may want it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::store::key_events;

/// Events queued per stream on the shared channel before it lags (and
/// catches up from the log).
const SHARED_CAPACITY: usize = 4096;
/// The same for one org's channel: a channel's buffer is allocated whole,
/// and there may be one per org.
const ORG_CAPACITY: usize = 256;

/// A stream's end of a channel. Events are shared, not cloned, by every
/// stream they reach.
pub type Live = broadcast::Receiver<Arc<key_events::Model>>;

/// The orgs whose events a stream carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Interest {
    /// Every org's (a sidecar serving any key).
    #[default]
    Every,
    /// Only these orgs' (a sidecar started with `--org`).
    Orgs(HashSet<String>),
}

impl Interest {
    /// Most orgs one stream may name.
    pub const MAX_ORGS: usize = 1000;

    /// The interest of a stream naming `orgs` (none: every org).
    pub fn new(orgs: Vec<String>) -> Result<Self> {
        if orgs.is_empty() {
            return Ok(Self::Every);
        }
        if orgs.len() > Self::MAX_ORGS {
            return Err(Error::invalid("org_ids", format!("at most {} orgs", Self::MAX_ORGS)));
        }
        if orgs.iter().any(|org| crate::service::authz::check_org_id(org).is_err()) {
            return Err(Error::invalid("org_ids", "each must be 1 to 128 letters, digits, '_', '.' or '-'"));
        }
        Ok(Self::Orgs(orgs.into_iter().collect()))
    }

    pub(super) fn wants(&self, event: &key_events::Model) -> bool {
        match self {
            Self::Every => true,
            Self::Orgs(orgs) => orgs.contains(&event.org_id),
        }
    }
}

/// The channels of one feed.
pub struct Channels {
    every: broadcast::Sender<Arc<key_events::Model>>,
    /// Channels of single-org streams; one is dropped at the first event of
    /// its org after its last stream ended.
    orgs: Mutex<HashMap<String, broadcast::Sender<Arc<key_events::Model>>>>,
}

impl Default for Channels {
    fn default() -> Self {
        Self { every: broadcast::channel(SHARED_CAPACITY).0, orgs: Mutex::default() }
    }
}

impl Channels {
    /// The channel a stream of `interest` listens on: its org's when it
    /// names one, else the shared one (the stream then filters).
    pub fn subscribe(&self, interest: &Interest) -> Live {
        match interest {
            Interest::Orgs(orgs) if orgs.len() == 1 => {
                let org = orgs.iter().next().expect("one org").clone();
                let mut channels = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
                channels.entry(org).or_insert_with(|| broadcast::channel(ORG_CAPACITY).0).subscribe()
            }
            _ => self.every.subscribe(),
        }
    }

    /// Sends `events`, in order, to the shared channel and to their orgs'.
    pub fn send(&self, events: Vec<key_events::Model>) {
        let mut channels = self.orgs.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            let event = Arc::new(event);
            if let Some(channel) = channels.get(&event.org_id) {
                if channel.receiver_count() == 0 {
                    channels.remove(&event.org_id);
                } else {
                    let _ = channel.send(event.clone());
                }
            }
            // No receivers is fine: nobody is watching.
            let _ = self.every.send(event);
        }
    }
}
