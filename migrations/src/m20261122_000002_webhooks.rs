//! Webhook subscriptions, published events (the outbox), deliveries and their attempts.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum WebhookSubscriptions {
    Table,
    Id,
    OrgId,
    Url,
    EventTypes,
    Description,
    Status,
    DisabledReason,
    RateLimitPerSecond,
    SealedSecrets,
    FailingSince,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookEvents {
    Table,
    Id,
    OrgId,
    EventType,
    Payload,
    IdempotencyKey,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Id,
    OrgId,
    SubscriptionId,
    EventId,
    EventType,
    Status,
    AttemptCount,
    NextAttemptAt,
    LastStatusCode,
    LastError,
    CreatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    DeliveryId,
    OrgId,
    Number,
    StartedAt,
    StatusCode,
    LatencyMicros,
    Error,
    ResponseExcerpt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(WebhookSubscriptions::Table)
                    .col(string(WebhookSubscriptions::Id).primary_key())
                    .col(string(WebhookSubscriptions::OrgId))
                    .col(text(WebhookSubscriptions::Url))
                    .col(json_binary(WebhookSubscriptions::EventTypes))
                    .col(text(WebhookSubscriptions::Description))
                    .col(string(WebhookSubscriptions::Status))
                    .col(text_null(WebhookSubscriptions::DisabledReason))
                    .col(integer(WebhookSubscriptions::RateLimitPerSecond))
                    .col(text(WebhookSubscriptions::SealedSecrets))
                    .col(timestamp_with_time_zone_null(WebhookSubscriptions::FailingSince))
                    .col(timestamp_with_time_zone(WebhookSubscriptions::CreatedAt))
                    .col(timestamp_with_time_zone(WebhookSubscriptions::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_subscriptions_org_id_id")
                    .table(WebhookSubscriptions::Table)
                    .col(WebhookSubscriptions::OrgId)
                    .col(WebhookSubscriptions::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookEvents::Table)
                    .col(string(WebhookEvents::Id).primary_key())
                    .col(string(WebhookEvents::OrgId))
                    .col(string(WebhookEvents::EventType))
                    .col(text(WebhookEvents::Payload))
                    .col(string_null(WebhookEvents::IdempotencyKey))
                    .col(timestamp_with_time_zone(WebhookEvents::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // NULL keys are distinct in a unique index on both databases.
        manager
            .create_index(
                Index::create()
                    .name("webhook_events_org_id_idempotency_key")
                    .table(WebhookEvents::Table)
                    .col(WebhookEvents::OrgId)
                    .col(WebhookEvents::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .col(string(WebhookDeliveries::Id).primary_key())
                    .col(string(WebhookDeliveries::OrgId))
                    .col(string(WebhookDeliveries::SubscriptionId))
                    .col(string(WebhookDeliveries::EventId))
                    .col(string(WebhookDeliveries::EventType))
                    .col(string(WebhookDeliveries::Status))
                    .col(integer(WebhookDeliveries::AttemptCount))
                    .col(timestamp_with_time_zone(WebhookDeliveries::NextAttemptAt))
                    .col(integer_null(WebhookDeliveries::LastStatusCode))
                    .col(text_null(WebhookDeliveries::LastError))
                    .col(timestamp_with_time_zone(WebhookDeliveries::CreatedAt))
                    .col(timestamp_with_time_zone_null(WebhookDeliveries::FinishedAt))
                    .to_owned(),
            )
            .await?;
        let connection = manager.get_connection();
        for statement in [
            // Listing (newest first) and its filters.
            "CREATE INDEX webhook_deliveries_org_id_id ON webhook_deliveries (org_id, id)",
            "CREATE INDEX webhook_deliveries_org_id_subscription_id_id ON webhook_deliveries (org_id, subscription_id, id)",
            "CREATE INDEX webhook_deliveries_org_id_status_id ON webhook_deliveries (org_id, status, id)",
            // The dispatcher's claim: only pending rows, by due time.
            "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending'",
            // Retention: finished deliveries by age.
            "CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status = 'succeeded'",
        ] {
            connection.execute_unprepared(statement).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(WebhookAttempts::Table)
                    .col(string(WebhookAttempts::Id).primary_key())
                    .col(string(WebhookAttempts::DeliveryId))
                    .col(string(WebhookAttempts::OrgId))
                    .col(integer(WebhookAttempts::Number))
                    .col(timestamp_with_time_zone(WebhookAttempts::StartedAt))
                    .col(integer_null(WebhookAttempts::StatusCode))
                    .col(big_integer(WebhookAttempts::LatencyMicros))
                    .col(text_null(WebhookAttempts::Error))
                    .col(text_null(WebhookAttempts::ResponseExcerpt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_attempts_delivery_id_number")
                    .table(WebhookAttempts::Table)
                    .col(WebhookAttempts::DeliveryId)
                    .col(WebhookAttempts::Number)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            WebhookAttempts::Table.into_iden(),
            WebhookDeliveries::Table.into_iden(),
            WebhookEvents::Table.into_iden(),
            WebhookSubscriptions::Table.into_iden(),
        ] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
