//! Credits (README "Credits"): keys limited to a number of uses. Sidecars
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

use super::Wakeups;
use super::auth::RequestContext;
use super::sync::require_sidecar;
use crate::error::{Error, Result};
use crate::store::audit::{self, NewAuditEvent};
use crate::store::credits::{self, Credits};
use crate::store::key_events::{self, KeyEventKind};
use crate::store::{self, OrgScope, OrgTx, api_keys, rate_windows};

/// Most credits one lease request may ask for.
pub const MAX_LEASE_REQUEST: u64 = 100_000;
/// Most credits one check may cost.
pub const MAX_COST: u64 = 1000;
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

    /// Grants up to `requested` credits of key `key_id` (any org): at most a
    /// quarter of what is left, so sidecars sharing a key near its end take
    /// it a few credits at a time rather than strand it; but at least
    /// `at_least` (the cost of the waiting check), or nothing if fewer are left.
    pub async fn lease(&self, ctx: &RequestContext, key_id: &str, requested: u64, at_least: u64) -> Result<Lease> {
        require_sidecar(ctx)?;
        if !(1..=MAX_LEASE_REQUEST).contains(&requested) {
            return Err(Error::invalid("requested", format!("must be between 1 and {MAX_LEASE_REQUEST}")));
        }
        let key = api_keys::find_in(&self.db, OrgScope::AllOrgs, key_id).await?.ok_or(Error::NotFound("api key"))?;
        let tx = OrgTx::begin(&self.db, &key.org_id).await?;
        let key = api_keys::find(tx.conn(), tx.org(), key_id).await?.ok_or(Error::NotFound("api key"))?;
        let Some(Credits { remaining, next_refill_at, .. }) = key.credits() else {
            return Err(Error::FailedPrecondition("the key has no credits".into()));
        };
        let at_least = at_least.max(1);
        let lease = if remaining < at_least {
            None
        } else {
            let wanted = requested.max(at_least).min(remaining.div_ceil(4).max(at_least));
            credits::lease(&tx, key, wanted, self.lease_ttl).await?
        };
        tx.commit().await?;
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

    /// Grants up to `requested` requests of key `key_id`'s global rate limit
    /// in the current window (at most a quarter of what is left in it, at
    /// least one): how many, and the time left in the window.
    pub async fn lease_requests(&self, ctx: &RequestContext, key_id: &str, requested: u64) -> Result<(u64, Duration)> {
        require_sidecar(ctx)?;
        if !(1..=MAX_LEASE_REQUEST).contains(&requested) {
            return Err(Error::invalid("requested", format!("must be between 1 and {MAX_LEASE_REQUEST}")));
        }
        let key = api_keys::find_in(&self.db, OrgScope::AllOrgs, key_id).await?.ok_or(Error::NotFound("api key"))?;
        let Some(limit) = key.rate_limit().filter(|limit| limit.global) else {
            return Err(Error::FailedPrecondition("the key has no global rate limit".into()));
        };
        let window_ms = i64::try_from(limit.window.as_millis()).unwrap_or(i64::MAX).max(1);
        let now_ms = store::now().timestamp_millis();
        let window_start = now_ms - now_ms.rem_euclid(window_ms);
        let window_left = Duration::from_millis(u64::try_from(window_start + window_ms - now_ms).unwrap_or(0));
        let tx = OrgTx::begin(&self.db, &key.org_id).await?;
        let wanted = i64::try_from(requested).unwrap_or(i64::MAX);
        let granted = rate_windows::grant(&tx, &key.id, window_start, i64::from(limit.requests), wanted).await?;
        tx.commit().await?;
        Ok((u64::try_from(granted).unwrap_or(0), window_left))
    }

    /// Forgets global rate-limit windows that started more than a day ago.
    pub async fn purge_old_windows(&self) -> Result<u64> {
        rate_windows::purge_before(&self.db, store::now().timestamp_millis() - 86_400_000).await
    }

    /// Ends lease `id`, giving back up to `unused` credits (none if it
    /// already ended, or the key was refilled since). Returns them.
    pub async fn give_back(&self, ctx: &RequestContext, id: &str, unused: u64) -> Result<u64> {
        require_sidecar(ctx)?;
        let Some(lease) = credits::find_lease(&self.db, id).await? else { return Ok(0) };
        let tx = OrgTx::begin(&self.db, &lease.org_id).await?;
        let returned = credits::give_back(&tx, lease, unused).await?;
        tx.commit().await?;
        Ok(returned)
    }

    /// Spends `cost` credits of `key` for VerifyApiKey; false when fewer are left.
    pub async fn spend(&self, key: &api_keys::Model, cost: u64) -> Result<bool> {
        let tx = OrgTx::begin(&self.db, &key.org_id).await?;
        let Some(key) = api_keys::find(tx.conn(), tx.org(), &key.id).await? else { return Ok(false) };
        let spent = credits::spend(&tx, key, cost).await?;
        tx.commit().await?;
        Ok(spent)
    }

    /// Refills up to `batch` keys whose refill is due, each in its own
    /// transaction (audited as the system, a key event appended so sidecars
    /// that ran out try again). Returns how many.
    pub async fn refill_due(&self, batch: u64) -> Result<u64> {
        let now = store::now();
        let mut refilled = 0;
        for (org, id) in credits::due_refills(&self.db, now, batch).await? {
            let tx = OrgTx::begin(&self.db, &org).await?;
            let Some(key) = api_keys::find(tx.conn(), tx.org(), &id).await? else { continue };
            let Some(key) = credits::refill(&tx, key, now).await? else { continue };
            key_events::append(&tx, &key.id, KeyEventKind::Updated).await?;
            let details = json!({ "credits": key.credits_remaining, "next_refill_at": key.credit_refill_next_at });
            let event = NewAuditEvent::by_system(REFILL, "api_key.credits_refilled", "api_key", &key.id, details);
            audit::append(&tx, event).await?;
            self.wakeups.commit_key_change(tx).await?;
            refilled += 1;
        }
        Ok(refilled)
    }

    /// Forgets up to `batch` leases that ended (their credits stay spent).
    pub async fn purge_ended_leases(&self, batch: u64) -> Result<u64> {
        credits::purge_leases(&self.db, store::now(), batch).await
    }
}
