//! Domain logic, free of transport types: who may do what, keys, verification
//! and the audit log. gRPC adapters in `grpc/` call into this layer.

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod connections;
pub mod deliveries;
pub mod dispatch;
pub mod events;
pub mod paging;
pub mod reseal;
pub mod sync;
pub mod validate;
pub mod verify;
pub mod webhooks;

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::crypto::{MasterKeys, SecretHasher, TokenFormat};
use crate::metrics::Metrics;

pub use api_keys::KeyService;
pub use audit::AuditService;
pub use auth::{Actor, Authenticator, RequestContext, Scope};
pub use connections::ConnectionService;
pub use deliveries::DeliveryService;
pub use dispatch::Dispatcher;
pub use events::EventService;
pub use verify::{Failure, Verification, Verifier};
pub use webhooks::WebhookService;

/// State shared by every service.
pub struct Core {
    /// The database.
    pub db: DatabaseConnection,
    /// Token prefix and format.
    pub tokens: TokenFormat,
    /// Argon2id on a bounded pool.
    pub hasher: SecretHasher,
    /// Master keys for sealed values.
    pub master_keys: MasterKeys,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Signalled after a transaction that appended key events commits, so
    /// the feed tails the log at once instead of at the next poll.
    pub key_events_committed: Arc<tokio::sync::Notify>,
    /// Signalled after a transaction that created deliveries commits, so
    /// the dispatcher sends them at once instead of at the next poll.
    pub deliveries_due: Arc<tokio::sync::Notify>,
}

impl Core {
    /// Shared state over these parts, with fresh wake-up signals.
    pub fn new(
        db: DatabaseConnection,
        tokens: TokenFormat,
        hasher: SecretHasher,
        master_keys: MasterKeys,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            tokens,
            hasher,
            master_keys,
            metrics,
            key_events_committed: Arc::new(tokio::sync::Notify::new()),
            deliveries_due: Arc::new(tokio::sync::Notify::new()),
        }
    }
}
