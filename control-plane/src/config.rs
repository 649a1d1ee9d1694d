//! Command line and environment (`KEYPLANE_*`), parsed in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::crypto::HashingParams;

/// Keyplane control plane: API keys, audit log and admin gRPC API.
#[derive(Debug, Parser)]
#[command(name = "keyplane", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "KEYPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (applies pending migrations first).
    Serve(Box<Config>),
    /// Apply pending migrations, or list them with --status, without serving.
    Migrate {
        /// Where the data lives.
        #[command(flatten)]
        storage: StorageArgs,
        /// Only print applied and pending migrations.
        #[arg(long)]
        status: bool,
    },
    /// Print a new master-key file line (`<id>=<base64 key>`) to stdout.
    GenerateMasterKey {
        /// Id of the new key; ids must be unique within the file.
        #[arg(long, default_value = "k1")]
        id: String,
    },
}

/// Where data and secrets live.
#[derive(Clone, Debug, Args)]
pub struct StorageArgs {
    /// Directory for the embedded SQLite database and generated secrets.
    #[arg(long, env = "KEYPLANE_DATA_DIR", default_value = "./keyplane-data")]
    pub data_dir: PathBuf,
    /// Database URL: `postgres://user:pass@host/db`, or `sqlite://path`.
    /// Default: SQLite at `<data-dir>/keyplane.db`.
    #[arg(long, env = "KEYPLANE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StorageArgs {
    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("keyplane.db").display()))
    }

    /// Whether the database is Postgres.
    pub fn is_postgres(&self) -> bool {
        let url = self.database_url();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }
}

/// Configuration of `keyplane serve`.
#[derive(Clone, Debug, Args)]
pub struct Config {
    /// Where data lives.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// gRPC listen address.
    #[arg(long, env = "KEYPLANE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address (off when unset).
    #[arg(long, env = "KEYPLANE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Root token file; generated (0600) when missing. Default: `<data-dir>/root-token`.
    #[arg(long, env = "KEYPLANE_ROOT_TOKEN_FILE")]
    pub root_token_file: Option<PathBuf>,
    /// Master-key file (`<id>=<base64 32 bytes>` lines, newest last). Required
    /// on Postgres; the SQLite default generates `<data-dir>/master-key`.
    #[arg(long, env = "KEYPLANE_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Prefix of issued tokens (`<prefix>_live_…`): 1 to 16 lowercase letters or digits.
    #[arg(long, env = "KEYPLANE_TOKEN_PREFIX", default_value = "kp", value_parser = parse_prefix)]
    pub token_prefix: String,
    /// Argon2id memory cost in KiB.
    #[arg(long, env = "KEYPLANE_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    #[arg(long, env = "KEYPLANE_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// Argon2id parallelism (lanes).
    #[arg(long, env = "KEYPLANE_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Heartbeat period of sidecar Watch streams.
    #[arg(long, env = "KEYPLANE_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// How often the key-event log is polled for other replicas' commits.
    #[arg(long, env = "KEYPLANE_EVENT_POLL_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub event_poll_interval: Duration,
    /// How long key events are kept; sidecars further behind get a Reset.
    #[arg(long, env = "KEYPLANE_KEY_EVENT_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub key_event_retention: Duration,
    /// Concurrent argon2 computations (default: CPU count).
    #[arg(long, env = "KEYPLANE_HASH_WORKERS")]
    pub hash_workers: Option<usize>,
}

fn parse_prefix(value: &str) -> Result<String, String> {
    let ok = (1..=16).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(value.to_owned()) } else { Err("use 1 to 16 lowercase letters or digits".into()) }
}

impl Config {
    /// A configuration for tests: SQLite in `data_dir`, cheap argon2.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            storage: StorageArgs { data_dir: data_dir.into(), database_url: None },
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            root_token_file: None,
            master_key_file: None,
            token_prefix: "kp".into(),
            argon2_memory_kib: 256,
            argon2_iterations: 1,
            argon2_parallelism: 1,
            hash_workers: None,
            heartbeat_interval: Duration::from_millis(200),
            event_poll_interval: Duration::from_millis(20),
            key_event_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Argon2id parameters.
    pub fn hashing_params(&self) -> HashingParams {
        HashingParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// Root token file path.
    pub fn root_token_path(&self) -> PathBuf {
        self.root_token_file.clone().unwrap_or_else(|| self.storage.data_dir.join("root-token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
