//! Keyplane's database schema as sea-orm migrations; the same migrations run on
//! Postgres and SQLite.

pub use m20261202_000007_usage_rollups::LATENCY_BUCKETS;
pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod m20261122_000001_api_keys;
mod m20261122_000002_webhooks;
mod m20261122_000003_oauth_connections;
mod m20261122_000004_api_key_name_statistics;
mod m20261122_000005_binary_id_order;
mod m20261122_000006_delivery_event_index;
mod m20261202_000007_usage_rollups;
mod m20261202_000008_console_sessions;
mod m20261202_000009_api_key_status_index;
mod m20261202_000010_api_key_end_indexes;
mod m20261202_000011_api_key_allowed_cidrs;
mod m20261202_000012_credits;
mod m20261202_000013_global_rate_limits;
mod m20261202_000014_identities;
mod m20261203_000015_rollup_read_indexes;
mod m20261206_000016_console_shown_once;
mod m20261207_000017_signature_schemes;
mod m20261207_000018_imported_keys;
mod m20261207_000019_roles;
mod m20261207_000020_orgs;
mod m20261207_000021_users;
mod m20261207_000022_event_types;
mod m20261207_000023_key_expiring_notices;
mod m20261207_000024_webhook_products;
mod m20261207_000025_legacy_hash_index;

/// Every Keyplane migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_api_keys::Migration),
            Box::new(m20261122_000002_webhooks::Migration),
            Box::new(m20261122_000003_oauth_connections::Migration),
            Box::new(m20261122_000004_api_key_name_statistics::Migration),
            Box::new(m20261122_000005_binary_id_order::Migration),
            Box::new(m20261122_000006_delivery_event_index::Migration),
            Box::new(m20261202_000007_usage_rollups::Migration),
            Box::new(m20261202_000008_console_sessions::Migration),
            Box::new(m20261202_000009_api_key_status_index::Migration),
            Box::new(m20261202_000010_api_key_end_indexes::Migration),
            Box::new(m20261202_000011_api_key_allowed_cidrs::Migration),
            Box::new(m20261202_000012_credits::Migration),
            Box::new(m20261202_000013_global_rate_limits::Migration),
            Box::new(m20261202_000014_identities::Migration),
            Box::new(m20261203_000015_rollup_read_indexes::Migration),
            Box::new(m20261206_000016_console_shown_once::Migration),
            Box::new(m20261207_000017_signature_schemes::Migration),
            Box::new(m20261207_000018_imported_keys::Migration),
            Box::new(m20261207_000019_roles::Migration),
            Box::new(m20261207_000020_orgs::Migration),
            Box::new(m20261207_000021_users::Migration),
            Box::new(m20261207_000022_event_types::Migration),
            Box::new(m20261207_000023_key_expiring_notices::Migration),
            Box::new(m20261207_000024_webhook_products::Migration),
            Box::new(m20261207_000025_legacy_hash_index::Migration),
        ]
    }
}
