//! `keyplane reseal`: re-encrypts every sealed value under the newest master
//! key, online. Each row is rewritten with a compare-and-swap on its old
//! ciphertext, so a concurrent change (a rotation, a refresh) is never
//! overwritten; such a row is simply already current.

use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, QuerySelect};

use crate::crypto::MasterKeys;
use crate::error::Result;
use crate::store::{api_keys, connections, webhooks};

/// Rows read per query.
const PAGE: u64 = 500;

/// What a reseal did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Recoverable API-key tokens re-sealed.
    pub api_keys: u64,
    /// Webhook secret sets re-sealed.
    pub webhook_subscriptions: u64,
    /// OAuth tokens re-sealed (access and refresh count separately).
    pub oauth_tokens: u64,
    /// Values already sealed under the newest key.
    pub already_current: u64,
    /// Values that could not be opened (`table:id`): tampered, or sealed under a missing key.
    pub unreadable: Vec<String>,
}

/// Re-seals every sealed value not yet under the newest key.
pub async fn reseal_all(db: &impl ConnectionTrait, keys: &MasterKeys) -> Result<ResealReport> {
    let mut report = ResealReport::default();
    // Each column with the associated data its values were sealed with.
    let row_id = |id: &str| id.to_owned();
    report.api_keys = reseal_column::<api_keys::Entity>(
        db,
        keys,
        api_keys::Column::Id,
        api_keys::Column::SealedToken,
        &row_id,
        &mut report,
    )
    .await?;
    report.webhook_subscriptions = reseal_column::<webhooks::Entity>(
        db,
        keys,
        webhooks::Column::Id,
        webhooks::Column::SealedSecrets,
        &row_id,
        &mut report,
    )
    .await?;
    for (column, kind) in
        [(connections::Column::SealedAccessToken, "access"), (connections::Column::SealedRefreshToken, "refresh")]
    {
        let associated = |id: &str| super::connections::associated(id, kind);
        report.oauth_tokens +=
            reseal_column::<connections::Entity>(db, keys, connections::Column::Id, column, &associated, &mut report)
                .await?;
    }
    Ok(report)
}

/// Re-seals one column of one table (`associated` gives a row's associated
/// data from its id); returns how many values it rewrote.
async fn reseal_column<E: EntityTrait>(
    db: &impl ConnectionTrait,
    keys: &MasterKeys,
    id_column: E::Column,
    sealed_column: E::Column,
    associated: &dyn Fn(&str) -> String,
    report: &mut ResealReport,
) -> Result<u64> {
    let current = format!("{}:", keys.current_id());
    let table = E::default().table_name().to_owned();
    let mut after = String::new();
    let mut resealed = 0;
    loop {
        let rows: Vec<(String, Option<String>)> = E::find()
            .select_only()
            .column(id_column)
            .column(sealed_column)
            .filter(id_column.gt(after.as_str()))
            .filter(sealed_column.is_not_null())
            .order_by_asc(id_column)
            .limit(PAGE)
            .into_tuple()
            .all(db)
            .await?;
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        for (id, sealed) in rows {
            let Some(sealed) = sealed else { continue };
            if sealed.starts_with(&current) {
                report.already_current += 1;
                continue;
            }
            let associated = associated(&id);
            let Ok(plain) = keys.open(&sealed, &associated) else {
                report.unreadable.push(format!("{table}:{id}"));
                continue;
            };
            let fresh = keys.seal(&plain, &associated)?;
            let swapped = E::update_many()
                .col_expr(sealed_column, Expr::val(fresh))
                .filter(id_column.eq(id.as_str()))
                .filter(sealed_column.eq(sealed.as_str()))
                .exec(db)
                .await?;
            resealed += swapped.rows_affected;
        }
    }
    Ok(resealed)
}
