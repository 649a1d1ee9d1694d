//! Console sessions: signing in with the root token or a Keyplane API key,
//! resuming a session from its cookie (see [`SessionService::resume`] for
//! what ends one),
//! choosing the org a platform credential acts in, portal sessions opened
//! from a one-time link, and signing out. Session ids live only in the
//! browser's cookie; the database keeps their SHA-256.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keyplane_proto::check::KeyState;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admission::AddressLimiter;
use super::auth::{Actor, Authenticator, Channel, RequestContext};
use super::authz::{Action, PLATFORM_ORG, Target, check_org_id};
use super::scopes::Rights;
use super::verify::VerifiedKey;
use crate::crypto::MasterKeys;
use crate::crypto::token::{encode_fixed, random_bytes};
use crate::error::{Error, Result};
use crate::store::api_keys::{self, KeyStatus};
use crate::store::audit::AuditAction;
use crate::store::sessions::{SessionActor, SessionKind};
use crate::store::{self, OrgScope, OrgTx, audit, identities, orgs, portal_links, sessions, users};

mod people;
mod portal;

/// Sign-in attempts per client address per minute.
const SIGN_INS_PER_MINUTE: u32 = 10;
/// Activity is written at most this often per session.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

/// How long sessions last.
#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    /// Ended after this long without a request.
    pub idle: Duration,
    /// Ended this long after sign-in, whatever the activity.
    pub lifetime: Duration,
    pub key_sign_in: KeySignIn,
}

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub id_hash: String,
    pub actor: Actor,
    /// The org it acts in; `None` until a platform credential picks one.
    pub org: Option<String>,
    /// A portal session (webhooks of one org only).
    pub portal: bool,
    /// Origins that may frame a portal session's pages.
    pub frame_ancestors: Vec<String>,
    /// The token every state-changing form carries (derived from the id).
    pub csrf: String,
}

impl Session {
    /// Whether the root token signed in (break-glass).
    pub fn is_root(&self) -> bool {
        matches!(self.actor, Actor::Root)
    }

    /// The request context of a console request by this session.
    pub fn context(&self, client: &Client) -> RequestContext {
        RequestContext {
            actor: self.actor.clone(),
            channel: Channel::Console,
            request_id: client.request_id.clone(),
            peer_address: client.address.clone(),
            user_agent: client.user_agent.clone(),
        }
    }

    /// Whether the caller acts across orgs.
    pub fn is_platform(&self) -> bool {
        self.context(&Client::default()).is_platform()
    }

    /// Whether the caller picks the org it acts in: platform credentials,
    /// and people (who may hold rights in several).
    pub fn chooses_org(&self) -> bool {
        self.is_platform() || matches!(self.actor, Actor::User { .. })
    }
}

/// Where a console request comes from.
#[derive(Clone, Debug, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
    /// Socket address, for the audit log.
    pub address: String,
    pub user_agent: String,
    pub request_id: String,
}

/// A secret the console shows once, and where to go after.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShownOnce {
    pub title: String,
    /// What the secret is ("API key token").
    pub what: String,
    pub value: String,
    pub warning: String,
    pub next_href: String,
    pub next_label: String,
}

/// The session service.
pub struct SessionService {
    db: DatabaseConnection,
    /// Seals what waits to be shown once.
    master_keys: Arc<MasterKeys>,
    authenticator: Authenticator,
    settings: SessionSettings,
    sign_ins: AddressLimiter,
}

/// Whether the console's sign-in form takes the root token and API keys
/// (`--console-key-sign-in`); people with the OpenID provider always may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySignIn {
    Allowed,
    Refused,
}

impl SessionService {
    pub fn new(
        db: DatabaseConnection,
        master_keys: Arc<MasterKeys>,
        authenticator: Authenticator,
        settings: SessionSettings,
    ) -> Self {
        let sign_ins = AddressLimiter::per_minute(SIGN_INS_PER_MINUTE);
        Self { db, master_keys, authenticator, settings, sign_ins }
    }

    /// Whether the sign-in form takes keys.
    pub fn key_sign_in(&self) -> KeySignIn {
        self.settings.key_sign_in
    }

    /// Keeps `shown` for the session's next [`Self::take_shown_once`]: the
    /// console answers a form that made a secret with a redirect to the
    /// page showing it, so a reload neither repeats the form nor shows the
    /// secret again.
    pub async fn keep_shown_once(&self, session: &Session, shown: &ShownOnce) -> Result<()> {
        let plaintext = serde_json::to_vec(shown).map_err(|e| Error::Sealing(format!("shown once: {e}")))?;
        let sealed = self.master_keys.seal(&plaintext, &session.id_hash)?;
        sessions::stash_shown_once(&self.db, &session.id_hash, sealed).await
    }

    /// What waits to be shown once, removed as it is read.
    pub async fn take_shown_once(&self, session: &Session) -> Result<Option<ShownOnce>> {
        let Some(sealed) = sessions::take_shown_once(&self.db, &session.id_hash).await? else { return Ok(None) };
        let plaintext = self.master_keys.open(&sealed, &session.id_hash)?;
        let shown = serde_json::from_slice(&plaintext).map_err(|e| Error::Sealing(format!("shown once: {e}")))?;
        Ok(Some(shown))
    }

    /// Signs in with `credential` (the root token, or an API key holding a
    /// `keyplane:` scope). Returns the new session id (for the cookie only)
    /// and the session. Throttled per client address; any refusal says
    /// "invalid credential", nothing more.
    pub async fn sign_in(&self, credential: &str, client: &Client) -> Result<(String, Session)> {
        if let Some(ip) = client.ip
            && !self.sign_ins.attempt(ip)
        {
            return Err(Error::LimitReached("too many sign-in attempts from this address; wait a minute".into()));
        }
        if self.settings.key_sign_in == KeySignIn::Refused {
            return Err(Error::Unauthenticated("signing in with a key is turned off here; use single sign-on"));
        }
        let invalid = Error::Unauthenticated("invalid credential");
        let actor = match self.authenticator.authenticate(Some(credential.trim()), client.ip).await {
            Ok(actor) => actor,
            Err(Error::Unauthenticated(_)) => return Err(invalid),
            Err(other) => return Err(other),
        };
        let (actor_type, key_id, org) = match &actor {
            // The session names the root token it was opened with: changing
            // the token ends it.
            Actor::Root => (SessionActor::Root, self.authenticator.root_fingerprint(), String::new()),
            Actor::ApiKey { key_id, org_id, scopes } if scopes.iter().any(|s| s.starts_with("keyplane:")) => {
                let org = if org_id == PLATFORM_ORG { String::new() } else { org_id.clone() };
                (SessionActor::ApiKey, Some(key_id.clone()), org)
            }
            _ => return Err(invalid),
        };
        let (id, row) = self.new_session(SessionKind::Console, actor_type, key_id, org, String::new());
        sessions::insert(&self.db, row.clone()).await?;
        let home = match &actor {
            Actor::ApiKey { org_id, .. } => org_id.clone(),
            _ => PLATFORM_ORG.to_owned(),
        };
        let session = self.session(&id, &row, actor);
        self.audit(&session, client, &home, AuditAction::ConsoleSignedIn).await?;
        Ok((id, session))
    }

    /// The live session of `session_id` for a request from `client`, with
    /// its key's current scopes; `None` (and the session ended) when it is
    /// over: idle or too old; its key revoked, expired, stripped of its
    /// `keyplane:` scopes or used from outside its allow-lists; the root
    /// token changed; the key that created a portal link no longer able to.
    pub async fn resume(&self, session_id: &str, client: &Client) -> Result<Option<Session>> {
        let id_hash = hash(session_id);
        let Some(row) = sessions::find(&self.db, &id_hash).await? else {
            return Ok(None);
        };
        let now = store::now();
        let idle = chrono::Duration::from_std(self.settings.idle).unwrap_or(chrono::Duration::MAX);
        let actor = match row.actor_type {
            _ if row.expires_at <= now || now - row.last_seen_at > idle => None,
            SessionActor::Root => {
                (row.key_id.is_some() && row.key_id == self.authenticator.root_fingerprint()).then_some(Actor::Root)
            }
            SessionActor::Portal => self.live_portal(&row).await?,
            SessionActor::ApiKey => self.live_key(row.key_id.as_deref(), client).await?,
            SessionActor::User => self.live_user(row.key_id.as_deref(), &row.org_id).await?,
        };
        let Some(actor) = actor else {
            sessions::delete(&self.db, &id_hash).await?;
            return Ok(None);
        };
        if now - row.last_seen_at > TOUCH_EVERY {
            sessions::touch(&self.db, &id_hash, now).await?;
        }
        Ok(Some(self.session(session_id, &row, actor)))
    }

    /// The actor of a key session while its key may still sign in from `client`.
    async fn live_key(&self, key_id: Option<&str>, client: &Client) -> Result<Option<Actor>> {
        let Some(key) = self.usable_key(key_id).await? else { return Ok(None) };
        let identity = match &key.identity_id {
            Some(identity) => identities::find(&self.db, &key.org_id, identity).await?,
            None => None,
        };
        // The same networks rule as a verification: the key's and its identity's.
        let verified = VerifiedKey::new(key, identity);
        if !verified.allows_client(client.ip) {
            return Ok(None);
        }
        let key = verified.key;
        Ok(Some(Actor::ApiKey { scopes: key.scope_list(), key_id: key.id, org_id: key.org_id }))
    }

    /// The key `key_id` while it is active, unexpired and holds a `keyplane:` scope.
    async fn usable_key(&self, key_id: Option<&str>) -> Result<Option<api_keys::Model>> {
        let Some(key_id) = key_id else { return Ok(None) };
        let key = api_keys::find_in(&self.db, OrgScope::AllOrgs, key_id).await?;
        Ok(key.filter(|key| {
            key.status == KeyStatus::Active
                && !key.is_expired(store::now())
                && key.scope_list().iter().any(|s| s.starts_with("keyplane:"))
        }))
    }

    /// Makes a platform credential's or a person's session act in `org`.
    pub async fn choose_org(&self, session: &Session, org: &str) -> Result<()> {
        if !session.chooses_org() {
            return Err(Error::PermissionDenied("only platform credentials and people choose an org".into()));
        }
        check_org_id(org)?;
        if let Actor::User { rights, .. } = &session.actor
            && !rights.every_org()
            && !rights.orgs().any(|held| held == org)
        {
            return Err(Error::PermissionDenied(format!("you hold no rights in org {org}")));
        }
        if orgs::find(&self.db, org).await?.is_none() {
            return Err(Error::NotFound("org"));
        }
        sessions::set_org(&self.db, &session.id_hash, org).await
    }

    /// Ends the session.
    pub async fn sign_out(&self, session: &Session, client: &Client) -> Result<()> {
        sessions::delete(&self.db, &session.id_hash).await?;
        let home = match &session.actor {
            Actor::ApiKey { org_id, .. } | Actor::Portal { org_id, .. } => org_id.clone(),
            _ => PLATFORM_ORG.to_owned(),
        };
        self.audit(session, client, &home, AuditAction::ConsoleSignedOut).await
    }

    /// Deletes sessions past their end, and forgets sign-in attempts of
    /// addresses that have been quiet for a while.
    pub async fn purge_expired(&self) -> Result<u64> {
        self.sign_ins.prune();
        let now = store::now();
        let idle = chrono::Duration::from_std(self.settings.idle).unwrap_or(chrono::Duration::MAX);
        sessions::purge_expired(&self.db, now, now - idle, 1000).await
    }

    fn new_session(
        &self,
        kind: SessionKind,
        actor_type: SessionActor,
        key_id: Option<String>,
        org_id: String,
        frame_ancestors: String,
    ) -> (String, sessions::Model) {
        let id = encode_fixed(&random_bytes::<32>(), 43);
        let now = store::now();
        let lifetime = chrono::Duration::from_std(self.settings.lifetime).unwrap_or(chrono::Duration::MAX);
        let row = sessions::Model {
            id_hash: hash(&id),
            kind,
            actor_type,
            key_id,
            org_id,
            frame_ancestors,
            created_at: now,
            last_seen_at: now,
            expires_at: now + lifetime,
            shown_once: None,
        };
        (id, row)
    }

    fn session(&self, id: &str, row: &sessions::Model, actor: Actor) -> Session {
        Session {
            id_hash: row.id_hash.clone(),
            actor,
            org: Some(row.org_id.clone()).filter(|org| !org.is_empty()),
            portal: row.kind == SessionKind::Portal,
            frame_ancestors: row.frame_ancestors.split_whitespace().map(str::to_owned).collect(),
            csrf: crate::crypto::hex(&crate::crypto::sha256(format!("csrf:{id}").as_bytes()))[..32].to_owned(),
        }
    }

    async fn audit(&self, session: &Session, client: &Client, org: &str, action: AuditAction) -> Result<()> {
        let ctx = session.context(client);
        let tx = OrgTx::begin(&self.db, org).await?;
        let (_, actor_id) = ctx.actor_label();
        audit::append(&tx, ctx.audit(action, &actor_id, json!({}))).await?;
        tx.commit().await
    }
}

fn hash(session_id: &str) -> String {
    crate::crypto::hex(&crate::crypto::sha256(session_id.as_bytes()))
}
