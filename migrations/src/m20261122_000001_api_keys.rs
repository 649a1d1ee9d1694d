//! API keys, the key-event log that sidecars follow, and the audit log.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    OrgId,
    Name,
    Description,
    Environment,
    Scopes,
    Status,
    SecretHash,
    Start,
    ExpiresAt,
    RateLimitRequests,
    RateLimitWindowMs,
    Metadata,
    SealedToken,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
    RevokedAt,
    RevokedBy,
    RevocationReason,
    RotatedFrom,
    LastUsedAt,
    UsageCount,
}

#[derive(DeriveIden)]
enum KeyEvents {
    Table,
    Seq,
    KeyId,
    OrgId,
    Kind,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    OrgId,
    Seq,
    ActorType,
    ActorId,
    Action,
    TargetType,
    TargetId,
    RequestId,
    PeerAddress,
    UserAgent,
    Metadata,
    CreatedAt,
    PrevHash,
    Hash,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(string(ApiKeys::Id).primary_key())
                    .col(string(ApiKeys::OrgId))
                    .col(string(ApiKeys::Name))
                    .col(text(ApiKeys::Description))
                    .col(string(ApiKeys::Environment))
                    .col(json_binary(ApiKeys::Scopes))
                    .col(string(ApiKeys::Status))
                    .col(string(ApiKeys::SecretHash))
                    .col(string(ApiKeys::Start))
                    .col(timestamp_with_time_zone_null(ApiKeys::ExpiresAt))
                    .col(integer_null(ApiKeys::RateLimitRequests))
                    .col(big_integer_null(ApiKeys::RateLimitWindowMs))
                    .col(json_binary_null(ApiKeys::Metadata))
                    .col(text_null(ApiKeys::SealedToken))
                    .col(string(ApiKeys::CreatedBy))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone(ApiKeys::UpdatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .col(string_null(ApiKeys::RevokedBy))
                    .col(text_null(ApiKeys::RevocationReason))
                    .col(string_null(ApiKeys::RotatedFrom))
                    .col(timestamp_with_time_zone_null(ApiKeys::LastUsedAt))
                    .col(big_integer(ApiKeys::UsageCount).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_org_id_id")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::OrgId)
                    .col(ApiKeys::Id)
                    .to_owned(),
            )
            .await?;
        // Name-prefix filters (`LIKE 'prefix%'`): Postgres needs
        // text_pattern_ops to use a btree for LIKE under any collation;
        // SQLite uses a plain index once case_sensitive_like is on.
        let name_index = match manager.get_database_backend() {
            sea_orm_migration::sea_orm::DbBackend::Postgres => {
                "CREATE INDEX api_keys_org_id_name ON api_keys (org_id, name text_pattern_ops)"
            }
            _ => "CREATE INDEX api_keys_org_id_name ON api_keys (org_id, name)",
        };
        manager.get_connection().execute_unprepared(name_index).await?;

        manager
            .create_table(
                Table::create()
                    .table(KeyEvents::Table)
                    .col(big_integer(KeyEvents::Seq).primary_key())
                    .col(string(KeyEvents::KeyId))
                    .col(string(KeyEvents::OrgId))
                    .col(string(KeyEvents::Kind))
                    .col(timestamp_with_time_zone(KeyEvents::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(string(AuditEvents::Id).primary_key())
                    .col(string(AuditEvents::OrgId))
                    .col(big_integer(AuditEvents::Seq))
                    .col(string(AuditEvents::ActorType))
                    .col(string(AuditEvents::ActorId))
                    .col(string(AuditEvents::Action))
                    .col(string(AuditEvents::TargetType))
                    .col(string(AuditEvents::TargetId))
                    .col(string(AuditEvents::RequestId))
                    .col(string(AuditEvents::PeerAddress))
                    .col(text(AuditEvents::UserAgent))
                    .col(json_binary(AuditEvents::Metadata))
                    .col(timestamp_with_time_zone(AuditEvents::CreatedAt))
                    .col(string(AuditEvents::PrevHash))
                    .col(string(AuditEvents::Hash))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_org_id_seq")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::OrgId)
                    .col(AuditEvents::Seq)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [AuditEvents::Table.into_iden(), KeyEvents::Table.into_iden(), ApiKeys::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
