//! Orgs as records: `orgs` (id, display name). Until now an org existed by
//! holding something; every org that holds keys, identities, roles,
//! webhook subscriptions or OAuth connections is registered here, named
//! by its id.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orgs {
    Table,
    Id,
    DisplayName,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let orgs = Table::create()
            .table(Orgs::Table)
            .col(string(Orgs::Id).primary_key())
            .col(string(Orgs::DisplayName))
            .col(timestamp_with_time_zone(Orgs::CreatedAt))
            .col(timestamp_with_time_zone(Orgs::UpdatedAt))
            .to_owned();
        manager.create_table(orgs).await?;
        manager
            .get_connection()
            .execute_unprepared(
                "INSERT INTO orgs (id, display_name, created_at, updated_at) \
                 SELECT org_id, org_id, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM ( \
                   SELECT org_id FROM api_keys UNION SELECT org_id FROM identities \
                   UNION SELECT org_id FROM roles UNION SELECT org_id FROM webhook_subscriptions \
                   UNION SELECT org_id FROM oauth_connections) AS held",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Orgs::Table).to_owned()).await
    }
}
