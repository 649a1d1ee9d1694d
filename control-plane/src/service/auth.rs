//! Who is calling and what they may do.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use subtle::ConstantTimeEq;

use super::admission::Admission;
use super::verify::{Purpose, Verification, Verifier};
use crate::error::{Error, Result};
use crate::store::OrgScope;
use crate::store::audit::NewAuditEvent;

/// The reserved org whose keys are platform credentials acting across orgs.
pub const PLATFORM_ORG: &str = "keyplane";
/// What a webhook-portal session may do: its org's subscriptions and deliveries.
const PORTAL_SCOPES: [Scope; 4] =
    [Scope::WebhooksRead, Scope::WebhooksWrite, Scope::DeliveriesRead, Scope::DeliveriesWrite];

/// A permission a Keyplane API key can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Read keys, verify tokens.
    KeysRead,
    /// Create, change, rotate, revoke, delete keys.
    KeysWrite,
    /// Reveal recoverable keys.
    KeysReveal,
    /// Read webhook subscriptions.
    WebhooksRead,
    /// Change webhook subscriptions.
    WebhooksWrite,
    /// Publish events.
    EventsPublish,
    /// Read deliveries.
    DeliveriesRead,
    /// Retry deliveries.
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
    /// Run a sidecar (verify any org's tokens, follow the key-event log).
    Sidecar,
    /// Everything.
    Admin,
}

impl Scope {
    const ALL: [Scope; 15] = [
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

/// The authenticated caller.
#[derive(Clone, Debug)]
pub enum Actor {
    /// The root token: every scope, in any org named by the request.
    Root,
    /// An operator's command run against the database (`keyplane
    /// create-admin-key`): every scope, like root, audited as `operator`.
    Operator,
    /// A webhook-portal session opened from a portal link: the platform's
    /// customer, managing its org's webhooks and nothing else.
    Portal {
        org_id: String,
        /// The portal link that opened the session (`ptl_…`).
        link_id: String,
    },
    /// A Keyplane API key.
    ApiKey {
        key_id: String,
        /// `keyplane` for platform keys.
        org_id: String,
        scopes: Vec<String>,
    },
}

/// Which front end a request came through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Channel {
    #[default]
    Api,
    /// The web console (or the webhook portal); audit rows say so.
    Console,
}

/// One request: the caller and where it came from, for authorization and audit.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub actor: Actor,
    pub channel: Channel,
    /// `x-request-id`.
    pub request_id: String,
    /// Peer socket address.
    pub peer_address: String,
    /// `user-agent`.
    pub user_agent: String,
}

impl RequestContext {
    /// An operator's command run against the database, with no request behind it.
    pub fn operator() -> Self {
        Self {
            actor: Actor::Operator,
            channel: Channel::Api,
            request_id: String::new(),
            peer_address: String::new(),
            user_agent: String::new(),
        }
    }

    /// Whether the caller holds `scope` (root and `keyplane:admin` hold all).
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.holds(scope.as_str())
    }

    /// Whether the caller holds the scope string `scope`.
    fn holds(&self, scope: &str) -> bool {
        match &self.actor {
            Actor::Root | Actor::Operator => true,
            Actor::Portal { .. } => PORTAL_SCOPES.iter().any(|s| s.as_str() == scope),
            Actor::ApiKey { scopes, .. } => scopes.iter().any(|s| s == scope || s == Scope::Admin.as_str()),
        }
    }

    /// Whether the caller acts across orgs (root token or a platform key).
    pub fn is_platform(&self) -> bool {
        match &self.actor {
            Actor::Root | Actor::Operator => true,
            Actor::Portal { .. } => false,
            Actor::ApiKey { org_id, .. } => org_id == PLATFORM_ORG,
        }
    }

    /// Checks `scope` and resolves the org the request acts in. Platform
    /// callers must name the org; other keys act in their own org only.
    pub fn authorize(&self, scope: Scope, requested_org: &str) -> Result<String> {
        if !self.has_scope(scope) {
            return Err(Error::PermissionDenied(format!("missing scope {}", scope.as_str())));
        }
        match &self.actor {
            _ if self.is_platform() => {
                if requested_org.is_empty() {
                    Err(Error::invalid("org_id", "required for the root token and platform keys"))
                } else {
                    check_org_id(requested_org)?;
                    Ok(requested_org.to_owned())
                }
            }
            Actor::ApiKey { org_id, .. } | Actor::Portal { org_id, .. }
                if requested_org.is_empty() || requested_org == org_id =>
            {
                Ok(org_id.clone())
            }
            _ => Err(Error::PermissionDenied("this key acts only in its own org".into())),
        }
    }

    /// Which orgs' tokens the caller may verify: all for root and platform
    /// keys with `keyplane:sidecar`, else its own org with `keyplane:keys:read`.
    pub fn verification_scope(&self) -> Result<OrgScope<'_>> {
        match &self.actor {
            Actor::Root | Actor::Operator => Ok(OrgScope::AllOrgs),
            Actor::ApiKey { .. } if self.is_platform() && self.has_scope(Scope::Sidecar) => Ok(OrgScope::AllOrgs),
            Actor::ApiKey { org_id, .. } if self.has_scope(Scope::KeysRead) => Ok(OrgScope::Org(org_id)),
            Actor::ApiKey { .. } | Actor::Portal { .. } => Err(Error::PermissionDenied(format!(
                "missing scope {} or {}",
                Scope::KeysRead.as_str(),
                Scope::Sidecar.as_str()
            ))),
        }
    }

    /// Refuses to grant `keyplane:` scopes the caller does not hold itself.
    pub fn check_grantable(&self, field: &str, scopes: &[String]) -> Result<()> {
        match scopes.iter().find(|s| s.starts_with("keyplane:") && !self.holds(s)) {
            Some(scope) => {
                Err(Error::PermissionDenied(format!("{field}: cannot grant {scope}, which the caller does not hold")))
            }
            None => Ok(()),
        }
    }

    /// Actor type and id as recorded in the audit log.
    pub fn actor_label(&self) -> (&'static str, String) {
        match &self.actor {
            Actor::Root => ("root", "root".to_owned()),
            Actor::Operator => ("operator", "keyplane create-admin-key".to_owned()),
            Actor::ApiKey { key_id, .. } => ("api_key", key_id.clone()),
            Actor::Portal { link_id, .. } => ("portal", link_id.clone()),
        }
    }

    /// An audit row for an action of this request.
    pub fn audit(
        &self,
        action: &'static str,
        target_type: &'static str,
        target_id: &str,
        metadata: Value,
    ) -> NewAuditEvent {
        let (actor_type, actor_id) = self.actor_label();
        let metadata = match (self.channel, metadata) {
            (Channel::Console, Value::Object(mut fields)) => {
                fields.insert("via".into(), Value::from("console"));
                Value::Object(fields)
            }
            (_, metadata) => metadata,
        };
        NewAuditEvent {
            actor_type: actor_type.to_owned(),
            actor_id,
            action,
            target_type,
            target_id: target_id.to_owned(),
            request_id: self.request_id.clone(),
            peer_address: self.peer_address.clone(),
            user_agent: self.user_agent.clone(),
            metadata,
        }
    }
}

/// Org ids are opaque to Keyplane but must be sane: 1 to 128 of `[A-Za-z0-9_.-]`.
pub fn check_org_id(org: &str) -> Result<()> {
    let ok = (1..=128).contains(&org.len()) && org.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err(Error::invalid("org_id", "must be 1 to 128 letters, digits, '_', '.' or '-'")) }
}

/// Turns a bearer token into an [`Actor`].
#[derive(Clone)]
pub struct Authenticator {
    /// SHA-256 of the root token; `None` when there is no root token.
    root_digest: Option<[u8; 32]>,
    verifier: Arc<Verifier>,
    admission: Arc<Admission>,
}

impl Authenticator {
    /// An authenticator for this root token, if there is one.
    pub fn new(root_token: Option<&str>, verifier: Arc<Verifier>, admission: Arc<Admission>) -> Self {
        Self { root_digest: root_token.map(|token| crate::crypto::sha256(token.as_bytes())), verifier, admission }
    }

    /// Authenticates `bearer` (the token after `Bearer `) sent from `peer`.
    /// An address that failed too often is refused without looking at the
    /// token, until its back-off ends.
    pub async fn authenticate(&self, bearer: Option<&str>, peer: Option<IpAddr>) -> Result<Actor> {
        self.admission.check_peer(peer)?;
        let authenticated = self.authenticate_token(bearer, peer).await;
        if let Err(Error::Unauthenticated(_)) = authenticated {
            self.admission.record_failure(peer);
        }
        authenticated
    }

    /// Spends one request of the caller's budget on the admin services.
    pub fn admit(&self, actor: &Actor) -> Result<()> {
        match actor {
            Actor::Root => self.admission.spend("root"),
            Actor::ApiKey { key_id, .. } => self.admission.spend(key_id),
            Actor::Portal { link_id, .. } => self.admission.spend(link_id),
            Actor::Operator => Ok(()),
        }
    }

    async fn authenticate_token(&self, bearer: Option<&str>, peer: Option<IpAddr>) -> Result<Actor> {
        let token = bearer
            .ok_or(Error::Unauthenticated("missing credentials: send metadata `authorization: Bearer <token>`"))?;
        // Compare digests in constant time; the digest also equalises lengths.
        let digest = crate::crypto::sha256(token.as_bytes());
        if self.root_digest.is_some_and(|root| bool::from(digest.ct_eq(&root))) {
            return Ok(Actor::Root);
        }
        match self.verifier.verify(OrgScope::AllOrgs, token, Purpose::Authentication).await? {
            Verification::Valid(verified) if !verified.allows_client(peer) => {
                tracing::warn!(key_id = %verified.key.id, "a key used from outside its allowed networks");
                Err(Error::PermissionDenied("this key may not be used from this address".into()))
            }
            Verification::Valid(verified) => {
                let key = verified.key;
                Ok(Actor::ApiKey { scopes: key.scope_list(), key_id: key.id, org_id: key.org_id })
            }
            Verification::Invalid(failure, _) => {
                // The rpc span carries the peer address and request id.
                tracing::warn!(reason = failure.as_str(), "authentication failed");
                Err(Error::Unauthenticated("invalid, expired or revoked credentials"))
            }
        }
    }
}
