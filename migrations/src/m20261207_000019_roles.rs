//! Roles and permissions: `roles` (named sets of permissions, a JSON array),
//! `role_grants` (which key or identity holds which role; the holder id is
//! a key id or an `idn_` identity id), `identities.permissions` (an
//! identity's own permissions, a JSON array; NULL = none) and `holds_roles`
//! on `api_keys` and `identities` (false: no grant names it, so a
//! verification need not look for any).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Roles {
    Table,
    Id,
    OrgId,
    Name,
    Description,
    Permissions,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RoleGrants {
    Table,
    OrgId,
    RoleId,
    HolderId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Identities {
    Table,
    Permissions,
    HoldsRoles,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    HoldsRoles,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let roles = Table::create()
            .table(Roles::Table)
            .col(string(Roles::Id).primary_key())
            .col(string(Roles::OrgId))
            .col(string(Roles::Name))
            .col(string(Roles::Description))
            .col(json_binary(Roles::Permissions))
            .col(timestamp_with_time_zone(Roles::CreatedAt))
            .col(timestamp_with_time_zone(Roles::UpdatedAt))
            .to_owned();
        manager.create_table(roles).await?;
        let names = Index::create()
            .name("roles_org_name")
            .table(Roles::Table)
            .col(Roles::OrgId)
            .col(Roles::Name)
            .unique()
            .to_owned();
        manager.create_index(names).await?;
        let grants = Table::create()
            .table(RoleGrants::Table)
            .col(string(RoleGrants::OrgId))
            .col(string(RoleGrants::RoleId))
            .col(string(RoleGrants::HolderId))
            .col(timestamp_with_time_zone(RoleGrants::CreatedAt))
            .primary_key(Index::create().col(RoleGrants::RoleId).col(RoleGrants::HolderId))
            .to_owned();
        manager.create_table(grants).await?;
        let by_holder = Index::create()
            .name("role_grants_org_holder")
            .table(RoleGrants::Table)
            .col(RoleGrants::OrgId)
            .col(RoleGrants::HolderId)
            .to_owned();
        manager.create_index(by_holder).await?;
        // SQLite adds one column per statement.
        let columns =
            [json_binary_null(Identities::Permissions), boolean(Identities::HoldsRoles).default(false).to_owned()];
        for column in columns {
            manager.alter_table(Table::alter().table(Identities::Table).add_column(column).to_owned()).await?;
        }
        let column = boolean(ApiKeys::HoldsRoles).default(false).to_owned();
        manager.alter_table(Table::alter().table(ApiKeys::Table).add_column(column).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ApiKeys::HoldsRoles;
        manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(column).to_owned()).await?;
        for column in [Identities::Permissions, Identities::HoldsRoles] {
            manager.alter_table(Table::alter().table(Identities::Table).drop_column(column).to_owned()).await?;
        }
        manager.drop_table(Table::drop().table(RoleGrants::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Roles::Table).to_owned()).await
    }
}
