//! People who sign in with the OpenID provider: a user is created at their
//! first sign-in, and their rights are mapped again from the provider's
//! groups at each one. A platform admin lists users and disables them; a
//! disabled user cannot sign in and their sessions end at the next request.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::admission::AddressLimiter;
use super::auth::{Actor, RequestContext};
use super::authz::{Action, Target};
use super::oidc::Oidc;
use super::scopes::{PLATFORM_ORG, Rights};
use super::sessions::{Client, Session, SessionService};
use crate::error::{Error, Result};
use crate::store::audit::AuditAction;
use crate::store::users::{self, pending};
use crate::store::{self, OrgTx, audit};

/// How long a sign-in may take at the provider.
const SIGN_IN_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// Sign-ins begun per client address per minute (each stores a row until
/// it is finished or expires).
const BEGINS_PER_MINUTE: u32 = 30;

/// A user as the users page shows them.
#[derive(Clone, Debug)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub rights: Rights,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub last_sign_in_at: DateTime<Utc>,
}

impl From<users::Model> for UserView {
    fn from(user: users::Model) -> Self {
        UserView {
            rights: Rights::from_stored(&user.rights),
            id: user.id,
            email: user.email,
            name: user.name,
            disabled: user.disabled,
            created_at: user.created_at,
            last_sign_in_at: user.last_sign_in_at,
        }
    }
}

/// A sign-in sent to the provider: where the browser goes, and the state
/// its cookie must bring back.
pub struct SignInStart {
    pub authorize_url: String,
    pub state: String,
}

/// The user service.
pub struct UserService {
    db: DatabaseConnection,
    oidc: Option<Oidc>,
    sessions: Arc<SessionService>,
    begins: AddressLimiter,
}

impl UserService {
    pub fn new(db: DatabaseConnection, oidc: Option<Oidc>, sessions: Arc<SessionService>) -> Self {
        Self { db, oidc, sessions, begins: AddressLimiter::per_minute(BEGINS_PER_MINUTE) }
    }

    /// The sign-in button's label, when a provider is configured.
    pub fn provider_label(&self) -> Option<&str> {
        self.oidc.as_ref().map(|oidc| oidc.settings.label.as_str())
    }

    fn oidc(&self) -> Result<&Oidc> {
        self.oidc.as_ref().ok_or(Error::NotFound("OpenID Connect sign-in (start with --oidc-config)"))
    }

    /// Starts a sign-in at the provider that returns to console path `next`
    /// (throttled per client address).
    pub async fn begin_sign_in(&self, next: &str, client: &Client) -> Result<SignInStart> {
        let oidc = self.oidc()?;
        if let Some(ip) = client.ip
            && !self.begins.attempt(ip)
        {
            return Err(Error::LimitReached("too many sign-ins begun from this address; wait a minute".into()));
        }
        let begun = oidc.begin().await?;
        let row = pending::Model {
            state_hash: digest(&begun.state),
            nonce: begun.nonce,
            pkce_verifier: begun.pkce_verifier,
            next: next.to_owned(),
            expires_at: store::now() + SIGN_IN_TTL,
        };
        pending::insert(&self.db, row).await?;
        Ok(SignInStart { authorize_url: begun.authorize_url, state: begun.state })
    }

    /// Finishes a sign-in from the provider's callback: `state` must be the
    /// one this browser's cookie (`cookie_state`) carries and not used
    /// before; the code is exchanged and the ID token checked. Records the
    /// user with the rights their groups map to, and opens a session.
    /// Returns the session id (for the cookie), the session and the path
    /// to go on to.
    pub async fn finish_sign_in(
        &self,
        code: &str,
        state: &str,
        cookie_state: Option<&str>,
        client: &Client,
    ) -> Result<(String, Session, String)> {
        let oidc = self.oidc()?;
        let bound = cookie_state.is_some_and(|cookie| bool::from(cookie.as_bytes().ct_eq(state.as_bytes())));
        let Some(begun) = pending::take(&self.db, &digest(state), store::now()).await? else {
            tracing::warn!("an OpenID Connect callback with an unknown, used or expired state");
            return Err(Error::Unauthenticated("this sign-in expired or was already used; sign in again"));
        };
        if !bound {
            tracing::warn!("an OpenID Connect callback from a browser that did not begin the sign-in");
            return Err(Error::Unauthenticated("this sign-in was begun in another browser; sign in again"));
        }
        let vouched = oidc.finish(code, &begun.nonce, &begun.pkce_verifier).await?;
        let rights = oidc.settings.rights(&vouched.groups);
        let user = users::record_sign_in(&self.db, &vouched.person, &rights.to_stored(), store::now()).await?;
        if user.disabled {
            return Err(Error::PermissionDenied(format!("{} is disabled in Keyplane", user.email)));
        }
        if rights.is_empty() {
            return Err(Error::PermissionDenied(format!(
                "{} holds no rights in Keyplane: none of their groups is granted any",
                user.email
            )));
        }
        let (id, session) = self.sessions.open_for_user(&user, rights, client).await?;
        Ok((id, session, begun.next))
    }

    /// Every user (a platform admin's view).
    pub async fn list(&self, ctx: &RequestContext) -> Result<Vec<UserView>> {
        ctx.authorize(Action::ReadUsers, Target::Org(PLATFORM_ORG))?;
        Ok(users::list(&self.db).await?.into_iter().map(UserView::from).collect())
    }

    /// Disables (or enables again) user `id` (audited in the platform org).
    pub async fn set_disabled(&self, ctx: &RequestContext, id: &str, disabled: bool) -> Result<()> {
        ctx.authorize(Action::ManageUsers, Target::Org(PLATFORM_ORG))?;
        if disabled && matches!(&ctx.actor, Actor::User { user_id, .. } if user_id == id) {
            return Err(Error::invalid("id", "you cannot disable yourself: ask another platform admin"));
        }
        let tx = OrgTx::begin(&self.db, PLATFORM_ORG).await?;
        if !users::set_disabled(tx.conn(), id, disabled).await? {
            return Err(Error::NotFound("user"));
        }
        let action = if disabled { AuditAction::UserDisabled } else { AuditAction::UserEnabled };
        audit::append(&tx, ctx.audit(action, id, json!({}))).await?;
        tx.commit().await
    }

    /// Deletes sign-ins begun and never finished.
    pub async fn purge_expired(&self) -> Result<u64> {
        self.begins.prune();
        pending::purge_expired(&self.db, store::now()).await
    }
}

fn digest(state: &str) -> String {
    crate::crypto::hex(&crate::crypto::sha256(state.as_bytes()))
}
