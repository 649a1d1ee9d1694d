//! Credits (docs/api.md "Credits"): keys limited to a number of uses. Sidecars
//! lease blocks and spend them locally, so a check costs no round trip;
//! VerifyApiKey spends directly. Every grant is an atomic decrement in the
//! key's org transaction, so across any number of sidecars and replicas the
//! credits handed out never exceed the key's. A lease not given back before
//! it ends counts as spent: its sidecar may have spent it (a sidecar cut off
//! from the control plane keeps spending until its lease ends), so giving it
//! back could allow more than was granted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::json;

use super::auth::RequestContext;
use super::sync::require_sidecar;
use super::verify::VerifiedKey;
use crate::error::{Error, Result};
use crate::service::webhooks::outbox::publish_system_event;
use crate::service::webhooks::system_events::{CreditsLow, SystemEvent};
use crate::store::audit::{self, AuditAction, NewAuditEvent};
use crate::store::credits::{self, Credits, Holder, HolderId};
use crate::store::key_events::{self, KeyEventKind};
use crate::store::leases;
use crate::store::{self, ChangeTx, OrgScope, OrgTx, rate_windows};
use crate::wakeups::Wakeups;

/// Most credits one lease request may ask for.
pub const MAX_LEASE_REQUEST: u64 = 100_000;
/// The audit actor id of refills.
const REFILL: &str = "credit-refill";

/// Credits granted to a sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Empty when nothing was granted.
    pub id: String,
    pub granted: u64,
    pub ttl: Duration,
    pub next_refill_at: Option<DateTime<Utc>>,
}

/// Leases, returns, direct spending and refills.
pub struct CreditService {
    db: DatabaseConnection,
    wakeups: Wakeups,
    lease_ttl: Duration,
}

impl CreditService {
    /// Leases last `lease_ttl`.
    pub fn new(db: DatabaseConnection, wakeups: Wakeups, lease_ttl: Duration) -> Self {
        Self { db, wakeups, lease_ttl }
    }

    /// Grants up to `requested` credits of key or identity `holder_id`,
    /// of any org: at most a quarter of what is left, so sidecars sharing a
    /// budget near its end take it a few credits at a time rather than
    /// strand it; but at least `at_least` (the cost of the waiting check),
    /// or nothing if fewer are left.
    pub async fn lease(
        &self,
        ctx: &RequestContext,
        holder_id: &HolderId,
        requested: u64,
        at_least: u64,
    ) -> Result<Lease> {
        let holder = self.holder_for_lease(ctx, holder_id, requested).await?;
        let tx = ChangeTx::begin(&self.db, &holder.org_id).await?;
        let holder = Holder::find(tx.conn(), OrgScope::Org(tx.org()), holder_id)
            .await?
            .ok_or(Error::NotFound(holder_id.kind_name()))?;
        let Some(Credits { remaining, next_refill_at, .. }) = holder.credits else {
            return Err(Error::FailedPrecondition(format!("the {} has no credits", holder_id.kind_name())));
        };
        let at_least = at_least.max(1);
        let lease = if remaining < at_least {
            None
        } else {
            let wanted = requested.max(at_least).min(remaining.div_ceil(4).max(at_least));
            credits::lease(&tx, holder, wanted, self.lease_ttl).await?
        };
        let lease = match lease {
            Some((lease, holder)) => {
                announce_low_credits(&tx, &[holder]).await?;
                Some(lease)
            }
            None => None,
        };
        tx.commit(&self.wakeups).await?;
        Ok(match lease {
            Some(lease) => Lease {
                id: lease.id,
                granted: u64::try_from(lease.granted).unwrap_or(0),
                ttl: self.lease_ttl,
                next_refill_at,
            },
            None => Lease { id: String::new(), granted: 0, ttl: self.lease_ttl, next_refill_at },
        })
    }

    /// Grants up to `requested` requests of the global rate limit of key
    /// (or identity) `holder_id` in the current window (at most a quarter
    /// of what is left in it, at least one): how many, and the time left in
    /// the window.
    pub async fn lease_requests(
        &self,
        ctx: &RequestContext,
        holder_id: &HolderId,
        requested: u64,
    ) -> Result<(u64, Duration)> {
        let holder = self.holder_for_lease(ctx, holder_id, requested).await?;
        let Some(limit) = holder.rate_limit.filter(|limit| limit.global) else {
            return Err(Error::FailedPrecondition(format!("the {} has no global rate limit", holder_id.kind_name())));
        };
        let window_ms = i64::try_from(limit.window.as_millis()).unwrap_or(i64::MAX).max(1);
        let now_ms = store::now().timestamp_millis();
        let window_start = now_ms - now_ms.rem_euclid(window_ms);
        let window_left = Duration::from_millis(u64::try_from(window_start + window_ms - now_ms).unwrap_or(0));
        let tx = OrgTx::begin(&self.db, &holder.org_id).await?;
        let wanted = i64::try_from(requested).unwrap_or(i64::MAX);
        let granted =
            rate_windows::grant(&tx, holder.id.as_str(), window_start, i64::from(limit.requests), wanted).await?;
        tx.commit().await?;
        Ok((u64::try_from(granted).unwrap_or(0), window_left))
    }

    /// The key or identity a sidecar leases from (any org), after the
    /// checks both kinds of lease share.
    async fn holder_for_lease(&self, ctx: &RequestContext, holder_id: &HolderId, requested: u64) -> Result<Holder> {
        require_sidecar(ctx)?;
        if !(1..=MAX_LEASE_REQUEST).contains(&requested) {
            return Err(Error::invalid("requested", format!("must be between 1 and {MAX_LEASE_REQUEST}")));
        }
        Holder::find(&self.db, OrgScope::AllOrgs, holder_id).await?.ok_or(Error::NotFound(holder_id.kind_name()))
    }

    /// Forgets global rate-limit windows that started more than a day ago.
    pub async fn purge_old_windows(&self) -> Result<u64> {
        rate_windows::purge_before(&self.db, store::now().timestamp_millis() - 86_400_000).await
    }

    /// Ends lease `id`, giving back up to `unused` credits (none if it
    /// already ended, or the key was refilled since). Returns them.
    pub async fn give_back(&self, ctx: &RequestContext, id: &str, unused: u64) -> Result<u64> {
        require_sidecar(ctx)?;
        let Some(lease) = leases::find(&self.db, id).await? else { return Ok(0) };
        let tx = OrgTx::begin(&self.db, &lease.org_id).await?;
        let returned = credits::give_back(&tx, lease, unused).await?;
        tx.commit().await?;
        Ok(returned)
    }

    /// Spends `cost` credits for VerifyApiKey from the verified key and its
    /// identity, whichever are limited: from both or, when either has fewer
    /// left, from neither (false).
    pub async fn spend(&self, verified: &VerifiedKey, cost: u64) -> Result<bool> {
        let tx = ChangeTx::begin(&self.db, &verified.key.org_id).await?;
        let identity = verified.identity.as_ref().map(|identity| HolderId::Identity(identity.id.clone()));
        let mut holders = Vec::with_capacity(2);
        for id in std::iter::once(HolderId::Key(verified.key.id.clone())).chain(identity) {
            let Some(holder) = Holder::find(tx.conn(), OrgScope::Org(tx.org()), &id).await? else { return Ok(false) };
            holders.push(holder);
        }
        let Some(spent) = credits::spend(&tx, holders, cost).await? else { return Ok(false) };
        announce_low_credits(&tx, &spent).await?;
        tx.commit(&self.wakeups).await?;
        Ok(true)
    }

    /// Refills up to `batch` keys and identities whose refill is due, each
    /// in its own transaction (audited as the system, a key event appended
    /// so sidecars that ran out try again). Returns how many.
    pub async fn refill_due(&self, batch: u64) -> Result<u64> {
        let now = store::now();
        let mut refilled = 0;
        for (org, id) in credits::due_refills(&self.db, now, batch).await? {
            let tx = ChangeTx::begin(&self.db, &org).await?;
            let Some(holder) = Holder::find(tx.conn(), OrgScope::Org(tx.org()), &id).await? else { continue };
            let Some(holder) = credits::refill(&tx, holder, now).await? else { continue };
            key_events::append(&tx, holder.id.as_str(), KeyEventKind::Updated).await?;
            let credits = holder.credits;
            let details = json!({
                "credits": credits.map(|c| c.remaining),
                "next_refill_at": credits.and_then(|c| c.next_refill_at),
            });
            let action = match holder.id {
                HolderId::Key(_) => AuditAction::ApiKeyCreditsRefilled,
                HolderId::Identity(_) => AuditAction::IdentityCreditsRefilled,
            };
            let event = NewAuditEvent::by_system(REFILL, action, holder.id.as_str(), details);
            audit::append(&tx, event).await?;
            tx.commit(&self.wakeups).await?;
            refilled += 1;
        }
        Ok(refilled)
    }

    /// Forgets up to `batch` leases that ended (their credits stay spent).
    pub async fn purge_ended_leases(&self, batch: u64) -> Result<u64> {
        leases::purge(&self.db, store::now(), batch).await
    }
}

/// Publishes `api_key.credits_low` for each of `holders` (just spent from
/// or leased, in the transaction's org) whose credits are now low and were
/// not yet announced in this refill period.
async fn announce_low_credits(tx: &ChangeTx, holders: &[Holder]) -> Result<()> {
    for holder in holders {
        let Some(credits) = holder.credits.filter(Credits::are_low) else { continue };
        if !credits::claim_low_notice(tx, holder).await? {
            continue;
        }
        let (key_id, identity_id) = match &holder.id {
            HolderId::Key(id) => (Some(id.clone()), None),
            HolderId::Identity(id) => (None, Some(id.clone())),
        };
        let notice = CreditsLow {
            key_id,
            identity_id,
            remaining: credits.remaining,
            threshold: credits.low_threshold().unwrap_or_default(),
            next_refill_at: credits.next_refill_at,
        };
        publish_system_event(tx, SystemEvent::CreditsLow(notice)).await?;
    }
    Ok(())
}
