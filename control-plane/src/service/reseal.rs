//! `keyplane reseal`: re-encrypts every sealed value under the newest master
//! key, online. Each value is replaced only while it is still what was read,
//! so a concurrent change (a rotation, a refresh) is never overwritten; such
//! a value is simply already current.

use sea_orm::ConnectionTrait;

use crate::crypto::MasterKeys;
use crate::error::Result;
use crate::store::sealed::SealedColumn;

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
    /// Values that could not be opened (`table:id`): tampered, or
    /// sealed under a key missing from the file.
    pub unreadable: Vec<String>,
}

/// Re-seals every sealed value not yet under the newest key.
pub async fn reseal_all(db: &impl ConnectionTrait, keys: &MasterKeys) -> Result<ResealReport> {
    let mut report = ResealReport::default();
    for column in SealedColumn::ALL {
        let resealed = reseal_column(db, keys, column, &mut report).await?;
        match column {
            SealedColumn::ApiKeyToken => report.api_keys += resealed,
            SealedColumn::WebhookSecrets | SealedColumn::WebhookOptions => report.webhook_subscriptions += resealed,
            SealedColumn::ConnectionAccessToken | SealedColumn::ConnectionRefreshToken => {
                report.oauth_tokens += resealed;
            }
        }
    }
    Ok(report)
}

/// The associated data a value of `column` in row `id` was sealed with.
fn associated_data(column: SealedColumn, id: &str) -> String {
    match column {
        SealedColumn::ApiKeyToken | SealedColumn::WebhookSecrets => id.to_owned(),
        SealedColumn::WebhookOptions => crate::service::webhooks::endpoints::associated(id),
        SealedColumn::ConnectionAccessToken => super::connections::associated(id, "access"),
        SealedColumn::ConnectionRefreshToken => super::connections::associated(id, "refresh"),
    }
}

/// Re-seals one column; returns how many values it rewrote.
async fn reseal_column(
    db: &impl ConnectionTrait,
    keys: &MasterKeys,
    column: SealedColumn,
    report: &mut ResealReport,
) -> Result<u64> {
    let current = format!("{}:", keys.current_id());
    let mut after = String::new();
    let mut resealed = 0;
    loop {
        let rows = column.page(db, &after, PAGE).await?;
        let Some((last, _)) = rows.last() else { break };
        after = last.clone();
        for (id, sealed) in rows {
            if sealed.starts_with(&current) {
                report.already_current += 1;
                continue;
            }
            let associated = associated_data(column, &id);
            let Ok(plain) = keys.open(&sealed, &associated) else {
                report.unreadable.push(format!("{}:{id}", column.table()));
                continue;
            };
            if column.replace(db, &id, &sealed, keys.seal(&plain, &associated)?).await? {
                resealed += 1;
            }
        }
    }
    Ok(resealed)
}
