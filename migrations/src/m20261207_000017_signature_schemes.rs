//! `webhook_subscriptions.signature_scheme`: how a subscription's
//! deliveries are signed (JSON; null means Standard Webhooks only).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookSubscriptions {
    Table,
    SignatureScheme,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(WebhookSubscriptions::SignatureScheme).json_binary().null().to_owned();
        manager.alter_table(Table::alter().table(WebhookSubscriptions::Table).add_column(column).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = Table::alter()
            .table(WebhookSubscriptions::Table)
            .drop_column(WebhookSubscriptions::SignatureScheme)
            .to_owned();
        manager.alter_table(table).await
    }
}
