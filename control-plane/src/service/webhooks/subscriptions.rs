//! Webhook subscriptions: where an org's events go. Secrets are shown once;
//! every change is audited in its transaction.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use serde_json::{Value, json};

use super::channels::check_channels;
use super::endpoints::{self, DeliveryOptions, OptionsView};
use super::event_types::check_patterns;
use super::policy::WebhookPolicy;
use super::secrets::SecretSet;
use crate::crypto::MasterKeys;
use crate::crypto::signing::WebhookSecret;
use crate::crypto::signing::legacy::SignatureScheme;
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::service::paging::{Listing, Page, PageRequest};
use crate::service::validate::Violations;
use crate::store::audit::AuditAction;
use crate::store::orgs;
use crate::store::webhooks::{self, NewSubscriptionRow, SubscriptionStatus, SubscriptionUpdate};
use crate::store::{self, OrgTx, audit};

/// Secret-rotation grace when none is given.
pub const DEFAULT_SECRET_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Longest secret-rotation grace.
pub const MAX_SECRET_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Highest per-subscription rate limit (deliveries per second).
const MAX_RATE_LIMIT: i32 = 100_000;
const LISTING: Listing = Listing::named("subscriptions");

/// Input of [`WebhookService::create`].
#[derive(Debug, Default)]
pub struct NewSubscription {
    /// May be empty for callers that act in their own org.
    pub org_id: String,
    pub url: String,
    /// Event types and patterns.
    pub event_types: Vec<String>,
    pub description: String,
    /// Deliveries per second at most (0: none).
    pub rate_limit_per_second: u32,
    /// Checked when built (the adapters name its fields).
    pub signature_scheme: SignatureScheme,
    /// A secret brought from another system ([`WebhookSecret::import`]); empty: a new one.
    pub secret: String,
    /// Empty: every channel.
    pub channels: Vec<String>,
    pub delivery_options: DeliveryOptions,
}

/// Fields to change in [`WebhookService::update`]; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct SubscriptionChanges {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub rate_limit_per_second: Option<u32>,
    pub signature_scheme: Option<SignatureScheme>,
    pub channels: Option<Vec<String>>,
    /// Replaces the options whole.
    pub delivery_options: Option<DeliveryOptions>,
}

/// A subscription with a secret shown once.
#[derive(Debug)]
pub struct WithSecret {
    pub subscription: webhooks::Model,
    /// The `whsec_…` secret.
    pub secret: String,
}

/// The subscription service.
pub struct WebhookService {
    db: DatabaseConnection,
    master_keys: Arc<MasterKeys>,
    policy: Arc<WebhookPolicy>,
}

impl WebhookService {
    pub fn new(db: DatabaseConnection, master_keys: Arc<MasterKeys>, policy: Arc<WebhookPolicy>) -> Self {
        Self { db, master_keys, policy }
    }

    /// Creates a subscription and returns its secret once.
    pub async fn create(&self, ctx: &RequestContext, new: NewSubscription) -> Result<WithSecret> {
        let org = ctx.authorize(Action::WriteSubscriptions, Target::Org(&new.org_id))?;
        let mut violations = Violations::default();
        let host = violations.absorb(self.policy.check_url("url", &new.url))?;
        check_patterns(&mut violations, "event_types", &new.event_types);
        violations.optional_text("description", &new.description, MAX_DESCRIPTION_CHARS);
        let rate_limit = violations.absorb(check_rate_limit("rate_limit_per_second", new.rate_limit_per_second))?;
        let imported = match new.secret.as_str() {
            "" => None,
            text => violations.absorb(WebhookSecret::import("secret", text))?,
        };
        check_channels(&mut violations, "channels", &new.channels);
        let options = endpoints::check(&mut violations, &self.policy, "delivery_options", new.delivery_options);
        violations.finish()?;

        let id = crate::crypto::new_id("sub_");
        let secret_source = if imported.is_some() { "imported" } else { "generated" };
        let (secrets, secret) = SecretSet::new(imported);
        let status = if host.as_deref().is_some_and(|h| self.policy.needs_approval(h)) {
            SubscriptionStatus::PendingApproval
        } else {
            SubscriptionStatus::Active
        };
        let row = NewSubscriptionRow {
            sealed_secrets: secrets.seal(&self.master_keys, &id)?,
            url: new.url,
            event_types: new.event_types,
            description: new.description,
            status,
            rate_limit_per_second: rate_limit.unwrap_or_default(),
            signature_scheme: new.signature_scheme,
            channels: new.channels,
            sealed_options: options.seal(&self.master_keys, &id)?,
            id,
            timeout_ms: options.timeout_ms(),
        };
        let tx = OrgTx::begin(&self.db, &org).await?;
        let existing = webhooks::count(tx.conn(), tx.org()).await?;
        if existing >= self.policy.max_subscriptions_per_org {
            return Err(Error::LimitReached(format!(
                "the org has {existing} subscriptions, the most allowed (--webhook-max-subscriptions)"
            )));
        }
        let subscription = webhooks::insert(&tx, row).await?;
        orgs::register(&tx).await?;
        let mut details = audit_details(&subscription);
        details["secret"] = json!(secret_source);
        details["delivery_options"] = options.audit();
        audit::append(&tx, ctx.audit(AuditAction::SubscriptionCreated, &subscription.id, details)).await?;
        tx.commit().await?;
        Ok(WithSecret { subscription, secret })
    }

    /// One subscription of the caller's org.
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<webhooks::Model> {
        let org = ctx.authorize(Action::ReadSubscriptions, Target::Org(org_id))?;
        webhooks::find(&self.db, &org, id).await?.ok_or(Error::NotFound("subscription"))
    }

    /// What `subscription` shows of its delivery options.
    pub fn options(&self, subscription: &webhooks::Model) -> Result<OptionsView> {
        endpoints::view(&self.master_keys, subscription)
    }

    /// A page of subscriptions in creation order.
    pub async fn list(&self, ctx: &RequestContext, org_id: &str, page: &PageRequest) -> Result<Page<webhooks::Model>> {
        let org = ctx.authorize(Action::ReadSubscriptions, Target::Org(org_id))?;
        let cursor = LISTING.start(page)?;
        let rows = webhooks::list(&self.db, &org, cursor.position.as_deref(), cursor.fetch()).await?;
        Ok(cursor.page(rows, |s| s.id.clone()))
    }

    /// Changes the named fields. Enabling an endpoint that waits for
    /// approval (or moving it to a host that needs approval) leaves it waiting.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        changes: SubscriptionChanges,
    ) -> Result<webhooks::Model> {
        let org = ctx.authorize(Action::WriteSubscriptions, Target::Org(org_id))?;
        let mut violations = Violations::default();
        let mut changed = Vec::new();
        let mut new_host = None;
        if let Some(url) = &changes.url {
            new_host = violations.absorb(self.policy.check_url("update.url", url))?;
            changed.push("url");
        }
        if let Some(event_types) = &changes.event_types {
            check_patterns(&mut violations, "update.event_types", event_types);
            changed.push("event_types");
        }
        if let Some(description) = &changes.description {
            violations.optional_text("update.description", description, MAX_DESCRIPTION_CHARS);
            changed.push("description");
        }
        if changes.enabled.is_some() {
            changed.push("enabled");
        }
        if changes.signature_scheme.is_some() {
            changed.push("signature_scheme");
        }
        if let Some(channels) = &changes.channels {
            check_channels(&mut violations, "update.channels", channels);
            changed.push("channels");
        }
        let options = changes.delivery_options.map(|options| {
            changed.push("delivery_options");
            endpoints::check(&mut violations, &self.policy, "update.delivery_options", options)
        });
        let rate_limit = match changes.rate_limit_per_second {
            Some(limit) => {
                changed.push("rate_limit_per_second");
                violations.absorb(check_rate_limit("update.rate_limit_per_second", limit))?
            }
            None => None,
        };
        if changed.is_empty() {
            violations.add(
                "update_mask",
                "name at least one field: url, event_types, description, enabled, rate_limit_per_second, \
                 signature_scheme, channels, delivery_options",
            );
        }
        violations.finish()?;

        let tx = OrgTx::begin(&self.db, &org).await?;
        let current = webhooks::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("subscription"))?;
        let host_needs_approval = new_host.as_deref().is_some_and(|h| self.policy.needs_approval(h));
        let approved = current.status != SubscriptionStatus::PendingApproval && !host_needs_approval;
        let mut update = SubscriptionUpdate {
            url: changes.url,
            event_types: changes.event_types,
            description: changes.description,
            rate_limit_per_second: rate_limit,
            signature_scheme: changes.signature_scheme,
            channels: changes.channels,
            options: match &options {
                Some(options) => Some((options.seal(&self.master_keys, id)?, options.timeout_ms())),
                None => None,
            },
            ..SubscriptionUpdate::default()
        };
        match changes.enabled {
            Some(true) if approved => {
                update.status = Some(SubscriptionStatus::Active);
                update.disabled_reason = Some(None);
                update.failing_since = Some(None);
            }
            Some(false) => {
                update.status = Some(SubscriptionStatus::Disabled);
                update.disabled_reason = Some(Some(format!("disabled by {}", ctx.actor_label().1)));
            }
            _ => {}
        }
        if host_needs_approval {
            update.status = Some(SubscriptionStatus::PendingApproval);
        }
        let subscription = webhooks::update(&tx, current, update).await?;
        let mut details = json!({ "fields": changed });
        if changed.contains(&"signature_scheme") {
            details["signature_scheme"] = json!(subscription.signature_scheme());
        }
        if let Some(options) = &options {
            details["delivery_options"] = options.audit();
        }
        audit::append(&tx, ctx.audit(AuditAction::SubscriptionUpdated, id, details)).await?;
        tx.commit().await?;
        Ok(subscription)
    }

    /// Deletes a subscription; its pending deliveries fail when next claimed.
    pub async fn delete(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<()> {
        let org = ctx.authorize(Action::WriteSubscriptions, Target::Org(org_id))?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        if !webhooks::delete(&tx, id).await? {
            return Err(Error::NotFound("subscription"));
        }
        audit::append(&tx, ctx.audit(AuditAction::SubscriptionDeleted, id, json!({}))).await?;
        tx.commit().await
    }

    /// Issues a new secret; the previous ones keep signing for `grace`
    /// (24h by default; zero drops them now).
    pub async fn rotate_secret(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<WithSecret> {
        let org = ctx.authorize(Action::WriteSubscriptions, Target::Org(org_id))?;
        let grace = grace.unwrap_or(DEFAULT_SECRET_GRACE);
        if grace > MAX_SECRET_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 7 days"));
        }
        let tx = OrgTx::begin(&self.db, &org).await?;
        let current = webhooks::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("subscription"))?;
        let now = store::now();
        let mut secrets = SecretSet::open_live(&self.master_keys, &current, now)?;
        let secret = secrets.rotate(now, grace);
        let update = SubscriptionUpdate {
            sealed_secrets: Some(secrets.seal(&self.master_keys, id)?),
            ..SubscriptionUpdate::default()
        };
        let subscription = webhooks::update(&tx, current, update).await?;
        let details = json!({ "grace_seconds": grace.as_secs(), "signing_secrets": secrets.count() });
        audit::append(&tx, ctx.audit(AuditAction::SecretRotated, id, details)).await?;
        tx.commit().await?;
        Ok(WithSecret { subscription, secret })
    }

    /// Activates a subscription waiting for approval (`keyplane:admin`).
    pub async fn approve(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<webhooks::Model> {
        let org = ctx.authorize(Action::ApproveSubscription, Target::Org(org_id))?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        let current = webhooks::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("subscription"))?;
        if current.status != SubscriptionStatus::PendingApproval {
            return Err(Error::FailedPrecondition(format!(
                "the subscription is {}, not pending_approval",
                current.status.as_str()
            )));
        }
        let update = SubscriptionUpdate { status: Some(SubscriptionStatus::Active), ..SubscriptionUpdate::default() };
        let subscription = webhooks::update(&tx, current, update).await?;
        audit::append(&tx, ctx.audit(AuditAction::SubscriptionApproved, id, json!({}))).await?;
        tx.commit().await?;
        Ok(subscription)
    }
}

fn check_rate_limit(field: &str, per_second: u32) -> Result<i32> {
    match i32::try_from(per_second) {
        Ok(limit) if limit <= MAX_RATE_LIMIT => Ok(limit),
        _ => Err(Error::invalid(field, "must be at most 100000 (0 means no limit)")),
    }
}

/// Audit metadata of a new subscription: its settings, never its secret.
fn audit_details(subscription: &webhooks::Model) -> Value {
    json!({
        "url": subscription.url,
        "event_types": subscription.event_types,
        "status": subscription.status,
        "rate_limit_per_second": subscription.rate_limit_per_second,
        "signature_scheme": subscription.signature_scheme(),
        "channels": subscription.channel_list(),
    })
}
