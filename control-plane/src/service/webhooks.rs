//! Webhook subscriptions: where an org's events go and the secrets that sign
//! them. Secrets are sealed at rest and shown once; every change is audited
//! in its transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, IntoActiveModel};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Core;
use super::auth::{RequestContext, Scope};
use super::paging::{Listing, Page, PageRequest};
use super::validate::Violations;
use crate::config::WebhookArgs;
use crate::crypto::signing::WebhookSecret;
use crate::egress::EgressPolicy;
use crate::error::{Error, Result};
use crate::store::{self, OrgTx, audit, webhooks};

/// Secret-rotation grace when none is given.
pub const DEFAULT_SECRET_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Longest secret-rotation grace.
pub const MAX_SECRET_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest endpoint URL.
const MAX_URL_LEN: usize = 2048;
/// Most event types on one subscription.
const MAX_EVENT_TYPES: usize = 100;
/// Longest event type.
const MAX_EVENT_TYPE_LEN: usize = 128;
const LISTING: Listing = Listing::named("subscriptions");

/// Operator rules for subscriptions and events.
#[derive(Clone, Debug)]
pub struct WebhookPolicy {
    /// Where endpoints may be.
    pub egress: Arc<EgressPolicy>,
    /// Host suffixes that need no approval (empty: every host).
    pub allowed_hosts: Vec<String>,
    /// Subscriptions per org at most.
    pub max_subscriptions: u64,
    /// Largest payload in bytes.
    pub max_payload_bytes: usize,
}

impl WebhookPolicy {
    /// The policy of these settings.
    pub fn new(egress: Arc<EgressPolicy>, settings: &WebhookArgs) -> Self {
        Self {
            egress,
            allowed_hosts: settings
                .allowed_hosts
                .iter()
                .map(|h| h.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            max_subscriptions: settings.max_subscriptions,
            max_payload_bytes: settings.max_payload_bytes,
        }
    }

    /// Whether an endpoint on `host` is active at once (or waits for approval).
    fn needs_approval(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        !self.allowed_hosts.is_empty()
            && !self.allowed_hosts.iter().any(|allowed| host == *allowed || host.ends_with(&format!(".{allowed}")))
    }

    /// Checks an endpoint URL; returns its host.
    fn check_url(&self, field: &str, url: &str) -> Result<String> {
        if url.len() > MAX_URL_LEN {
            return Err(Error::invalid(field, format!("must be at most {MAX_URL_LEN} characters")));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::invalid(field, format!("is not a URL: {e}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::invalid(field, "must not contain credentials"));
        }
        if parsed.fragment().is_some() {
            return Err(Error::invalid(field, "must not contain a fragment"));
        }
        // Scheme, and IP literals or `localhost` in refused ranges: refused
        // when saved, and checked again on every resolved address.
        self.egress.check_url(&parsed).map_err(|why| Error::invalid(field, why))?;
        parsed.host_str().map(str::to_owned).ok_or_else(|| Error::invalid(field, "must have a host"))
    }
}

/// One signing secret as stored (sealed) with its end of validity.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSecret {
    secret: String,
    expires_at: Option<DateTime<Utc>>,
}

/// Seals `secrets` for subscription `id` (its id is the associated data).
fn seal_secrets(core: &Core, id: &str, secrets: &[StoredSecret]) -> Result<String> {
    let plain = serde_json::to_vec(secrets).map_err(|e| Error::Sealing(format!("encoding secrets: {e}")))?;
    core.master_keys.seal(&plain, id)
}

/// The secrets of `subscription` still valid at `now`: the newest and any
/// still in their rotation grace period.
fn live_secrets(core: &Core, subscription: &webhooks::Model, now: DateTime<Utc>) -> Result<Vec<StoredSecret>> {
    let plain = core.master_keys.open(&subscription.sealed_secrets, &subscription.id)?;
    let secrets: Vec<StoredSecret> =
        serde_json::from_slice(&plain).map_err(|_| Error::Sealing("sealed secrets are not a secret list".into()))?;
    Ok(secrets.into_iter().filter(|s| s.expires_at.is_none_or(|at| at > now)).collect())
}

/// The secrets that sign for `subscription` at `now`.
pub fn signing_secrets(core: &Core, subscription: &webhooks::Model, now: DateTime<Utc>) -> Result<Vec<WebhookSecret>> {
    live_secrets(core, subscription, now)?.iter().map(|s| WebhookSecret::parse(&s.secret)).collect()
}

/// Event-type syntax: segments of `[a-z0-9_]` joined by dots, at least two;
/// a pattern may also use `*` as a whole segment, or be just `*`.
pub fn check_event_type(value: &str, pattern: bool) -> std::result::Result<(), String> {
    if value.is_empty() || value.len() > MAX_EVENT_TYPE_LEN {
        return Err(format!("must be 1 to {MAX_EVENT_TYPE_LEN} characters"));
    }
    if pattern && value == "*" {
        return Ok(());
    }
    let segments: Vec<&str> = value.split('.').collect();
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let ok =
        segments.len() >= 2 && plain(segments[0]) && segments[1..].iter().all(|s| plain(s) || (pattern && *s == "*"));
    if ok {
        Ok(())
    } else if pattern {
        Err(format!(
            "{value:?} is not an event type: use lowercase segments of [a-z0-9_] joined by dots (`order.created`), `*` for a whole segment (`order.*`), or `*`"
        ))
    } else {
        Err(format!(
            "{value:?} is not an event type: use lowercase segments of [a-z0-9_] joined by dots, e.g. `order.created`"
        ))
    }
}

/// Whether `event_type` matches `pattern`: `*` matches everything, a `*`
/// segment matches one segment, and a trailing `*` any number (≥ 1).
pub fn matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let event: Vec<&str> = event_type.split('.').collect();
    let trailing_wildcard = pattern.last() == Some(&"*");
    let lengths_fit = if trailing_wildcard { event.len() >= pattern.len() } else { event.len() == pattern.len() };
    lengths_fit && pattern.iter().zip(&event).all(|(p, e)| *p == "*" || p == e)
}

/// Input of [`WebhookService::create`].
#[derive(Debug, Default)]
pub struct NewSubscription {
    /// Requested org.
    pub org_id: String,
    /// Endpoint URL.
    pub url: String,
    /// Event types and patterns.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: String,
    /// Deliveries per second at most (0: none).
    pub rate_limit_per_second: u32,
}

/// Fields to change in [`WebhookService::update`]; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct SubscriptionChanges {
    /// New URL.
    pub url: Option<String>,
    /// New event types.
    pub event_types: Option<Vec<String>>,
    /// New description.
    pub description: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New rate limit.
    pub rate_limit_per_second: Option<u32>,
}

/// A subscription with a secret shown once.
#[derive(Debug)]
pub struct WithSecret {
    /// The subscription.
    pub subscription: webhooks::Model,
    /// The `whsec_…` secret.
    pub secret: String,
}

/// The subscription service.
pub struct WebhookService {
    core: Arc<Core>,
    policy: Arc<WebhookPolicy>,
}

impl WebhookService {
    /// A subscription service over `core` with the operator's `policy`.
    pub fn new(core: Arc<Core>, policy: Arc<WebhookPolicy>) -> Self {
        Self { core, policy }
    }

    /// Creates a subscription and returns its secret once.
    pub async fn create(&self, ctx: &RequestContext, new: NewSubscription) -> Result<WithSecret> {
        let org = ctx.authorize(Scope::WebhooksWrite, &new.org_id)?;
        let mut violations = Violations::default();
        let host = violations.absorb(self.policy.check_url("url", &new.url))?;
        check_event_types(&mut violations, "event_types", &new.event_types);
        violations.text("description", &new.description, 2000, false);
        violations.finish()?;
        let rate_limit = check_rate_limit("rate_limit_per_second", new.rate_limit_per_second)?;

        let id = crate::crypto::new_id("sub_");
        let secret = WebhookSecret::generate().expose();
        let sealed_secrets =
            seal_secrets(&self.core, &id, &[StoredSecret { secret: secret.clone(), expires_at: None }])?;
        let now = store::now();
        let status = if host.as_deref().is_some_and(|h| self.policy.needs_approval(h)) {
            webhooks::PENDING_APPROVAL
        } else {
            webhooks::ACTIVE
        };
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let existing = webhooks::count(tx.conn(), tx.org()).await?;
        if existing >= self.policy.max_subscriptions {
            return Err(Error::LimitReached(format!(
                "the org has {existing} subscriptions, the most allowed (--webhook-max-subscriptions)"
            )));
        }
        let subscription = webhooks::insert(
            &tx,
            webhooks::ActiveModel {
                id: Set(id),
                org_id: Set(String::new()),
                url: Set(new.url),
                event_types: Set(json!(new.event_types)),
                description: Set(new.description),
                status: Set(status.to_owned()),
                disabled_reason: Set(None),
                rate_limit_per_second: Set(rate_limit),
                sealed_secrets: Set(sealed_secrets),
                failing_since: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            },
        )
        .await?;
        let metadata = describe(&subscription);
        audit::append(
            &tx,
            ctx.audit("webhook.subscription_created", "webhook_subscription", &subscription.id, metadata),
        )
        .await?;
        tx.commit().await?;
        Ok(WithSecret { subscription, secret })
    }

    /// One subscription of the caller's org.
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<webhooks::Model> {
        let org = ctx.authorize(Scope::WebhooksRead, org_id)?;
        webhooks::find(&self.core.db, &org, id).await?.ok_or(Error::NotFound("subscription"))
    }

    /// A page of subscriptions in creation order.
    pub async fn list(&self, ctx: &RequestContext, org_id: &str, page: &PageRequest) -> Result<Page<webhooks::Model>> {
        let org = ctx.authorize(Scope::WebhooksRead, org_id)?;
        let cursor = LISTING.start(page)?;
        let rows = webhooks::list(&self.core.db, &org, cursor.position.as_deref(), cursor.fetch()).await?;
        Ok(cursor.page(rows, |s| s.id.clone()))
    }

    /// Changes the named fields.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        changes: SubscriptionChanges,
    ) -> Result<webhooks::Model> {
        let org = ctx.authorize(Scope::WebhooksWrite, org_id)?;
        let mut violations = Violations::default();
        let mut changed = Vec::new();
        let mut new_host = None;
        if let Some(url) = &changes.url {
            new_host = violations.absorb(self.policy.check_url("update.url", url))?;
            changed.push("url");
        }
        if let Some(event_types) = &changes.event_types {
            check_event_types(&mut violations, "update.event_types", event_types);
            changed.push("event_types");
        }
        if let Some(description) = &changes.description {
            violations.text("update.description", description, 2000, false);
            changed.push("description");
        }
        if changes.enabled.is_some() {
            changed.push("enabled");
        }
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
                "name at least one field: url, event_types, description, enabled, rate_limit_per_second",
            );
        }
        violations.finish()?;

        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let current = webhooks::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("subscription"))?;
        let host_needs_approval = new_host.as_deref().is_some_and(|h| self.policy.needs_approval(h));
        let mut row = current.clone().into_active_model();
        if let Some(url) = changes.url {
            row.url = Set(url);
        }
        if let Some(event_types) = changes.event_types {
            row.event_types = Set(json!(event_types));
        }
        if let Some(description) = changes.description {
            row.description = Set(description);
        }
        if let Some(limit) = rate_limit {
            row.rate_limit_per_second = Set(limit);
        }
        let approved = current.status != webhooks::PENDING_APPROVAL && !host_needs_approval;
        match changes.enabled {
            Some(true) if approved => {
                row.status = Set(webhooks::ACTIVE.to_owned());
                row.disabled_reason = Set(None);
                row.failing_since = Set(None);
            }
            Some(false) => {
                row.status = Set(webhooks::DISABLED.to_owned());
                row.disabled_reason = Set(Some(format!("disabled by {}", ctx.actor_label().1)));
            }
            _ => {}
        }
        if host_needs_approval {
            row.status = Set(webhooks::PENDING_APPROVAL.to_owned());
        }
        row.updated_at = Set(store::now());
        let subscription = webhooks::update(&tx, row).await?;
        audit::append(
            &tx,
            ctx.audit("webhook.subscription_updated", "webhook_subscription", id, json!({ "fields": changed })),
        )
        .await?;
        tx.commit().await?;
        Ok(subscription)
    }

    /// Deletes a subscription; its pending deliveries fail when next claimed.
    pub async fn delete(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<()> {
        let org = ctx.authorize(Scope::WebhooksWrite, org_id)?;
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        if !webhooks::delete(&tx, id).await? {
            return Err(Error::NotFound("subscription"));
        }
        audit::append(&tx, ctx.audit("webhook.subscription_deleted", "webhook_subscription", id, json!({}))).await?;
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
        let org = ctx.authorize(Scope::WebhooksWrite, org_id)?;
        let grace = grace.unwrap_or(DEFAULT_SECRET_GRACE);
        if grace > MAX_SECRET_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 7 days"));
        }
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let current = webhooks::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("subscription"))?;
        let now = store::now();
        let grace_end = now + grace;
        // The previous secrets sign until the grace ends (or their own earlier end).
        let previous = live_secrets(&self.core, &current, now)?;
        let mut secrets: Vec<StoredSecret> = if grace.is_zero() {
            Vec::new()
        } else {
            previous
                .into_iter()
                .map(|s| StoredSecret { expires_at: Some(s.expires_at.map_or(grace_end, |at| at.min(grace_end))), ..s })
                .collect()
        };
        let secret = WebhookSecret::generate().expose();
        secrets.push(StoredSecret { secret: secret.clone(), expires_at: None });
        let mut row = current.into_active_model();
        row.sealed_secrets = Set(seal_secrets(&self.core, id, &secrets)?);
        row.updated_at = Set(now);
        let subscription = webhooks::update(&tx, row).await?;
        audit::append(
            &tx,
            ctx.audit(
                "webhook.secret_rotated",
                "webhook_subscription",
                id,
                json!({ "grace_seconds": grace.as_secs(), "signing_secrets": secrets.len() }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(WithSecret { subscription, secret })
    }

    /// Activates a subscription waiting for approval (`keyplane:admin`).
    pub async fn approve(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<webhooks::Model> {
        let org = ctx.authorize(Scope::Admin, org_id)?;
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let current = webhooks::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("subscription"))?;
        if current.status != webhooks::PENDING_APPROVAL {
            return Err(Error::FailedPrecondition(format!(
                "the subscription is {}, not pending_approval",
                current.status
            )));
        }
        let mut row = current.into_active_model();
        row.status = Set(webhooks::ACTIVE.to_owned());
        row.updated_at = Set(store::now());
        let subscription = webhooks::update(&tx, row).await?;
        audit::append(&tx, ctx.audit("webhook.subscription_approved", "webhook_subscription", id, json!({}))).await?;
        tx.commit().await?;
        Ok(subscription)
    }
}

fn check_event_types(violations: &mut Violations, field: &str, event_types: &[String]) {
    if event_types.is_empty() {
        violations.add(field, "name at least one event type or pattern (`*` for every event)");
    } else if event_types.len() > MAX_EVENT_TYPES {
        violations.add(field, format!("at most {MAX_EVENT_TYPES} event types"));
    }
    for (i, event_type) in event_types.iter().enumerate() {
        if let Err(why) = check_event_type(event_type, true) {
            violations.add(format!("{field}[{i}]"), why);
        }
    }
}

fn check_rate_limit(field: &str, per_second: u32) -> Result<i32> {
    match i32::try_from(per_second) {
        Ok(limit) if limit <= 100_000 => Ok(limit),
        _ => Err(Error::invalid(field, "must be at most 100000 (0 means no limit)")),
    }
}

/// Audit metadata of a new subscription: its settings, never its secret.
fn describe(subscription: &webhooks::Model) -> Value {
    json!({
        "url": subscription.url,
        "event_types": subscription.event_types,
        "status": subscription.status,
        "rate_limit_per_second": subscription.rate_limit_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn event_type_checks_never_panic(text in ".*", pattern in proptest::bool::ANY) {
            let _ = check_event_type(&text, pattern);
            let _ = matches(&text, "order.created");
            let _ = matches("order.*", &text);
        }

        #[test]
        fn valid_event_types_match_themselves_and_their_wildcards(
            segments in proptest::collection::vec("[a-z0-9_]{1,8}", 2..6)
        ) {
            let event_type = segments.join(".");
            proptest::prop_assert!(check_event_type(&event_type, false).is_ok());
            proptest::prop_assert!(matches(&event_type, &event_type));
            proptest::prop_assert!(matches("*", &event_type));
            let trailing = format!("{}.*", segments[0]);
            proptest::prop_assert!(check_event_type(&trailing, true).is_ok());
            proptest::prop_assert!(matches(&trailing, &event_type));
            let other = format!("{}x.*", segments[0]);
            proptest::prop_assert!(!matches(&other, &event_type));
        }
    }

    #[test]
    fn event_type_syntax() {
        assert!(check_event_type("order.created", false).is_ok());
        assert!(check_event_type("api_key.v2.created", false).is_ok());
        assert!(check_event_type("order", false).is_err());
        assert!(check_event_type("order.*", false).is_err());
        assert!(check_event_type("Order.created", false).is_err());
        assert!(check_event_type("order..created", false).is_err());
        assert!(check_event_type("order.*", true).is_ok());
        assert!(check_event_type("*", true).is_ok());
        assert!(check_event_type("*.created", true).is_err());
        assert!(check_event_type("order.cre*", true).is_err());
    }

    #[test]
    fn patterns_match_whole_segments() {
        assert!(matches("*", "order.created"));
        assert!(matches("order.*", "order.created"));
        assert!(matches("order.*", "order.item.added"));
        assert!(!matches("order.*", "orders.created"));
        assert!(!matches("order.*", "order"));
        assert!(matches("order.*.added", "order.item.added"));
        assert!(!matches("order.*.added", "order.item.removed"));
        assert!(matches("order.created", "order.created"));
        assert!(!matches("order.created", "order.created.late"));
    }

    #[test]
    fn hosts_outside_the_allow_list_need_approval() {
        let policy = WebhookPolicy {
            egress: Arc::default(),
            allowed_hosts: vec!["example.com".into()],
            max_subscriptions: 50,
            max_payload_bytes: 1024,
        };
        assert!(!policy.needs_approval("example.com"));
        assert!(!policy.needs_approval("hooks.Example.com"));
        assert!(policy.needs_approval("badexample.com"));
        assert!(policy.needs_approval("example.org"));
    }
}
