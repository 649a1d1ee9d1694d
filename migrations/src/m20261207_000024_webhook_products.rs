//! Webhooks as a product and the notices about keys' limits:
//! - `webhook_events.channels`, `webhook_subscriptions.channels`: the
//!   channels an event was published to and a subscription listens to
//!   (JSON arrays; NULL = none, and a subscription with none gets every
//!   channel);
//! - `webhook_subscriptions.sealed_options`: custom headers, a client
//!   certificate and key, a CA bundle (sealed like the signing secrets);
//!   `timeout_ms`: the endpoint's own request timeout;
//! - on `api_keys` and `identities`: `credits_low_alert` (`below:N` or
//!   `percent:P` of the refill), `credits_low_notice_for` (the refill period
//!   an `api_key.credits_low` notice was published for) and
//!   `rate_limited_notice_at` (start, in Unix milliseconds, of the window an
//!   `api_key.rate_limited` notice was published for).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookEvents {
    Table,
    Channels,
}

#[derive(DeriveIden)]
enum WebhookSubscriptions {
    Table,
    Channels,
    SealedOptions,
    TimeoutMs,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
}

#[derive(DeriveIden)]
enum Identities {
    Table,
}

#[derive(DeriveIden)]
enum Holder {
    CreditsLowAlert,
    CreditsLowNoticeFor,
    RateLimitedNoticeAt,
}

/// `(table, column)` pairs; SQLite adds one column per statement.
fn columns() -> Vec<(DynIden, ColumnDef)> {
    let mut columns = vec![
        (WebhookEvents::Table.into_iden(), ColumnDef::new(WebhookEvents::Channels).json_binary().null().to_owned()),
        (
            WebhookSubscriptions::Table.into_iden(),
            ColumnDef::new(WebhookSubscriptions::Channels).json_binary().null().to_owned(),
        ),
        (
            WebhookSubscriptions::Table.into_iden(),
            ColumnDef::new(WebhookSubscriptions::SealedOptions).text().null().to_owned(),
        ),
        (
            WebhookSubscriptions::Table.into_iden(),
            ColumnDef::new(WebhookSubscriptions::TimeoutMs).integer().null().to_owned(),
        ),
    ];
    for table in [ApiKeys::Table.into_iden(), Identities::Table.into_iden()] {
        columns.push((table.clone(), ColumnDef::new(Holder::CreditsLowAlert).string().null().to_owned()));
        columns.push((
            table.clone(),
            ColumnDef::new(Holder::CreditsLowNoticeFor).timestamp_with_time_zone().null().to_owned(),
        ));
        columns.push((table, ColumnDef::new(Holder::RateLimitedNoticeAt).big_integer().null().to_owned()));
    }
    columns
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, mut column) in columns() {
            manager.alter_table(Table::alter().table(table).add_column(&mut column).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in columns() {
            let name = column.get_column_name();
            manager.alter_table(Table::alter().table(table).drop_column(Alias::new(name)).to_owned()).await?;
        }
        Ok(())
    }
}
