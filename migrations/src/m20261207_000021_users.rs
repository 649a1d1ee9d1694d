//! People who sign in to the console with the company's OpenID provider:
//! `users` (one per issuer and subject, with the rights their last sign-in's
//! claims mapped to) and `oidc_sign_ins` (a sign-in begun and not yet
//! finished: its nonce and PKCE verifier, found by the SHA-256 of its state).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Issuer,
    Subject,
    Email,
    Name,
    Rights,
    Disabled,
    CreatedAt,
    LastSignInAt,
}

#[derive(DeriveIden)]
enum OidcSignIns {
    Table,
    StateHash,
    Nonce,
    PkceVerifier,
    Next,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let users = Table::create()
            .table(Users::Table)
            .col(string(Users::Id).primary_key())
            .col(string(Users::Issuer))
            .col(string(Users::Subject))
            .col(string(Users::Email))
            .col(string(Users::Name))
            .col(text(Users::Rights))
            .col(boolean(Users::Disabled))
            .col(timestamp_with_time_zone(Users::CreatedAt))
            .col(timestamp_with_time_zone(Users::LastSignInAt))
            .to_owned();
        manager.create_table(users).await?;
        let subject = Index::create()
            .name("users_issuer_subject")
            .table(Users::Table)
            .col(Users::Issuer)
            .col(Users::Subject)
            .unique()
            .to_owned();
        manager.create_index(subject).await?;
        let sign_ins = Table::create()
            .table(OidcSignIns::Table)
            .col(string(OidcSignIns::StateHash).primary_key())
            .col(string(OidcSignIns::Nonce))
            .col(string(OidcSignIns::PkceVerifier))
            .col(string(OidcSignIns::Next))
            .col(timestamp_with_time_zone(OidcSignIns::ExpiresAt))
            .to_owned();
        manager.create_table(sign_ins).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(OidcSignIns::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(Users::Table).to_owned()).await
    }
}
