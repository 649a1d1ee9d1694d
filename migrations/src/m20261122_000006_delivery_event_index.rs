//! An index on `webhook_deliveries.event_id`: retention deletes events that
//! no delivery refers to, and that anti-join must not scan every delivery.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    EventId,
}

const NAME: &str = "webhook_deliveries_event_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create().name(NAME).table(WebhookDeliveries::Table).col(WebhookDeliveries::EventId).to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name(NAME).table(WebhookDeliveries::Table).to_owned()).await
    }
}
