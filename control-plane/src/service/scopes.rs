//! The powers a caller can hold: `keyplane:` scopes, and a person's
//! rights (scopes per org). What each action needs is `authz.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The reserved org whose keys are platform credentials acting across orgs.
pub const PLATFORM_ORG: &str = "keyplane";

/// A permission a Keyplane API key can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Read keys and identities, verify tokens of the own org.
    KeysRead,
    /// Create, change, rotate, revoke, delete keys and identities.
    KeysWrite,
    /// Reveal recoverable keys.
    KeysReveal,
    /// Read webhook subscriptions.
    WebhooksRead,
    /// Change webhook subscriptions, create portal links.
    WebhooksWrite,
    /// Publish events.
    EventsPublish,
    /// Read deliveries.
    DeliveriesRead,
    /// Retry deliveries, send test events.
    DeliveriesWrite,
    /// Read the audit log.
    AuditRead,
    /// Read OAuth connections.
    ConnectionsRead,
    /// Change OAuth connections.
    ConnectionsWrite,
    /// Obtain OAuth access tokens.
    ConnectionsReveal,
    /// Read usage analytics.
    UsageRead,
    /// Run a sidecar (verify any org's tokens, follow the key-event log);
    /// only on a platform key.
    Sidecar,
    /// Everything.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 15] = [
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::KeysReveal,
        Scope::WebhooksRead,
        Scope::WebhooksWrite,
        Scope::EventsPublish,
        Scope::DeliveriesRead,
        Scope::DeliveriesWrite,
        Scope::AuditRead,
        Scope::ConnectionsRead,
        Scope::ConnectionsWrite,
        Scope::ConnectionsReveal,
        Scope::UsageRead,
        Scope::Sidecar,
        Scope::Admin,
    ];

    /// The scope string.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::KeysRead => "keyplane:keys:read",
            Scope::KeysWrite => "keyplane:keys:write",
            Scope::KeysReveal => "keyplane:keys:reveal",
            Scope::WebhooksRead => "keyplane:webhooks:read",
            Scope::WebhooksWrite => "keyplane:webhooks:write",
            Scope::EventsPublish => "keyplane:events:publish",
            Scope::DeliveriesRead => "keyplane:deliveries:read",
            Scope::DeliveriesWrite => "keyplane:deliveries:write",
            Scope::AuditRead => "keyplane:audit:read",
            Scope::ConnectionsRead => "keyplane:connections:read",
            Scope::ConnectionsWrite => "keyplane:connections:write",
            Scope::ConnectionsReveal => "keyplane:connections:reveal",
            Scope::UsageRead => "keyplane:usage:read",
            Scope::Sidecar => "keyplane:sidecar",
            Scope::Admin => "keyplane:admin",
        }
    }

    /// Parses a `keyplane:` scope string.
    pub fn parse(scope: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == scope)
    }
}

/// What a person may do, per org: the rights their last sign-in's claims
/// mapped to (`--oidc-config`'s grants).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rights(Vec<Right>);

/// `keyplane:` scopes in one org, or in every org.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Right {
    /// An org id, or [`EVERY_ORG`].
    pub org: String,
    pub scopes: Vec<String>,
}

/// The org of a right held in every org (the platform's people).
pub const EVERY_ORG: &str = "*";

impl Rights {
    /// The union of `rights`: one right per org, its scopes sorted.
    pub fn new(rights: impl IntoIterator<Item = Right>) -> Self {
        let mut merged: BTreeMap<String, BTreeSet<String>> = Default::default();
        for right in rights {
            merged.entry(right.org).or_default().extend(right.scopes);
        }
        Self(merged.into_iter().map(|(org, scopes)| Right { org, scopes: scopes.into_iter().collect() }).collect())
    }

    /// Rights as stored (JSON); none if the text cannot be read.
    pub fn from_stored(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_default()
    }

    /// Rights as stored.
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "[]".into())
    }

    /// Each right, by org.
    pub fn iter(&self) -> impl Iterator<Item = &Right> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a right holds in every org.
    pub fn every_org(&self) -> bool {
        self.0.iter().any(|right| right.org == EVERY_ORG)
    }

    /// The orgs named by a right of their own.
    pub fn orgs(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|right| right.org.as_str()).filter(|org| *org != EVERY_ORG)
    }

    /// Whether `scope` is held in `org` (by a right of that org or of every
    /// org; in the platform org, only by a right of every org).
    pub fn holds(&self, org: &str, scope: &str) -> bool {
        self.0
            .iter()
            .filter(|right| right.org == EVERY_ORG || (right.org == org && org != PLATFORM_ORG))
            .flat_map(|right| &right.scopes)
            .any(|held| held == scope || held == Scope::Admin.as_str())
    }
}
