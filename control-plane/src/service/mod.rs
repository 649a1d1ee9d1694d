//! The domain, free of transport types: who may do what, keys and their
//! verification, webhooks, OAuth connections, the audit log and what
//! sidecars consume. Every front end (`grpc/`, the console) calls this layer
//! and nothing below it; the records it returns are the store's rows,
//! re-exported here under the names front ends use.

pub mod admission;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod connections;
pub mod credits;
pub mod effective;
pub mod identities;
pub mod oidc;
pub mod orgs;
pub mod paging;
pub mod reseal;
pub mod retention;
pub mod roles;
pub mod scopes;
pub mod sessions;
pub mod sync;
pub mod usage;
pub mod users;
pub mod validate;
pub mod verify;
pub mod webhooks;

use std::sync::Arc;

use crate::crypto::{MasterKeys, SecretHasher, TokenFormat};

pub use api_keys::KeyService;
pub use audit::AuditService;
pub use auth::{Actor, Authenticator, RequestContext};
pub use authz::{Action, Scope, Target};
pub use connections::ConnectionService;
pub use credits::CreditService;
pub use identities::IdentityService;
pub use orgs::OrgService;
pub use roles::RoleService;
pub use sessions::SessionService;
pub use sync::SidecarSync;
pub use usage::UsageService;
pub use users::UserService;
pub use verify::{Failure, Verification, Verifier};
pub use webhooks::{DeliveryService, Dispatcher, EventService, WebhookService};

/// The records services return, by the names front ends use.
pub mod records {
    pub use crate::crypto::Environment;
    pub use crate::crypto::imported::SourceFormat;
    pub use crate::crypto::signing::legacy::{Encoding, HmacHeader, SignatureScheme, SignedContent};
    pub use crate::service::audit::AuditEntry;
    pub use crate::service::effective::{Effective, RoleRef, Source as PermissionSource};
    pub use crate::service::orgs::OrgView;
    pub use crate::service::roles::{RoleLookup, RoleView};
    pub use crate::store::api_keys::{KeyFilter, KeyStatus, Model as ApiKey};
    pub use crate::store::audit::{AuditFilter, Model as AuditEvent};
    pub use crate::store::connections::Model as Connection;
    pub use crate::store::credits::{Credits, CreditsChange, Refill, RefillPeriod};
    pub use crate::store::deliveries::attempt::Model as DeliveryAttempt;
    pub use crate::store::deliveries::{DeliveryFilter, DeliveryStatus, Model as Delivery};
    pub use crate::store::events::Model as Event;
    pub use crate::store::holders::HolderId;
    pub use crate::store::identities::{IdentityChanges, IdentityFilter, Model as Identity, NewIdentity};
    pub use crate::store::key_events::{KeyEventKind, Model as KeyEvent};
    pub use crate::store::limits::{HasLimits, LimitChanges, Limits, LowCredits, NewLimits, RateLimit};
    pub use crate::store::orgs::Holdings as OrgHoldings;
    pub use crate::store::roles::{Model as Role, NewRole, RoleChanges};
    pub use crate::store::usage::{Counts, Granularity, Outcome as UsageOutcome};
    pub use crate::store::webhooks::{Model as Subscription, SubscriptionStatus};
}

/// Key material: the token format, the argon2id pool and the master keys
/// that seal stored secrets.
pub struct Crypto {
    pub tokens: TokenFormat,
    pub hasher: SecretHasher,
    pub master_keys: Arc<MasterKeys>,
}
