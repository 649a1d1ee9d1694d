//! OAuth connections: exchange a code, keep the tokens sealed, hand out a
//! fresh access token (refreshing at most once at a time per connection),
//! delete with revocation at the provider.

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use serde_json::json;

use super::auth::RequestContext;
use super::paging::{Listing, Page, PageRequest};
use super::validate::Violations;
use crate::crypto::MasterKeys;
use crate::error::{Error, Result};
use crate::oauth::{OAuthClient, Providers, TokenSet};
use crate::service::authz::{Action, Target};
use crate::store::audit::AuditAction;
use crate::store::connections::{self, NewConnectionRow, SealedTokens};
use crate::store::{self, OrgTx, audit, orgs};

/// An access token expiring within this is refreshed before it is handed out.
pub const REFRESH_MARGIN: chrono::Duration = chrono::Duration::seconds(60);
/// A connection's refresh lock is forgotten after this long unused.
const REFRESH_LOCK_IDLE: std::time::Duration = std::time::Duration::from_secs(600);
const LISTING: Listing = Listing::named("connections");

/// Input of [`ConnectionService::exchange_code`].
#[derive(Debug, Default)]
pub struct CodeExchange {
    pub org_id: String,
    pub provider: String,
    /// Authorization code.
    pub code: String,
    /// Redirect URI of the authorization request.
    pub redirect_uri: String,
    /// PKCE verifier, if any.
    pub code_verifier: String,
    /// Label of the connected account.
    pub account_label: String,
}

/// An access token handed out.
#[derive(Debug)]
pub struct AccessToken {
    pub token: String,
    /// The connection after any refresh.
    pub connection: connections::Model,
}

/// Outcome of revocation at the provider when a connection is deleted.
#[derive(Debug)]
pub struct Revocation {
    /// Whether the provider confirmed it.
    pub revoked: bool,
    /// Why not, if it failed.
    pub error: String,
}

/// The connection service.
pub struct ConnectionService {
    db: DatabaseConnection,
    master_keys: Arc<MasterKeys>,
    providers: Providers,
    client: OAuthClient,
    /// One lock per connection in use, so concurrent callers share one refresh.
    refresh_locks: moka::sync::Cache<String, Arc<tokio::sync::Mutex<()>>>,
}

impl ConnectionService {
    /// A connection service for `providers`, calling them through `client`.
    pub fn new(
        db: DatabaseConnection,
        master_keys: Arc<MasterKeys>,
        providers: Providers,
        client: OAuthClient,
    ) -> Self {
        let refresh_locks = moka::sync::Cache::builder().time_to_idle(REFRESH_LOCK_IDLE).build();
        Self { db, master_keys, providers, client, refresh_locks }
    }

    /// Exchanges an authorization code and stores the connection; nothing is
    /// stored if the provider refuses or fails.
    pub async fn exchange_code(&self, ctx: &RequestContext, request: CodeExchange) -> Result<connections::Model> {
        let org = ctx.authorize(Action::WriteConnections, Target::Org(&request.org_id))?;
        let mut violations = Violations::default();
        if request.code.is_empty() || request.code.len() > 2048 {
            violations.add("code", "must be 1 to 2048 characters");
        }
        if reqwest::Url::parse(&request.redirect_uri).is_err() {
            violations.add("redirect_uri", "must be the absolute redirect URI of the authorization request");
        }
        let verifier_ok = (43..=128).contains(&request.code_verifier.len())
            && request.code_verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if !request.code_verifier.is_empty() && !verifier_ok {
            violations.add("code_verifier", "must be 43 to 128 characters of [A-Za-z0-9-._~] (RFC 7636)");
        }
        violations.optional_text("account_label", &request.account_label, 200);
        let Some(provider) = self.providers.get(&request.provider) else {
            let known = self.providers.names().join(", ");
            violations.add("provider", format!("unknown provider {:?}; configured: [{known}]", request.provider));
            return Err(violations.into_error());
        };
        violations.finish()?;

        let verifier = (!request.code_verifier.is_empty()).then_some(request.code_verifier.as_str());
        let tokens = self.client.exchange_code(provider, &request.code, &request.redirect_uri, verifier).await?;
        let id = crate::crypto::new_id("con_");
        let row = NewConnectionRow {
            tokens: self.seal_tokens(&id, &tokens, None)?,
            id: id.clone(),
            provider: provider.name.clone(),
            account_label: request.account_label,
            scopes: scopes_of(&tokens),
        };
        let tx = OrgTx::begin(&self.db, &org).await?;
        let connection = connections::insert(&tx, row).await?;
        orgs::register(&tx).await?;
        let metadata = json!({
            "provider": connection.provider,
            "account_label": connection.account_label,
            "scopes": connection.scopes,
            "has_refresh_token": connection.sealed_refresh_token.is_some(),
        });
        audit::append(&tx, ctx.audit(AuditAction::ConnectionCreated, &id, metadata)).await?;
        tx.commit().await?;
        Ok(connection)
    }

    /// One connection of the caller's org.
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<connections::Model> {
        let org = ctx.authorize(Action::ReadConnections, Target::Org(org_id))?;
        connections::find(&self.db, &org, id).await?.ok_or(Error::NotFound("connection"))
    }

    /// A page of connections in creation order.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        provider: &str,
        page: &PageRequest,
    ) -> Result<Page<connections::Model>> {
        let org = ctx.authorize(Action::ReadConnections, Target::Org(org_id))?;
        let cursor = LISTING.start(page)?;
        let provider = (!provider.is_empty()).then_some(provider);
        let rows = connections::list(&self.db, &org, provider, cursor.position.as_deref(), cursor.fetch()).await?;
        Ok(cursor.page(rows, |c| c.id.clone()))
    }

    /// A valid access token, refreshed first when it expires within
    /// [`REFRESH_MARGIN`]; concurrent callers wait for one refresh. Audited.
    pub async fn access_token(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<AccessToken> {
        let org = ctx.authorize(Action::RevealConnectionToken, Target::Org(org_id))?;
        let lock = self.refresh_locks.get_with(format!("{org}/{id}"), Arc::default);
        let _refreshing = lock.lock().await;
        let current = connections::find(&self.db, &org, id).await?.ok_or(Error::NotFound("connection"))?;
        let due = current.expires_at.is_some_and(|at| at - store::now() <= REFRESH_MARGIN);
        let (connection, refreshed) = if due { self.refresh(&org, current).await? } else { (current, false) };
        let token = self.open(&connection.sealed_access_token, &connection.id, "access")?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        audit::append(
            &tx,
            ctx.audit(
                AuditAction::ConnectionAccessTokenIssued,
                id,
                json!({ "provider": connection.provider, "refreshed": refreshed }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(AccessToken { token, connection })
    }

    /// Refreshes `current`'s tokens; a rotated refresh token replaces the
    /// old one in the same update. If another process refreshed first, its
    /// tokens are used. Returns the connection and whether this call refreshed.
    async fn refresh(&self, org: &str, current: connections::Model) -> Result<(connections::Model, bool)> {
        let provider = self.providers.get(&current.provider).ok_or_else(|| {
            Error::FailedPrecondition(format!("provider {} is no longer configured", current.provider))
        })?;
        let Some(sealed_refresh) = &current.sealed_refresh_token else {
            return Err(Error::FailedPrecondition(
                "the access token has expired and the provider issued no refresh token; connect again".into(),
            ));
        };
        let refresh_token = self.open(sealed_refresh, &current.id, "refresh")?;
        let tokens = match self.client.refresh(provider, &refresh_token).await {
            Ok(tokens) => tokens,
            Err(error) => {
                // Another replica may have refreshed first (and the provider
                // rotated the refresh token we sent): then use its tokens.
                let latest = connections::find(&self.db, org, &current.id).await?;
                match latest {
                    Some(latest) if latest.token_version != current.token_version => return Ok((latest, false)),
                    _ => return Err(error),
                }
            }
        };
        let sealed = self.seal_tokens(&current.id, &tokens, current.sealed_refresh_token.clone())?;
        let tx = OrgTx::begin(&self.db, org).await?;
        let swapped = connections::swap_tokens(&tx, &current.id, current.token_version, sealed).await?;
        tx.commit().await?;
        match swapped {
            Some(connection) => Ok((connection, true)),
            None => {
                let theirs = connections::find(&self.db, org, &current.id).await?;
                Ok((theirs.ok_or(Error::NotFound("connection"))?, false))
            }
        }
    }

    /// Deletes a connection, then revokes its grant at the provider (the
    /// refresh token if there is one, else the access token).
    pub async fn delete(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<Revocation> {
        let org = ctx.authorize(Action::WriteConnections, Target::Org(org_id))?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        let connection = connections::delete(&tx, id).await?.ok_or(Error::NotFound("connection"))?;
        audit::append(&tx, ctx.audit(AuditAction::ConnectionDeleted, id, json!({ "provider": connection.provider })))
            .await?;
        tx.commit().await?;

        let Some(provider) = self.providers.get(&connection.provider).filter(|p| p.can_revoke()) else {
            return Ok(Revocation { revoked: false, error: "the provider has no revocation endpoint".into() });
        };
        let (sealed, kind, hint) = match &connection.sealed_refresh_token {
            Some(refresh) => (refresh, "refresh", "refresh_token"),
            None => (&connection.sealed_access_token, "access", "access_token"),
        };
        let revoked = match self.open(sealed, &connection.id, kind) {
            Ok(token) => self.client.revoke(provider, &token, hint).await,
            Err(error) => Err(error),
        };
        match revoked {
            Ok(()) => Ok(Revocation { revoked: true, error: String::new() }),
            Err(error) => {
                tracing::warn!(connection = %id, %error, "revocation at the provider failed; the connection is deleted");
                Ok(Revocation { revoked: false, error: error.to_string() })
            }
        }
    }

    /// Seals a token response for connection `id`; `previous_refresh` is kept
    /// when the provider did not issue a new refresh token.
    fn seal_tokens(&self, id: &str, tokens: &TokenSet, previous_refresh: Option<String>) -> Result<SealedTokens> {
        let keys = &self.master_keys;
        let sealed_refresh_token = match &tokens.refresh_token {
            Some(refresh) => Some(keys.seal(refresh.as_bytes(), &associated(id, "refresh"))?),
            None => previous_refresh,
        };
        let expires_at = tokens
            .expires_in
            .and_then(|seconds| i64::try_from(seconds).ok())
            .map(|seconds| store::now() + chrono::Duration::seconds(seconds));
        Ok(SealedTokens {
            sealed_access_token: keys.seal(tokens.access_token.as_bytes(), &associated(id, "access"))?,
            sealed_refresh_token,
            expires_at,
        })
    }

    fn open(&self, sealed: &str, id: &str, kind: &str) -> Result<String> {
        let plain = self.master_keys.open(sealed, &associated(id, kind))?;
        String::from_utf8(plain).map_err(|_| Error::Sealing("sealed token is not text".into()))
    }
}

/// Associated data of a sealed token: the row id and which token it is, so
/// access and refresh tokens cannot be swapped.
pub fn associated(id: &str, kind: &str) -> String {
    format!("{id}:{kind}")
}

fn scopes_of(tokens: &TokenSet) -> Vec<String> {
    tokens.scope.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect()
}
