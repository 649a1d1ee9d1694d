//! The limits a key or an identity carries — a rate limit, an allow-list
//! and credits — as one value ([`Limits`]), and the one code path that
//! reads, sets and changes them in either table ([`LimitTable`]: both have
//! the same limit columns). The value types are `store/policy.rs`'s.

use std::net::IpAddr;

use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Nullable, ValueType};

pub use super::policy::{Credits, CreditsChange, LowCredits, RateLimit, Refill, RefillPeriod};
use super::{OrgTx, leases, policy};
use crate::error::{Error, Result};

/// What a key or an identity is limited by.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub rate_limit: Option<RateLimit>,
    /// Canonical CIDRs the holder may be used from; empty = anywhere.
    pub allowed_cidrs: Vec<String>,
    /// `None` = unlimited uses.
    pub credits: Option<Credits>,
}

/// The limits a new key or identity starts with.
#[derive(Clone, Debug, Default)]
pub struct NewLimits {
    pub rate_limit: Option<RateLimit>,
    /// Networks it may be used from (canonical CIDRs once checked); empty = anywhere.
    pub allowed_cidrs: Vec<String>,
    /// Uses allowed, with an optional refill; `None` = unlimited.
    pub credits: Option<(u64, Option<Refill>)>,
    /// When the credits count as low.
    pub credits_low_alert: Option<LowCredits>,
}

/// Changes to the limits of a key or an identity; `None` leaves one alone,
/// and for the optional ones `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct LimitChanges {
    pub rate_limit: Option<Option<RateLimit>>,
    /// Canonical CIDRs; empty allows any address.
    pub allowed_cidrs: Option<Vec<String>>,
    /// A change to the remaining credits.
    pub credits: Option<CreditsChange>,
    /// A new refill (`Some(None)` removes it).
    pub credit_refill: Option<Option<Refill>>,
    /// A new low-credits alert (`Some(None)` removes it).
    pub credits_low_alert: Option<Option<LowCredits>>,
}

impl From<Limits> for NewLimits {
    /// The limits a copy starts with (a rotation's new key).
    fn from(limits: Limits) -> Self {
        NewLimits {
            rate_limit: limits.rate_limit,
            allowed_cidrs: limits.allowed_cidrs,
            credits: limits.credits.map(|credits| (credits.remaining, credits.refill)),
            credits_low_alert: limits.credits.and_then(|credits| credits.low_alert),
        }
    }
}

impl From<NewLimits> for LimitChanges {
    /// The changes that give a row with no limits these.
    fn from(new: NewLimits) -> Self {
        LimitChanges {
            rate_limit: Some(new.rate_limit),
            allowed_cidrs: Some(new.allowed_cidrs),
            credits: new.credits.map(|(remaining, _)| CreditsChange::Set(remaining)),
            credit_refill: Some(new.credits.and_then(|(_, refill)| refill)),
            credits_low_alert: Some(new.credits_low_alert),
        }
    }
}

/// The columns holding a [`Limits`] (and the row's id and org).
pub struct LimitColumns<C> {
    pub id: C,
    pub org_id: C,
    pub rate_limit_requests: C,
    pub rate_limit_window_ms: C,
    /// `global`, or NULL for a per-sidecar rate limit.
    pub rate_limit_scope: C,
    /// JSON array of canonical CIDRs; NULL = anywhere.
    pub allowed_cidrs: C,
    /// Uses left; NULL = unlimited.
    pub credits_remaining: C,
    pub credit_refill_amount: C,
    /// `every:<ms>`, `daily` or `monthly:<day>`.
    pub credit_refill_period: C,
    pub credit_refill_next_at: C,
    /// A [`LowCredits`] in its stored form.
    pub credits_low_alert: C,
    /// The refill period (its end; the epoch without a refill) a low-credits
    /// notice was published for.
    pub credits_low_notice_for: C,
    /// Start (Unix ms) of the window a rate-limited notice was published for.
    pub rate_limited_notice_at: C,
}

/// A table whose rows carry limits: `api_keys` and `identities`.
pub trait LimitTable: EntityTrait {
    const LIMITS: LimitColumns<Self::Column>;
}

/// Implements [`LimitTable`] for the `Entity` in scope, whose `Column`s
/// have the names every limit table uses (the compiler checks each), and
/// the check decision's [`Limited`](keyplane_proto::check::Limited) for its
/// `Model`.
macro_rules! limit_table {
    () => {
        impl keyplane_proto::check::Limited for Model {
            fn allows_client(&self, client: Option<std::net::IpAddr>) -> bool {
                $crate::store::limits::HasLimits::allows_client(self, client)
            }
        }

        impl $crate::store::limits::LimitTable for Entity {
            const LIMITS: $crate::store::limits::LimitColumns<Column> = $crate::store::limits::LimitColumns {
                id: Column::Id,
                org_id: Column::OrgId,
                rate_limit_requests: Column::RateLimitRequests,
                rate_limit_window_ms: Column::RateLimitWindowMs,
                rate_limit_scope: Column::RateLimitScope,
                allowed_cidrs: Column::AllowedCidrs,
                credits_remaining: Column::CreditsRemaining,
                credit_refill_amount: Column::CreditRefillAmount,
                credit_refill_period: Column::CreditRefillPeriod,
                credit_refill_next_at: Column::CreditRefillNextAt,
                credits_low_alert: Column::CreditsLowAlert,
                credits_low_notice_for: Column::CreditsLowNoticeFor,
                rate_limited_notice_at: Column::RateLimitedNoticeAt,
            };
        }
    };
}
pub(super) use limit_table;

/// The value `row` holds or will write for `column` (`None` for NULL or unset).
fn read_active<E: LimitTable, T: ValueType + Nullable>(row: &E::ActiveModel, column: E::Column) -> Option<T> {
    row.get(column).into_value().and_then(|value| <Option<T> as ValueType>::try_from(value).ok()).flatten()
}

/// The value of column `column` of `model`; `None` for NULL (a column of
/// another type too, which the round-trip tests below rule out).
fn read<M: ModelTrait, T: ValueType + Nullable>(model: &M, column: <M::Entity as EntityTrait>::Column) -> Option<T> {
    <Option<T> as ValueType>::try_from(model.get(column)).ok().flatten()
}

/// The limits a key or an identity row holds.
pub trait HasLimits {
    fn limits(&self) -> Limits;
    fn rate_limit(&self) -> Option<RateLimit>;
    /// The networks it may be used from (canonical CIDRs); empty = anywhere.
    fn allowed_cidr_list(&self) -> Vec<String>;
    /// Its credits, if limited to a number of uses.
    fn credits(&self) -> Option<Credits>;
    /// Whether a client at `client` passes its allow-list.
    fn allows_client(&self, client: Option<IpAddr>) -> bool;
    /// Whether it is limited to a number of uses (one column read, for
    /// the verification path: [`Self::credits`] builds the whole value).
    fn has_credits(&self) -> bool;
}

impl<M> HasLimits for M
where
    M: ModelTrait,
    M::Entity: LimitTable,
{
    fn limits(&self) -> Limits {
        Limits { rate_limit: self.rate_limit(), allowed_cidrs: self.allowed_cidr_list(), credits: self.credits() }
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        let columns = M::Entity::LIMITS;
        RateLimit::from_columns(
            read(self, columns.rate_limit_requests),
            read(self, columns.rate_limit_window_ms),
            read::<_, String>(self, columns.rate_limit_scope).as_deref(),
        )
    }

    fn allowed_cidr_list(&self) -> Vec<String> {
        policy::cidr_list(read(self, M::Entity::LIMITS.allowed_cidrs))
    }

    fn credits(&self) -> Option<Credits> {
        let columns = M::Entity::LIMITS;
        Credits::from_columns(
            read(self, columns.credits_remaining),
            read(self, columns.credit_refill_amount),
            read::<_, String>(self, columns.credit_refill_period).as_deref(),
            read(self, columns.credit_refill_next_at),
            read::<_, String>(self, columns.credits_low_alert).as_deref(),
        )
    }

    fn allows_client(&self, client: Option<IpAddr>) -> bool {
        policy::allows(read(self, M::Entity::LIMITS.allowed_cidrs), client)
    }

    fn has_credits(&self) -> bool {
        read::<_, i64>(self, M::Entity::LIMITS.credits_remaining).is_some()
    }
}

/// Sets the limit columns of a new `row` (every one, so rows inserted
/// together have the same columns).
pub fn set_new<E: LimitTable>(row: &mut E::ActiveModel, limits: NewLimits) -> Result<()> {
    row.try_set(E::LIMITS.credits_remaining, Option::<i64>::None.into())?;
    row.try_set(E::LIMITS.rate_limited_notice_at, Option::<i64>::None.into())?;
    apply::<E>(row, limits.into())?;
    Ok(())
}

/// Applies `changes` to `row` (a key or an identity loaded in the
/// transaction's org). Setting the remaining credits anew also ends the
/// holder's leases: what they hold is not given back into the new count.
pub async fn change<E: LimitTable>(tx: &OrgTx, row: &mut E::ActiveModel, changes: LimitChanges) -> Result<()> {
    if apply::<E>(row, changes)? {
        let id = row.get(E::LIMITS.id).into_value().and_then(|id| <String as ValueType>::try_from(id).ok());
        leases::forget(tx, &id.unwrap_or_default()).await?;
    }
    Ok(())
}

/// Writes `changes` into `row`; true when the remaining credits were set anew.
fn apply<E: LimitTable>(row: &mut E::ActiveModel, changes: LimitChanges) -> Result<bool> {
    let columns = E::LIMITS;
    if let Some(limit) = changes.rate_limit {
        let (requests, window_ms, scope) = RateLimit::columns(limit);
        row.try_set(columns.rate_limit_requests, requests.into())?;
        row.try_set(columns.rate_limit_window_ms, window_ms.into())?;
        row.try_set(columns.rate_limit_scope, scope.into())?;
    }
    if let Some(cidrs) = changes.allowed_cidrs {
        row.try_set(columns.allowed_cidrs, policy::cidr_column(cidrs).into())?;
    }
    let mut set_anew = false;
    // Credits given or an alert changed: low credits are announced afresh.
    if changes.credits.is_some() || changes.credits_low_alert.is_some() || changes.credit_refill.is_some() {
        row.try_set(columns.credits_low_notice_for, Option::<DateTimeUtc>::None.into())?;
    }
    if let Some(alert) = changes.credits_low_alert {
        row.try_set(columns.credits_low_alert, alert.map(LowCredits::to_column).into())?;
    }
    if let Some(change) = changes.credits {
        set_anew = matches!(change, CreditsChange::Set(_));
        let remaining = read_active::<E, i64>(row, columns.credits_remaining);
        row.try_set(columns.credits_remaining, Some(change.apply(remaining)).into())?;
    }
    if let Some(refill) = changes.credit_refill {
        let (amount, period, next_at) = policy::refill_columns(refill, super::now());
        row.try_set(columns.credit_refill_amount, amount.into())?;
        row.try_set(columns.credit_refill_period, period.into())?;
        row.try_set(columns.credit_refill_next_at, next_at.into())?;
    }
    let alert = read_active::<E, String>(row, columns.credits_low_alert).and_then(|a| LowCredits::from_column(&a));
    if matches!(alert, Some(LowCredits::PercentOfRefill(_)))
        && read_active::<E, i64>(row, columns.credit_refill_amount).is_none()
    {
        return Err(Error::invalid(
            "update.credits_low_alert",
            "a percentage is of the refill amount, and there is no refill; give `below` instead",
        ));
    }
    Ok(set_anew)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sea_orm::{ActiveModelTrait, TryIntoModel};

    use super::*;
    use crate::store::{api_keys, identities};

    fn limits() -> NewLimits {
        NewLimits {
            rate_limit: Some(RateLimit { requests: 7, window: Duration::from_secs(60), global: true }),
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            credits: Some((5, Some(Refill { amount: 9, period: RefillPeriod::Daily }))),
            credits_low_alert: Some(LowCredits::PercentOfRefill(20)),
        }
    }

    /// What `set_new` writes, `HasLimits` reads back, in both tables: a
    /// column of the wrong type in either `LIMITS` fails here.
    fn round_trip<E: LimitTable>(row: E::ActiveModel) -> Limits
    where
        E::ActiveModel: ActiveModelTrait<Entity = E> + TryIntoModel<E::Model>,
        E::Model: HasLimits,
    {
        row.try_into_model().unwrap().limits()
    }

    #[test]
    fn both_tables_round_trip() {
        let key = api_keys::NewKeyRow {
            id: "key_1".into(),
            name: "n".into(),
            description: String::new(),
            environment: crate::crypto::Environment::Live,
            scopes: Vec::new(),
            secret_hash: String::new(),
            start: String::new(),
            expires_at: None,
            metadata: None,
            sealed_token: None,
            limits: limits(),
            created_by: String::new(),
            rotated_from: None,
            identity_id: None,
        };
        let identity = identities::NewIdentity { external_id: "e".into(), metadata: None, limits: limits() };
        let keys = round_trip::<api_keys::Entity>(key.into_row("org").unwrap());
        let identities = round_trip::<identities::Entity>(identity.into_row("org").unwrap());
        assert_eq!(keys, identities);
        assert_eq!(keys.rate_limit, limits().rate_limit);
        assert_eq!(keys.allowed_cidrs, limits().allowed_cidrs);
        let credits = keys.credits.unwrap();
        assert_eq!((credits.remaining, credits.refill), (5, limits().credits.unwrap().1));
        assert!(credits.next_refill_at.is_some());
        assert_eq!(credits.low_alert, Some(LowCredits::PercentOfRefill(20)));
        assert_eq!((credits.low_threshold(), credits.are_low()), (Some(1), false));
    }

    #[test]
    fn low_credit_alerts_round_trip_and_need_a_refill_for_a_percentage() {
        for alert in [LowCredits::Below(1), LowCredits::Below(u64::MAX), LowCredits::PercentOfRefill(99)] {
            assert_eq!(LowCredits::from_column(&alert.to_column()), Some(alert));
        }
        assert_eq!(LowCredits::from_column("percent:x"), None);
        let no_refill = Credits {
            remaining: 3,
            refill: None,
            next_refill_at: None,
            low_alert: Some(LowCredits::PercentOfRefill(50)),
        };
        assert_eq!(no_refill.low_threshold(), None);
        let below = Credits { low_alert: Some(LowCredits::Below(4)), ..no_refill };
        assert!(below.are_low());
    }
}
