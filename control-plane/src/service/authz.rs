//! The one authorization decision: may this caller do this action on this
//! target? Every admin RPC and every console action asks
//! [`RequestContext::authorize`]; `docs/authorization.md` is the table of
//! its answers, checked by the e2e test `authorization_matrix`.
//!
//! Two rules beyond "holds the action's scope, in the org it acts in":
//! - **Nothing yields more than the caller holds.** An action that yields a
//!   token or leaves a key holding powers ([`Action::grants`]: create,
//!   update, rotate, reveal a key; change an identity's limits) asks again with [`Target::Key`], naming the
//!   key's `keyplane:` scopes as they end up; the caller must hold each.
//!   Keys of the platform org act in every org, so a platform credential is
//!   held to the same rule there.
//! - The sidecar protocol needs a platform credential with `keyplane:sidecar`.

use super::auth::{Actor, RequestContext};
pub use super::scopes::{PLATFORM_ORG, Scope};
use crate::error::{Error, Result};
use crate::store::OrgScope;

/// What a webhook-portal session may do: its org's subscriptions and deliveries.
const PORTAL_SCOPES: [Scope; 4] =
    [Scope::WebhooksRead, Scope::WebhooksWrite, Scope::DeliveriesRead, Scope::DeliveriesWrite];

/// Everything a caller can ask for, named by what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    ReadKeys,
    /// Yields a token.
    CreateKey,
    /// May widen a key (scopes, expiry, limits, allow-list, identity).
    UpdateKey,
    /// Yields a token.
    RotateKey,
    /// Yields a token.
    RevealKey,
    RevokeKey,
    DeleteKey,
    ReadIdentities,
    /// Changing an identity's shared limits may widen its keys.
    WriteIdentities,
    /// Roles, and what the org's keys and identities hold.
    ReadRoles,
    /// Change roles, the roles keys and identities hold, and identities'
    /// own permissions (never `keyplane:` scopes: they widen no admin power).
    WriteRoles,
    ReadSubscriptions,
    WriteSubscriptions,
    /// Lets a pending subscription receive events (an operator's decision).
    ApproveSubscription,
    CreatePortalLink,
    PublishEvent,
    ReadDeliveries,
    /// Retry, recover, send a test event.
    RetryDeliveries,
    ReadAudit,
    ReadConnections,
    WriteConnections,
    RevealConnectionToken,
    ReadUsage,
    /// The sidecar protocol: verify any org's tokens, follow the key-event
    /// log, report usage, lease budgets.
    RunSidecar,
    /// Read an org's record (its own keys may).
    ReadOrg,
    /// Change an org's display name or its settings (the event catalog policy).
    ChangeOrg,
    /// Create, list and delete orgs: asked in the platform org, so only
    /// platform credentials may.
    ManageOrgs,
    /// List the people who signed in with the OpenID provider, and their
    /// rights (asked in the platform org).
    ReadUsers,
    /// Disable and enable people (asked in the platform org).
    ManageUsers,
}

impl Action {
    /// The scope the action needs.
    pub fn scope(self) -> Scope {
        match self {
            Action::ReadKeys | Action::ReadIdentities | Action::ReadRoles | Action::ReadOrg => Scope::KeysRead,
            Action::CreateKey
            | Action::UpdateKey
            | Action::RotateKey
            | Action::RevokeKey
            | Action::DeleteKey
            | Action::WriteIdentities
            | Action::WriteRoles => Scope::KeysWrite,
            Action::RevealKey => Scope::KeysReveal,
            Action::ReadSubscriptions => Scope::WebhooksRead,
            Action::WriteSubscriptions | Action::CreatePortalLink => Scope::WebhooksWrite,
            Action::ApproveSubscription
            | Action::ChangeOrg
            | Action::ManageOrgs
            | Action::ReadUsers
            | Action::ManageUsers => Scope::Admin,
            Action::PublishEvent => Scope::EventsPublish,
            Action::ReadDeliveries => Scope::DeliveriesRead,
            Action::RetryDeliveries => Scope::DeliveriesWrite,
            Action::ReadAudit => Scope::AuditRead,
            Action::ReadConnections => Scope::ConnectionsRead,
            Action::WriteConnections => Scope::ConnectionsWrite,
            Action::RevealConnectionToken => Scope::ConnectionsReveal,
            Action::ReadUsage => Scope::UsageRead,
            Action::RunSidecar => Scope::Sidecar,
        }
    }

    /// Whether the action yields a token or can widen a key, so that the
    /// caller must hold every `keyplane:` scope of the key it ends with.
    pub fn grants(self) -> bool {
        matches!(
            self,
            Action::CreateKey | Action::UpdateKey | Action::RotateKey | Action::RevealKey | Action::WriteIdentities
        )
    }
}

/// What an action is done to.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// Something in the org the request names (empty: the caller's own).
    Org(&'a str),
    /// A key of `org` that the action yields a token of, or leaves holding
    /// `scopes`.
    Key { org: &'a str, scopes: &'a [String] },
    /// Every org (the sidecar protocol).
    AllOrgs,
}

impl RequestContext {
    /// The authorization decision: may the caller do `action` on `target`?
    /// Returns the org the request acts in (empty for [`Target::AllOrgs`]).
    pub fn authorize(&self, action: Action, target: Target<'_>) -> Result<String> {
        if action == Action::RunSidecar {
            // People sign in to the console; none runs a sidecar.
            let person = matches!(self.actor, Actor::User { .. });
            return if self.is_platform() && !person && self.holds_in(PLATFORM_ORG, Scope::Sidecar.as_str()) {
                Ok(String::new())
            } else {
                Err(Error::PermissionDenied(format!(
                    "needs a platform key (org {PLATFORM_ORG}) with scope {}",
                    Scope::Sidecar.as_str()
                )))
            };
        }
        let scope = action.scope();
        if !self.has_scope(scope) {
            return Err(Error::PermissionDenied(format!("missing scope {}", scope.as_str())));
        }
        let requested_org = match target {
            Target::Org(org) | Target::Key { org, .. } => org,
            Target::AllOrgs => return Err(Error::PermissionDenied("this action acts in one org".into())),
        };
        let org = self.resolve_org(requested_org)?;
        // A person's rights differ by org; a key's are the same in each.
        if !self.holds_in(&org, scope.as_str()) {
            return Err(Error::PermissionDenied(format!("missing scope {} in org {org}", scope.as_str())));
        }
        if let Target::Key { scopes, .. } = target
            && let Some(scope) = scopes.iter().find(|s| s.starts_with("keyplane:") && !self.holds_in(&org, s))
        {
            return Err(Error::PermissionDenied(format!(
                "the key would hold {scope}, which the caller does not hold: a credential cannot yield or widen \
                 a key beyond its own powers"
            )));
        }
        Ok(org)
    }

    /// Which orgs' tokens the caller may verify: all for root and platform
    /// keys with `keyplane:sidecar`, else its own org with `keyplane:keys:read`.
    pub fn verification_scope(&self) -> Result<OrgScope<'_>> {
        match &self.actor {
            Actor::Root | Actor::Operator => Ok(OrgScope::AllOrgs),
            Actor::ApiKey { .. } if self.is_platform() && self.has_scope(Scope::Sidecar) => Ok(OrgScope::AllOrgs),
            Actor::ApiKey { org_id, .. } if self.has_scope(Scope::KeysRead) => Ok(OrgScope::Org(org_id)),
            Actor::ApiKey { .. } | Actor::Portal { .. } | Actor::User { .. } => Err(Error::PermissionDenied(format!(
                "missing scope {} or {}",
                Scope::KeysRead.as_str(),
                Scope::Sidecar.as_str()
            ))),
        }
    }

    /// Whether the caller holds `scope` (root and `keyplane:admin` hold
    /// all; a person, in the org their session acts in).
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.holds(scope.as_str())
    }

    /// Whether the caller acts across orgs (root token or a platform key).
    pub fn is_platform(&self) -> bool {
        match &self.actor {
            Actor::Root | Actor::Operator => true,
            Actor::Portal { .. } => false,
            Actor::ApiKey { org_id, .. } => org_id == PLATFORM_ORG,
            Actor::User { rights, .. } => rights.every_org(),
        }
    }

    /// Whether the caller holds the scope string `scope` (a person: in the
    /// org their session acts in).
    fn holds(&self, scope: &str) -> bool {
        match &self.actor {
            Actor::User { org, rights, .. } => rights.holds(org, scope),
            _ => self.holds_in("", scope),
        }
    }

    /// Whether the caller holds the scope string `scope` in `org`.
    fn holds_in(&self, org: &str, scope: &str) -> bool {
        let among = |scopes: &[String]| scopes.iter().any(|s| s == scope || s == Scope::Admin.as_str());
        match &self.actor {
            Actor::Root | Actor::Operator => true,
            Actor::Portal { .. } => PORTAL_SCOPES.iter().any(|s| s.as_str() == scope),
            Actor::ApiKey { scopes, .. } => among(scopes),
            Actor::User { rights, .. } => rights.holds(org, scope),
        }
    }

    /// The org a request naming `requested_org` acts in. Platform callers
    /// must name the org; other keys act in their own org only.
    fn resolve_org(&self, requested_org: &str) -> Result<String> {
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
            Actor::User { org, rights, .. } => {
                let requested = if requested_org.is_empty() { org.as_str() } else { requested_org };
                if rights.orgs().any(|held| held == requested) {
                    Ok(requested.to_owned())
                } else {
                    Err(Error::PermissionDenied("you have no rights in this org".into()))
                }
            }
            _ => Err(Error::PermissionDenied("this key acts only in its own org".into())),
        }
    }
}

/// Org ids are opaque to Keyplane but must be sane: 1 to 128 of `[A-Za-z0-9_.-]`.
pub fn check_org_id(org: &str) -> Result<()> {
    let ok = (1..=128).contains(&org.len()) && org.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err(Error::invalid("org_id", "must be 1 to 128 letters, digits, '_', '.' or '-'")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::auth::Channel;
    use crate::service::scopes::{Right, Rights};

    fn key(org: &str, scopes: &[&str]) -> RequestContext {
        RequestContext {
            actor: Actor::ApiKey {
                key_id: "key_x".into(),
                org_id: org.into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
            channel: Channel::Api,
            request_id: String::new(),
            peer_address: String::new(),
            user_agent: String::new(),
        }
    }

    fn strings(scopes: &[&str]) -> Vec<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_writer_cannot_yield_a_stronger_key() {
        let writer = key("acme", &["keyplane:keys:read", "keyplane:keys:write", "keyplane:keys:reveal"]);
        let admin = strings(&["keyplane:admin"]);
        for action in [Action::CreateKey, Action::UpdateKey, Action::RotateKey, Action::RevealKey] {
            assert!(action.grants());
            let refused = writer.authorize(action, Target::Key { org: "acme", scopes: &admin });
            assert!(matches!(refused, Err(Error::PermissionDenied(_))), "{action:?}: {refused:?}");
            let own = strings(&["keyplane:keys:read", "orders:read"]);
            assert_eq!(writer.authorize(action, Target::Key { org: "", scopes: &own }).unwrap(), "acme");
        }
        let platform_writer = key(PLATFORM_ORG, &["keyplane:keys:write"]);
        let refused = platform_writer.authorize(Action::RotateKey, Target::Key { org: PLATFORM_ORG, scopes: &admin });
        assert!(matches!(refused, Err(Error::PermissionDenied(_))));
        let org_admin = key("acme", &["keyplane:admin"]);
        assert!(org_admin.authorize(Action::RotateKey, Target::Key { org: "acme", scopes: &admin }).is_ok());
        assert!(org_admin.authorize(Action::RotateKey, Target::Key { org: "other", scopes: &[] }).is_err());
    }

    fn person(org: &str, rights: &[(&str, &str)]) -> RequestContext {
        let rights = rights.iter().map(|(org, scope)| Right { org: (*org).into(), scopes: vec![(*scope).into()] });
        RequestContext {
            actor: Actor::User {
                user_id: "usr_x".into(),
                email: "x@example.com".into(),
                org: org.into(),
                rights: Rights::new(rights),
            },
            ..key("", &[])
        }
    }

    #[test]
    fn a_person_holds_their_rights_org_by_org() {
        let ada = person("acme", &[("acme", "keyplane:admin"), ("globex", "keyplane:keys:read")]);
        assert!(!ada.is_platform());
        assert_eq!(ada.authorize(Action::CreateKey, Target::Org("")).unwrap(), "acme");
        assert_eq!(ada.authorize(Action::ReadKeys, Target::Org("globex")).unwrap(), "globex");
        let refused = ada.authorize(Action::CreateKey, Target::Org("globex"));
        assert!(matches!(refused, Err(Error::PermissionDenied(_))), "{refused:?}");
        assert!(ada.authorize(Action::ReadKeys, Target::Org("initech")).is_err(), "no rights there");
        assert!(ada.authorize(Action::ManageOrgs, Target::Org(PLATFORM_ORG)).is_err());
        // A viewer in every org with admin in one is an admin there only,
        // and never in the platform org.
        let val = person("acme", &[("*", "keyplane:keys:read"), ("acme", "keyplane:admin")]);
        assert!(val.is_platform());
        assert!(val.authorize(Action::CreateKey, Target::Org("acme")).is_ok());
        assert!(val.authorize(Action::CreateKey, Target::Org("globex")).is_err());
        assert!(val.authorize(Action::ReadKeys, Target::Org("globex")).is_ok());
        assert!(val.authorize(Action::ManageOrgs, Target::Org(PLATFORM_ORG)).is_err());
        assert!(val.authorize(Action::RunSidecar, Target::AllOrgs).is_err());
        let grace = person("", &[("*", "keyplane:admin")]);
        assert!(grace.authorize(Action::ManageUsers, Target::Org(PLATFORM_ORG)).is_ok());
        // Nothing yields a key stronger than the person holds in that org.
        let admin = strings(&["keyplane:admin"]);
        let reader = person("acme", &[("acme", "keyplane:keys:write")]);
        assert!(reader.authorize(Action::CreateKey, Target::Key { org: "acme", scopes: &admin }).is_err());
    }

    #[test]
    fn the_sidecar_protocol_needs_a_platform_sidecar_key() {
        assert!(key(PLATFORM_ORG, &["keyplane:sidecar"]).authorize(Action::RunSidecar, Target::AllOrgs).is_ok());
        assert!(key("acme", &["keyplane:sidecar"]).authorize(Action::RunSidecar, Target::AllOrgs).is_err());
        assert!(key(PLATFORM_ORG, &["keyplane:keys:read"]).authorize(Action::RunSidecar, Target::AllOrgs).is_err());
        assert!(key("acme", &["keyplane:admin"]).authorize(Action::ReadKeys, Target::AllOrgs).is_err());
    }
}
