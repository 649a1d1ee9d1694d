//! Webhook-portal links: a one-time URL that opens a console session limited
//! to one org's webhooks, for the platform's own customer (optionally inside
//! an iframe of the listed origins).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::json;

use crate::crypto::token::{encode_fixed, random_bytes};
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::store::audit::AuditAction;
use crate::store::{self, OrgTx, audit, portal_links};

/// Validity of a link when none is asked for.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(3600);
/// Longest validity of a link.
pub const MAX_LINK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Most origins that may frame the portal.
const MAX_FRAME_ANCESTORS: usize = 10;

/// A link, shown once.
#[derive(Debug)]
pub struct PortalLink {
    pub id: String,
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Creates portal links.
pub struct PortalLinks {
    db: DatabaseConnection,
    /// Where the console is reached (`https://console.example.com`); `None`
    /// when the console is off.
    console_url: Option<String>,
}

impl PortalLinks {
    pub fn new(db: DatabaseConnection, console_url: Option<String>) -> Self {
        Self { db, console_url }
    }

    /// A one-time link to the portal of `org_id`'s webhooks, valid for `ttl`
    /// (1 hour by default, at most 24), embeddable by `frame_ancestors`.
    pub async fn create(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        ttl: Option<Duration>,
        frame_ancestors: Vec<String>,
    ) -> Result<PortalLink> {
        let org = ctx.authorize(Action::CreatePortalLink, Target::Org(org_id))?;
        let ttl = ttl.unwrap_or(DEFAULT_LINK_TTL);
        if !(Duration::from_secs(60)..=MAX_LINK_TTL).contains(&ttl) {
            return Err(Error::invalid("ttl", "must be between 1 minute and 24 hours"));
        }
        if frame_ancestors.len() > MAX_FRAME_ANCESTORS {
            return Err(Error::invalid("frame_ancestors", format!("at most {MAX_FRAME_ANCESTORS} origins")));
        }
        for (i, origin) in frame_ancestors.iter().enumerate() {
            check_origin(origin).map_err(|why| Error::invalid(format!("frame_ancestors[{i}]"), why))?;
        }
        let Some(console_url) = &self.console_url else {
            return Err(Error::FailedPrecondition(
                "the console is off (--console-listen): no portal to link to".into(),
            ));
        };
        let token = encode_fixed(&random_bytes::<32>(), 43);
        let now = store::now();
        let link = portal_links::Model {
            token_hash: crate::crypto::hex(&crate::crypto::sha256(token.as_bytes())),
            id: crate::crypto::new_id("ptl_"),
            org_id: org.clone(),
            frame_ancestors: frame_ancestors.join(" "),
            created_by: ctx.actor_label().1,
            created_at: now,
            expires_at: now + ttl,
            used_at: None,
        };
        let tx = OrgTx::begin(&self.db, &org).await?;
        portal_links::insert(tx.conn(), link.clone()).await?;
        let details = json!({ "expires_at": link.expires_at, "frame_ancestors": frame_ancestors });
        audit::append(&tx, ctx.audit(AuditAction::PortalLinkCreated, &link.id, details)).await?;
        tx.commit().await?;
        Ok(PortalLink {
            id: link.id,
            url: format!("{}/portal/{token}", console_url.trim_end_matches('/')),
            expires_at: link.expires_at,
        })
    }
}

/// An origin a page may be framed by: `https://host[:port]` (or `http://`
/// for loopback development), nothing after it.
fn check_origin(origin: &str) -> std::result::Result<(), String> {
    let url = url::Url::parse(origin).map_err(|e| format!("is not an origin: {e}"))?;
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !scheme_ok {
        return Err("must be https:// (http:// only for localhost)".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must be an origin: scheme, host and port only".into());
    }
    if let Some(url::Host::Domain(domain)) = url.host()
        && !domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err("must name one host: letters, digits, '-' and '.' (no wildcards)".into());
    }
    if origin.trim_end_matches('/') != url.origin().ascii_serialization() {
        return Err("must be written as scheme://host[:port]".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(check_origin("https://app.example.com").is_ok());
        assert!(check_origin("https://app.example.com:8443").is_ok());
        assert!(check_origin("http://localhost:3000").is_ok());
        assert!(check_origin("http://app.example.com").is_err());
        assert!(check_origin("https://app.example.com/path").is_err());
        assert!(check_origin("https://*.example.com").is_err());
        assert!(check_origin("'none'").is_err());
        assert!(check_origin("https://a.com; script-src *").is_err());
    }
}
