//! Credits and global rate limits of a key or an identity ([`Holder`]):
//! spending, refills, and leases of blocks handed to sidecars (the value
//! types are `store/policy.rs`'s, the lease rows `store/leases.rs`'s). Every function that
//! moves credits runs in the key's [`OrgTx`], which serialises them per org
//! (Postgres advisory lock; SQLite has one writer), so a read-then-write is
//! an atomic decrement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, QuerySelect};

pub use super::holders::HolderId;
use super::leases::{self, ActiveModel, Model};
use super::limits::{self, HasLimits, LimitTable};
pub use super::policy::{Credits, CreditsChange, Refill, RefillPeriod};
use super::{OrgScope, OrgTx, api_keys, identities};
use crate::error::Result;

/// What credits and a global rate limit belong to: a key, or an identity
/// whose keys share them. Leases and rate-limit windows name either by id.
#[derive(Clone, Debug)]
pub struct Holder {
    pub id: HolderId,
    pub org_id: String,
    /// Its credits, if limited to a number of uses.
    pub credits: Option<Credits>,
    /// Its rate limit, if any.
    pub rate_limit: Option<limits::RateLimit>,
}

impl Holder {
    fn of(id: &HolderId, org_id: String, row: &impl HasLimits) -> Self {
        Holder { id: id.clone(), org_id, credits: row.credits(), rate_limit: row.rate_limit() }
    }

    /// Key or identity `id` in `scope`.
    pub async fn find(db: &impl ConnectionTrait, scope: OrgScope<'_>, id: &HolderId) -> Result<Option<Self>> {
        Ok(match id {
            HolderId::Identity(found) => {
                let identity = identities::find_in(db, scope, found).await?;
                identity.map(|row| Holder::of(id, row.org_id.clone(), &row))
            }
            HolderId::Key(found) => {
                let key = api_keys::find_in(db, scope, found).await?;
                key.map(|row| Holder::of(id, row.org_id.clone(), &row))
            }
        })
    }

    fn remaining(&self) -> Option<i64> {
        self.credits.map(|credits| i64::try_from(credits.remaining).unwrap_or(i64::MAX))
    }

    /// When its credits are refilled next.
    pub fn next_refill_at(&self) -> Option<DateTime<Utc>> {
        self.credits.and_then(|credits| credits.next_refill_at)
    }

    /// Sets the remaining credits and the next refill.
    async fn store(mut self, tx: &OrgTx, remaining: i64, next_refill_at: Option<DateTime<Utc>>) -> Result<Self> {
        match &self.id {
            HolderId::Key(id) => store_in::<api_keys::Entity>(tx, id, remaining, next_refill_at).await?,
            HolderId::Identity(id) => store_in::<identities::Entity>(tx, id, remaining, next_refill_at).await?,
        }
        if let Some(credits) = &mut self.credits {
            credits.remaining = u64::try_from(remaining).unwrap_or(0);
            credits.next_refill_at = next_refill_at;
        }
        Ok(self)
    }

    async fn set_remaining(self, tx: &OrgTx, remaining: i64) -> Result<Self> {
        let next_refill_at = self.next_refill_at();
        self.store(tx, remaining, next_refill_at).await
    }
}

/// Sets the remaining credits (and the next refill) of row `id` of `E` in
/// the transaction's org.
async fn store_in<E: LimitTable>(
    tx: &OrgTx,
    id: &str,
    remaining: i64,
    next_refill_at: Option<DateTime<Utc>>,
) -> Result<()> {
    let columns = E::LIMITS;
    E::update_many()
        .col_expr(columns.credits_remaining, Expr::value(remaining))
        .col_expr(columns.credit_refill_next_at, Expr::value(next_refill_at))
        .filter(columns.id.eq(id))
        .filter(columns.org_id.eq(tx.org()))
        .exec(tx.conn())
        .await?;
    Ok(())
}

/// Takes up to `wanted` credits from `holder` (loaded in the transaction's
/// org) into a new lease lasting `ttl`; `None` when none are left. Returns
/// the lease and the holder as it is now.
pub async fn lease(tx: &OrgTx, holder: Holder, wanted: u64, ttl: Duration) -> Result<Option<(Model, Holder)>> {
    let Some(remaining) = holder.remaining().filter(|r| *r > 0) else { return Ok(None) };
    let granted = i64::try_from(wanted).unwrap_or(i64::MAX).min(remaining);
    let period = holder.next_refill_at();
    let holder = holder.set_remaining(tx, remaining - granted).await?;
    let now = super::now();
    let lease = ActiveModel {
        id: Set(crate::crypto::new_id("lse")),
        org_id: Set(tx.org().to_owned()),
        key_id: Set(holder.id.as_str().to_owned()),
        granted: Set(granted),
        period: Set(period),
        created_at: Set(now),
        expires_at: Set(now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)),
    };
    Ok(Some((lease.insert(tx.conn()).await?, holder)))
}

/// Spends `cost` credits of each of `holders` (loaded in the transaction's
/// org) at once (VerifyApiKey: a key and its identity); false, spending
/// nothing, when any has fewer left (`None`). Returns the holders as they are now.
pub async fn spend(tx: &OrgTx, holders: Vec<Holder>, cost: u64) -> Result<Option<Vec<Holder>>> {
    let cost = i64::try_from(cost).unwrap_or(i64::MAX);
    if holders.iter().any(|holder| holder.remaining().is_some_and(|remaining| remaining < cost)) {
        return Ok(None);
    }
    let mut spent = Vec::with_capacity(holders.len());
    for holder in holders {
        spent.push(match holder.remaining() {
            Some(remaining) => holder.set_remaining(tx, remaining - cost).await?,
            None => holder,
        });
    }
    Ok(Some(spent))
}

/// Records that `holder`'s low credits are announced for its current refill
/// period (the epoch without a refill); false when they already were.
pub async fn claim_low_notice(tx: &OrgTx, holder: &Holder) -> Result<bool> {
    let period = holder.next_refill_at().unwrap_or(DateTime::UNIX_EPOCH);
    match &holder.id {
        HolderId::Key(id) => claim_low_in::<api_keys::Entity>(tx, id, period).await,
        HolderId::Identity(id) => claim_low_in::<identities::Entity>(tx, id, period).await,
    }
}

async fn claim_low_in<E: LimitTable>(tx: &OrgTx, id: &str, period: DateTime<Utc>) -> Result<bool> {
    let column = E::LIMITS.credits_low_notice_for;
    let unclaimed = sea_orm::Condition::any().add(column.is_null()).add(column.ne(period));
    claim_in::<E>(tx, id, column, period.into(), unclaimed).await
}

/// Records that `holder`'s refusals by its rate limit are announced for
/// the window starting at `window_start` (Unix ms); false when that window
/// (or a later one) already was.
pub async fn claim_rate_limited_notice(tx: &OrgTx, holder: &HolderId, window_start: i64) -> Result<bool> {
    match holder {
        HolderId::Key(id) => claim_window_in::<api_keys::Entity>(tx, id, window_start).await,
        HolderId::Identity(id) => claim_window_in::<identities::Entity>(tx, id, window_start).await,
    }
}

async fn claim_window_in<E: LimitTable>(tx: &OrgTx, id: &str, window_start: i64) -> Result<bool> {
    let column = E::LIMITS.rate_limited_notice_at;
    let unclaimed = sea_orm::Condition::any().add(column.is_null()).add(column.lt(window_start));
    claim_in::<E>(tx, id, column, window_start.into(), unclaimed).await
}

/// Sets `column` of row `id` to `value` where `unclaimed` holds: whether it did.
async fn claim_in<E: LimitTable>(
    tx: &OrgTx,
    id: &str,
    column: E::Column,
    value: sea_orm::Value,
    unclaimed: sea_orm::Condition,
) -> Result<bool> {
    let columns = E::LIMITS;
    let claimed = E::update_many()
        .col_expr(column, Expr::value(value))
        .filter(columns.id.eq(id))
        .filter(columns.org_id.eq(tx.org()))
        .filter(unclaimed)
        .exec(tx.conn())
        .await?;
    Ok(claimed.rows_affected > 0)
}

/// Ends `lease` (loaded in the transaction's org), giving back up to
/// `unused` credits if it has not expired and its key (or identity) was
/// not refilled since. Returns the credits given back.
pub async fn give_back(tx: &OrgTx, lease: Model, unused: u64) -> Result<u64> {
    // Deleting first makes a return count once, whoever returns it.
    if !leases::delete(tx, &lease.id).await? || lease.expires_at <= super::now() {
        return Ok(0);
    }
    let scope = OrgScope::Org(tx.org());
    let Some(holder) = Holder::find(tx.conn(), scope, &HolderId::parse(&lease.key_id)).await? else { return Ok(0) };
    let returned = i64::try_from(unused).unwrap_or(i64::MAX).min(lease.granted);
    match holder.remaining() {
        Some(remaining) if holder.next_refill_at() == lease.period => {
            holder.set_remaining(tx, remaining.saturating_add(returned)).await?;
            Ok(u64::try_from(returned).unwrap_or(0))
        }
        _ => Ok(0),
    }
}

/// Up to `limit` keys and up to `limit` identities, of every org, whose
/// refill is due at `now`: `(org, id)`.
pub async fn due_refills(db: &impl ConnectionTrait, now: DateTime<Utc>, limit: u64) -> Result<Vec<(String, HolderId)>> {
    let keys = due_in::<api_keys::Entity>(db, now, limit).await?;
    let identities = due_in::<identities::Entity>(db, now, limit).await?;
    let keys = keys.into_iter().map(|(org, id)| (org, HolderId::Key(id)));
    Ok(keys.chain(identities.into_iter().map(|(org, id)| (org, HolderId::Identity(id)))).collect())
}

/// `(org, id)` of up to `limit` rows of `E` whose refill is due at `now`,
/// soonest first.
async fn due_in<E: LimitTable>(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<(String, String)>> {
    let columns = E::LIMITS;
    Ok(E::find()
        .select_only()
        .column(columns.org_id)
        .column(columns.id)
        .filter(columns.credit_refill_next_at.lte(now))
        .order_by_asc(columns.credit_refill_next_at)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}

/// Refills `holder` (loaded in the transaction's org) if due at `now`:
/// sets its credits to the refill amount and schedules the next refill.
pub async fn refill(tx: &OrgTx, holder: Holder, now: DateTime<Utc>) -> Result<Option<Holder>> {
    let Some(Credits { refill: Some(refill), next_refill_at: Some(due), .. }) = holder.credits else {
        return Ok(None);
    };
    if due > now {
        return Ok(None);
    }
    let amount = i64::try_from(refill.amount).unwrap_or(i64::MAX);
    Ok(Some(holder.store(tx, amount, Some(refill.period.next_after(now))).await?))
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
