//! Credits and global rate limits of a key or an identity ([`Holder`]):
//! spending, refills, and the `credit_leases` table of blocks handed to
//! sidecars (the value types are `store/policy.rs`'s). Every function that
//! moves credits runs in the key's [`OrgTx`], which serialises them per org
//! (Postgres advisory lock; SQLite has one writer), so a read-then-write is
//! an atomic decrement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::{Condition, IntoActiveModel, QueryOrder, QuerySelect};

use super::policy::RateLimit;
pub use super::policy::{Credits, CreditsChange, Refill, RefillPeriod, refill_columns};
use super::{OrgScope, OrgTx, api_keys, identities};
use crate::error::Result;

/// What credits and a global rate limit belong to: a key, or an identity
/// whose keys share them. Leases and rate-limit windows name either by id.
#[derive(Clone, Debug)]
pub enum Holder {
    Key(Box<api_keys::Model>),
    Identity(Box<identities::Model>),
}

impl Holder {
    /// The key or identity `id` (told apart by the id's prefix) in `scope`.
    pub async fn find(db: &impl ConnectionTrait, scope: OrgScope<'_>, id: &str) -> Result<Option<Self>> {
        Ok(if identities::is_identity_id(id) {
            identities::find_in(db, scope, id).await?.map(|identity| Holder::Identity(Box::new(identity)))
        } else {
            api_keys::find_in(db, scope, id).await?.map(|key| Holder::Key(Box::new(key)))
        })
    }

    /// What it is, as audit target types name it: `api_key` or `identity`.
    pub fn kind(&self) -> &'static str {
        match self {
            Holder::Key(_) => "api_key",
            Holder::Identity(_) => "identity",
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Holder::Key(key) => &key.id,
            Holder::Identity(identity) => &identity.id,
        }
    }

    pub fn org_id(&self) -> &str {
        match self {
            Holder::Key(key) => &key.org_id,
            Holder::Identity(identity) => &identity.org_id,
        }
    }

    /// Its credits, if limited to a number of uses.
    pub fn credits(&self) -> Option<Credits> {
        match self {
            Holder::Key(key) => key.credits(),
            Holder::Identity(identity) => identity.credits(),
        }
    }

    /// Its rate limit, if any.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        match self {
            Holder::Key(key) => key.rate_limit(),
            Holder::Identity(identity) => identity.rate_limit(),
        }
    }

    fn remaining(&self) -> Option<i64> {
        match self {
            Holder::Key(key) => key.credits_remaining,
            Holder::Identity(identity) => identity.credits_remaining,
        }
    }

    fn next_refill_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Holder::Key(key) => key.credit_refill_next_at,
            Holder::Identity(identity) => identity.credit_refill_next_at,
        }
    }

    /// Sets the remaining credits (and, for a refill, the next refill).
    async fn store(self, tx: &OrgTx, remaining: i64, next_refill_at: Option<DateTime<Utc>>) -> Result<Self> {
        Ok(match self {
            Holder::Key(key) => {
                let mut row = key.into_active_model();
                row.credits_remaining = Set(Some(remaining));
                row.credit_refill_next_at = Set(next_refill_at);
                Holder::Key(Box::new(row.update(tx.conn()).await?))
            }
            Holder::Identity(identity) => {
                let mut row = identity.into_active_model();
                row.credits_remaining = Set(Some(remaining));
                row.credit_refill_next_at = Set(next_refill_at);
                Holder::Identity(Box::new(row.update(tx.conn()).await?))
            }
        })
    }

    async fn set_remaining(self, tx: &OrgTx, remaining: i64) -> Result<Self> {
        let next_refill_at = self.next_refill_at();
        self.store(tx, remaining, next_refill_at).await
    }
}

/// A `credit_leases` row: credits taken from a key for a sidecar to spend.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_leases")]
pub struct Model {
    /// `lse_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    /// The key, or the identity (`idn_…`), the credits were taken from.
    pub key_id: String,
    pub granted: i64,
    /// The key's next refill when granted: a refill since voids the return.
    pub period: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Takes up to `wanted` credits from `holder` (loaded in the transaction's
/// org) into a new lease lasting `ttl`; `None` when none are left.
pub async fn lease(tx: &OrgTx, holder: Holder, wanted: u64, ttl: Duration) -> Result<Option<Model>> {
    let Some(remaining) = holder.remaining().filter(|r| *r > 0) else { return Ok(None) };
    let granted = i64::try_from(wanted).unwrap_or(i64::MAX).min(remaining);
    let period = holder.next_refill_at();
    let holder = holder.set_remaining(tx, remaining - granted).await?;
    let now = super::now();
    let lease = ActiveModel {
        id: Set(crate::crypto::new_id("lse")),
        org_id: Set(tx.org().to_owned()),
        key_id: Set(holder.id().to_owned()),
        granted: Set(granted),
        period: Set(period),
        created_at: Set(now),
        expires_at: Set(now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)),
    };
    Ok(Some(lease.insert(tx.conn()).await?))
}

/// Spends `cost` credits of each of `holders` (loaded in the transaction's
/// org) at once (VerifyApiKey: a key and its identity); false, spending
/// nothing, when any has fewer left.
pub async fn spend(tx: &OrgTx, holders: Vec<Holder>, cost: u64) -> Result<bool> {
    let cost = i64::try_from(cost).unwrap_or(i64::MAX);
    if holders.iter().any(|holder| holder.remaining().is_some_and(|remaining| remaining < cost)) {
        return Ok(false);
    }
    for holder in holders {
        if let Some(remaining) = holder.remaining() {
            holder.set_remaining(tx, remaining - cost).await?;
        }
    }
    Ok(true)
}

/// The lease `id` of any org, if it still exists (`(org, lease)`): returns
/// come from sidecars, which are platform credentials.
pub async fn find_lease(db: &impl ConnectionTrait, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id.to_owned()).one(db).await?)
}

/// Ends `lease` (loaded in the transaction's org), giving back up to
/// `unused` credits if it has not expired and its key (or identity) was
/// not refilled since. Returns the credits given back.
pub async fn give_back(tx: &OrgTx, lease: Model, unused: u64) -> Result<u64> {
    // Deleting first makes a return count once, whoever returns it.
    let deleted = Entity::delete_by_id(lease.id.clone()).exec(tx.conn()).await?.rows_affected;
    if deleted == 0 || lease.expires_at <= super::now() {
        return Ok(0);
    }
    let scope = OrgScope::Org(tx.org());
    let Some(holder) = Holder::find(tx.conn(), scope, &lease.key_id).await? else { return Ok(0) };
    let returned = i64::try_from(unused).unwrap_or(i64::MAX).min(lease.granted);
    match holder.remaining() {
        Some(remaining) if holder.next_refill_at() == lease.period => {
            holder.set_remaining(tx, remaining.saturating_add(returned)).await?;
            Ok(u64::try_from(returned).unwrap_or(0))
        }
        _ => Ok(0),
    }
}

/// Ends every lease of key or identity `holder_id` of the transaction's org
/// without giving anything back (their credits count as spent).
pub async fn forget_leases(tx: &OrgTx, holder_id: &str) -> Result<()> {
    let leases = Entity::delete_many().filter(Column::KeyId.eq(holder_id)).filter(Column::OrgId.eq(tx.org()));
    leases.exec(tx.conn()).await?;
    Ok(())
}

/// Up to `limit` keys and up to `limit` identities, of every org, whose
/// refill is due at `now`: `(org, id)`.
pub async fn due_refills(db: &impl ConnectionTrait, now: DateTime<Utc>, limit: u64) -> Result<Vec<(String, String)>> {
    use {api_keys::Column as K, identities::Column as I};
    let mut due = due_in::<api_keys::Entity>(db, [K::OrgId, K::Id, K::CreditRefillNextAt], now, limit).await?;
    due.extend(due_in::<identities::Entity>(db, [I::OrgId, I::Id, I::CreditRefillNextAt], now, limit).await?);
    Ok(due)
}

/// `(org, id)` of up to `limit` rows of `E` whose `next_at` column is at or
/// before `now`, soonest first.
async fn due_in<E: EntityTrait>(
    db: &impl ConnectionTrait,
    [org, id, next_at]: [E::Column; 3],
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<(String, String)>> {
    Ok(E::find()
        .select_only()
        .column(org)
        .column(id)
        .filter(next_at.lte(now))
        .order_by_asc(next_at)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}

/// Refills `holder` (loaded in the transaction's org) if due at `now`:
/// sets its credits to the refill amount and schedules the next refill.
pub async fn refill(tx: &OrgTx, holder: Holder, now: DateTime<Utc>) -> Result<Option<Holder>> {
    let Some(Credits { refill: Some(refill), next_refill_at: Some(due), .. }) = holder.credits() else {
        return Ok(None);
    };
    if due > now {
        return Ok(None);
    }
    let amount = i64::try_from(refill.amount).unwrap_or(i64::MAX);
    Ok(Some(holder.store(tx, amount, Some(refill.period.next_after(now))).await?))
}

/// Deletes up to `limit` leases that ended before `before` (their unspent
/// credits count as spent).
pub async fn purge_leases(db: &impl ConnectionTrait, before: DateTime<Utc>, limit: u64) -> Result<u64> {
    super::delete_batch::<Entity>(db, Column::Id, Condition::all().add(Column::ExpiresAt.lt(before)), limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn refill_periods() {
        let now = at("2026-01-31T10:00:00Z");
        assert_eq!(RefillPeriod::Daily.next_after(now), at("2026-02-01T00:00:00Z"));
        assert_eq!(RefillPeriod::Monthly(31).next_after(now), at("2026-02-28T00:00:00Z"));
        assert_eq!(RefillPeriod::Monthly(1).next_after(now), at("2026-02-01T00:00:00Z"));
        assert_eq!(RefillPeriod::Monthly(31).next_after(at("2026-01-15T00:00:00Z")), at("2026-01-31T00:00:00Z"));
        assert_eq!(RefillPeriod::Monthly(5).next_after(at("2026-12-20T00:00:00Z")), at("2027-01-05T00:00:00Z"));
        let hourly = RefillPeriod::Every(Duration::from_secs(3600));
        assert_eq!(hourly.next_after(now), at("2026-01-31T11:00:00Z"));
        for period in [hourly, RefillPeriod::Daily, RefillPeriod::Monthly(7)] {
            assert_eq!(RefillPeriod::from_column(&period.to_column()), Some(period));
        }
    }

    #[test]
    fn changes_never_go_below_zero() {
        assert_eq!(CreditsChange::Subtract(5).apply(Some(3)), 0);
        assert_eq!(CreditsChange::Add(5).apply(None), 5);
        assert_eq!(CreditsChange::Set(7).apply(Some(100)), 7);
    }
}
