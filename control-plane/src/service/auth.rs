//! Who is calling: the authenticated actor and the request context it
//! acts in (what it may do is `authz.rs`).

use std::net::IpAddr;
use std::sync::Arc;

use keyplane_proto::check::KeyState;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::admission::Admission;
use super::scopes::Rights;
use super::verify::{Purpose, Verification, Verifier};
use crate::error::{Error, Result};
use crate::store::OrgScope;
use crate::store::audit::{AuditAction, NewAuditEvent};

/// The audit log's actor type of an API key.
pub const API_KEY_ACTOR: &str = "api_key";
/// The audit log's actor type of a person signed in with the OpenID provider.
pub const USER_ACTOR: &str = "user";

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
    /// A person signed in to the console with the OpenID provider.
    User {
        /// `usr_…`.
        user_id: String,
        email: String,
        /// The org the session acts in (empty until one is chosen).
        org: String,
        rights: Rights,
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

    /// Actor type and id as recorded in the audit log.
    pub fn actor_label(&self) -> (&'static str, String) {
        match &self.actor {
            Actor::Root => ("root", "root".to_owned()),
            Actor::Operator => ("operator", "keyplane create-admin-key".to_owned()),
            Actor::ApiKey { key_id, .. } => (API_KEY_ACTOR, key_id.clone()),
            Actor::Portal { link_id, .. } => ("portal", link_id.clone()),
            Actor::User { user_id, .. } => (USER_ACTOR, user_id.clone()),
        }
    }

    /// An audit row for an action of this request.
    pub fn audit(&self, action: AuditAction, target_id: &str, metadata: Value) -> NewAuditEvent {
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
            target_id: target_id.to_owned(),
            request_id: self.request_id.clone(),
            peer_address: self.peer_address.clone(),
            user_agent: self.user_agent.clone(),
            metadata,
        }
    }
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

    /// A fingerprint of the root token (not the token, nor its digest), kept
    /// with root console sessions so that changing the token ends them.
    pub fn root_fingerprint(&self) -> Option<String> {
        let root = self.root_digest?;
        Some(
            crate::crypto::hex(&crate::crypto::sha256(&[b"console-session:".as_slice(), &root].concat()))[..32]
                .to_owned(),
        )
    }

    /// Spends one request of the caller's budget on the admin services.
    pub fn admit(&self, actor: &Actor) -> Result<()> {
        match actor {
            Actor::Root => self.admission.spend("root"),
            Actor::ApiKey { key_id, .. } => self.admission.spend(key_id),
            Actor::Portal { link_id, .. } => self.admission.spend(link_id),
            Actor::User { user_id, .. } => self.admission.spend(user_id),
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
