//! The event catalog: `event_types`, an org's event types with their
//! description, group, JSON Schema versions and examples; and
//! `orgs.require_cataloged_events`, whether the org publishes only those.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EventTypes {
    Table,
    OrgId,
    Name,
    Description,
    GroupName,
    Schemas,
    Examples,
    Deprecated,
    Archived,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Orgs {
    Table,
    RequireCatalogedEvents,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = Table::create()
            .table(EventTypes::Table)
            .col(string(EventTypes::OrgId))
            .col(string(EventTypes::Name))
            .col(text(EventTypes::Description))
            .col(string(EventTypes::GroupName))
            .col(text(EventTypes::Schemas))
            .col(text(EventTypes::Examples))
            .col(boolean(EventTypes::Deprecated))
            .col(boolean(EventTypes::Archived))
            .col(timestamp_with_time_zone(EventTypes::CreatedAt))
            .col(timestamp_with_time_zone(EventTypes::UpdatedAt))
            .primary_key(Index::create().col(EventTypes::OrgId).col(EventTypes::Name))
            .to_owned();
        manager.create_table(table).await?;
        let policy = Table::alter()
            .table(Orgs::Table)
            .add_column(boolean(Orgs::RequireCatalogedEvents).default(false))
            .to_owned();
        manager.alter_table(policy).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let policy = Table::alter().table(Orgs::Table).drop_column(Orgs::RequireCatalogedEvents).to_owned();
        manager.alter_table(policy).await?;
        manager.drop_table(Table::drop().table(EventTypes::Table).to_owned()).await
    }
}
