//! `console_sessions.shown_once`: a secret the console shows once (a new
//! token, a signing secret), sealed with the master key, kept between the
//! form's POST and the GET it redirects to, and cleared by that GET, so a
//! reload neither repeats the action nor shows the secret again.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ConsoleSessions {
    Table,
    ShownOnce,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(ConsoleSessions::ShownOnce).text().null().to_owned();
        manager.alter_table(Table::alter().table(ConsoleSessions::Table).add_column(column).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let table = Table::alter().table(ConsoleSessions::Table).drop_column(ConsoleSessions::ShownOnce).to_owned();
        manager.alter_table(table).await
    }
}
