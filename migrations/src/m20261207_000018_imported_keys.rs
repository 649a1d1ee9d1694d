//! Keys brought from another system: `api_keys.hash_format` (how
//! `secret_hash` was made; NULL for Keyplane's own argon2id of the token's
//! secret part), `lookup` (what finds the key from a token that is not in
//! Keyplane's format: `sha256:<hex>` of the token, or the clear start the
//! old system kept), `import_source_id` (the old system's id, unique per
//! org, which makes an import idempotent) and `upgrade_on_use`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{boolean, string_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    OrgId,
    HashFormat,
    Lookup,
    ImportSourceId,
    UpgradeOnUse,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per statement.
        let columns = [
            string_null(ApiKeys::HashFormat),
            string_null(ApiKeys::Lookup),
            string_null(ApiKeys::ImportSourceId),
            boolean(ApiKeys::UpgradeOnUse).default(false).to_owned(),
        ];
        for column in columns {
            manager.alter_table(Table::alter().table(ApiKeys::Table).add_column(column).to_owned()).await?;
        }
        let lookups = Index::create().name("api_keys_lookup").table(ApiKeys::Table).col(ApiKeys::Lookup).to_owned();
        manager.create_index(lookups).await?;
        let sources = Index::create()
            .name("api_keys_org_import_source")
            .table(ApiKeys::Table)
            .col(ApiKeys::OrgId)
            .col(ApiKeys::ImportSourceId)
            .unique()
            .to_owned();
        manager.create_index(sources).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in ["api_keys_lookup", "api_keys_org_import_source"] {
            manager.drop_index(Index::drop().name(index).table(ApiKeys::Table).to_owned()).await?;
        }
        for column in [ApiKeys::HashFormat, ApiKeys::Lookup, ApiKeys::ImportSourceId, ApiKeys::UpgradeOnUse] {
            manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
