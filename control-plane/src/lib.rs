//! Keyplane control plane: issues, verifies and revokes API keys, delivers
//! webhooks, records every change in a tamper-evident audit log, and serves
//! the admin gRPC API.
//!
//! [`run`] (`app/`) wires everything; `main.rs` only parses, binds and
//! waits for a signal. The operator's commands are below.

mod app;
pub mod availability;
pub mod background;
pub mod bootstrap;
pub mod config;
pub mod console;
pub mod crypto;
pub mod egress;
pub mod error;
pub mod grpc;
pub mod import_cli;
pub mod metrics;
pub mod oauth;
pub mod service;
pub mod store;
pub mod tls;
pub mod wakeups;

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

pub use app::run;
pub use config::Config;
use crypto::{SecretHasher, TokenFormat};
pub use error::{Error, Result};
use service::usage::ingest::{LocalUsage, UsageRecorder};
use service::verify::AbuseLimits;
use service::{CreditService, Crypto, KeyService, Verifier};

/// Sockets the control plane serves on, bound by the caller (port 0 in tests).
pub struct Listeners {
    /// gRPC API.
    pub grpc: TcpListener,
    /// Prometheus `/metrics`, if enabled.
    pub metrics: Option<TcpListener>,
    /// The web console, if enabled.
    pub console: Option<TcpListener>,
}

/// Opens the database named by `storage` with its migrations applied and a
/// key service over it, for the operator's commands.
async fn operator_services(
    storage: &config::StorageArgs,
    master_keys: crypto::MasterKeys,
    token_prefix: &str,
) -> Result<(DatabaseConnection, KeyService)> {
    let db = storage.connect().await?;
    store::migrate(&db).await?;
    let crypto = Arc::new(Crypto {
        tokens: TokenFormat::new(token_prefix.to_owned()),
        hasher: SecretHasher::new(crypto::HashingParams::default(), 1)?,
        master_keys: Arc::new(master_keys),
    });
    let metrics = Arc::new(metrics::Metrics::default());
    let limits =
        AbuseLimits { failures_per_key: 1, failure_window: Duration::from_secs(1), suspect_hashes_per_second: 1 };
    let verifier = Arc::new(Verifier::new(db.clone(), crypto.clone(), metrics.clone(), 1, limits));
    let recorder = UsageRecorder::new(db.clone(), metrics, wakeups::Wakeups::default());
    let usage = Arc::new(LocalUsage::new(Arc::new(recorder)));
    let credits =
        Arc::new(CreditService::new(db.clone(), wakeups::Wakeups::default(), config::DEFAULT_CREDIT_LEASE_TTL));
    let keys = KeyService::new(db.clone(), crypto, wakeups::Wakeups::default(), verifier, usage, credits);
    Ok((db, keys))
}

/// What `keyplane migrate` does before it reports applied and pending migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Apply,
    /// Change nothing.
    Status,
    /// Undo this many applied migrations, newest first.
    Rollback(u32),
}

/// `keyplane migrate`: applies pending migrations, rolls back the newest, or
/// only reports them.
pub async fn migrate(storage: &config::StorageArgs, action: MigrateAction) -> Result<(Vec<String>, Vec<String>)> {
    if !storage.is_postgres() {
        bootstrap::data_dir(&storage.data_dir)?;
    }
    let db = storage.connect().await?;
    match action {
        MigrateAction::Apply => store::migrate(&db).await?,
        MigrateAction::Status => {}
        MigrateAction::Rollback(count) => store::roll_back(&db, count).await?,
    }
    let report = (store::applied_migrations(&db).await?, store::pending_migrations(&db).await?);
    db.close().await?;
    Ok(report)
}

/// `keyplane create-admin-key`: creates a platform admin key (org
/// `keyplane`, scope `keyplane:admin`) straight in the database, audited with
/// actor `operator`, and returns its token (shown once by the caller).
pub async fn create_admin_key(
    storage: &config::StorageArgs,
    master_key_file: Option<&std::path::Path>,
    name: &str,
    token_prefix: &str,
) -> Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = match master_key_file {
        Some(path) => crypto::MasterKeys::load(path)?,
        None if storage.is_postgres() => {
            return Err(Error::Config("Postgres needs --master-key-file (or KEYPLANE_MASTER_KEY_FILE)".into()));
        }
        None => {
            bootstrap::data_dir(&storage.data_dir)?;
            crypto::MasterKeys::load(&storage.data_dir.join("master-key"))?
        }
    };
    let (db, keys) = operator_services(storage, keys, token_prefix).await?;
    let issued = keys.create_admin_key(name).await;
    db.close().await?;
    Ok(issued?.token)
}

/// `keyplane reseal`: re-encrypts every sealed value under the newest key in
/// `master_key_file` (default `<data-dir>/master-key`).
pub async fn reseal(
    storage: &config::StorageArgs,
    master_key_file: Option<&std::path::Path>,
) -> Result<service::reseal::ResealReport> {
    let path = master_key_file.map_or_else(|| storage.data_dir.join("master-key"), std::path::Path::to_path_buf);
    let keys = crypto::MasterKeys::load(&path)?;
    let db = storage.connect().await?;
    let report = service::reseal::reseal_all(&db, &keys).await;
    db.close().await?;
    report
}
