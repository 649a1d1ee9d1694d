//! What a nemesis run did and saw, on the harness's one clock (time since
//! the run started), for the checkers to read afterwards.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A moment of the run: time since it started.
pub type At = Duration;

/// The run's clock.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self(Instant::now())
    }

    /// Time since the start.
    pub fn now(&self) -> At {
        self.0.elapsed()
    }

    /// `instant` on this clock.
    pub fn since(&self, instant: Instant) -> At {
        instant.saturating_duration_since(self.0)
    }
}

/// How a check reached a sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// HTTP forward-auth `/check`.
    ForwardAuth,
    /// Envoy ext_authz over gRPC.
    ExtAuthz,
}

/// A sidecar's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    Unauthorized,
    Forbidden,
    Limited,
    Unavailable,
    /// Anything else, or no answer (connection refused, timeout).
    Other(String),
}

/// One check through a sidecar.
#[derive(Clone, Debug)]
pub struct Check {
    pub sidecar: usize,
    pub via: Via,
    /// Index into [`History::keys`].
    pub key: usize,
    /// The scope the route required.
    pub scope: &'static str,
    pub sent: At,
    pub answered: At,
    pub answer: Answer,
}

/// Who holds credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// Index into [`History::keys`].
    Key(usize),
    /// Index into [`History::identities`].
    Identity(usize),
}

/// A key the workload made.
#[derive(Clone, Debug)]
pub struct Key {
    pub id: String,
    /// Its identity (index into [`History::identities`]), if any.
    pub identity: Option<usize>,
    /// Whether checks with it spend credits (its own or its identity's).
    pub spends: bool,
}

/// What a narrowing took away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Narrowed {
    Revoked,
    Deleted,
    /// Rotated with no grace: the old key is revoked.
    Rotated,
    /// The `write` scope was removed.
    ScopeRemoved,
}

/// A change after which some checks must stop being allowed.
#[derive(Clone, Debug)]
pub struct Narrowing {
    pub key: usize,
    pub what: Narrowed,
    /// When the first request for it was sent.
    pub invoked: At,
    /// When a definitive answer came back: the change committed by then.
    pub effective_by: At,
}

/// Credits given to a holder.
#[derive(Clone, Debug)]
pub struct Grant {
    pub holder: Holder,
    pub amount: u64,
    /// False when the request's outcome is unknown (it may have applied).
    pub acknowledged: bool,
}

/// An acknowledged publication.
#[derive(Clone, Debug)]
pub struct Publication {
    pub event_id: String,
    pub event_type: &'static str,
    pub channels: Vec<&'static str>,
    pub acknowledged: At,
}

/// A fault and when it was in force.
#[derive(Clone, Debug)]
pub struct FaultSpan {
    pub kind: &'static str,
    pub fault: String,
    pub started: At,
    pub healed: At,
}

/// Everything recorded.
#[derive(Default)]
pub struct History {
    pub keys: Vec<Key>,
    /// Identity ids.
    pub identities: Vec<String>,
    pub checks: Vec<Check>,
    pub narrowings: Vec<Narrowing>,
    pub grants: Vec<Grant>,
    pub publications: Vec<Publication>,
    /// Publications never acknowledged (retried until the run ended).
    pub unacknowledged: usize,
    pub faults: Vec<FaultSpan>,
    /// Admin operations by outcome: (acknowledged, failed definitively, unknown).
    pub operations: (usize, usize, usize),
}

/// The history, shared by the run's tasks.
pub type Shared = Arc<Mutex<History>>;

/// Appends under the lock.
pub fn record<T>(history: &Shared, write: impl FnOnce(&mut History) -> T) -> T {
    write(&mut history.lock().expect("history lock"))
}
