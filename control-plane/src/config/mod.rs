//! Command line and environment (`KEYPLANE_*`), parsed in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::crypto::HashingParams;
use crate::egress::EgressPolicy;
use crate::service::admission::AdmissionLimits;
use crate::service::verify::AbuseLimits;

pub use crate::service::webhooks::dispatch::RetrySchedule;

mod groups;

pub use groups::{AbuseArgs, ConsoleArgs, ConsoleListen, EgressArgs, TlsArgs, UsageArgs, WebhookArgs};

/// The default of `--credit-lease-ttl`.
pub const DEFAULT_CREDIT_LEASE_TTL: Duration = Duration::from_secs(30);

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
    /// Apply pending migrations (list them with --status, undo the newest
    /// with --rollback N) without serving.
    Migrate {
        /// Where the data lives.
        #[command(flatten)]
        storage: StorageArgs,
        /// Only print applied and pending migrations.
        #[arg(long)]
        status: bool,
        /// Undo the last N applied migrations, newest first, dropping what
        /// they created (data included): for going back to an older release.
        #[arg(long, value_name = "N", conflicts_with = "status", value_parser = clap::value_parser!(u32).range(1..))]
        rollback: Option<u32>,
    },
    /// Re-encrypt every sealed value under the newest master key (safe
    /// while `serve` runs, once every server has the new key file).
    Reseal {
        /// Where the data lives.
        #[command(flatten)]
        storage: StorageArgs,
        /// Master-key file. Default: `<data-dir>/master-key`.
        #[arg(long, env = "KEYPLANE_MASTER_KEY_FILE")]
        master_key_file: Option<PathBuf>,
    },
    /// Create a platform admin key (org `keyplane`, scope `keyplane:admin`)
    /// directly in the database and print its token once: the production
    /// bootstrap when no root token is configured. Audited (actor `operator`).
    CreateAdminKey {
        /// Where the data lives.
        #[command(flatten)]
        storage: StorageArgs,
        /// Master-key file (needed to open the database's sealed values on Postgres).
        #[arg(long, env = "KEYPLANE_MASTER_KEY_FILE")]
        master_key_file: Option<PathBuf>,
        /// Name of the new key.
        #[arg(long, default_value = "bootstrap admin")]
        name: String,
        /// Prefix of issued tokens, as the server is configured.
        #[arg(long, env = "KEYPLANE_TOKEN_PREFIX", default_value = "kp", value_parser = parse_prefix)]
        token_prefix: String,
    },
    /// Bring data from another system through a running Keyplane (docs/migrating.md
    /// "Migrating to Keyplane").
    #[command(subcommand)]
    Import(crate::import_cli::ImportCommand),
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
    /// Postgres: longest wait for a pooled connection when every one is busy
    /// (a burst), before the call fails with UNAVAILABLE. A database that is
    /// gone is detected sooner, by the probe (--database-probe-timeout).
    #[arg(long, env = "KEYPLANE_DATABASE_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_acquire_timeout: Duration,
}

impl StorageArgs {
    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("keyplane.db").display()))
    }

    /// Opens the database these arguments name.
    pub async fn connect(&self) -> crate::Result<sea_orm::DatabaseConnection> {
        crate::store::connect(&self.database_url(), self.database_acquire_timeout).await
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
    /// Postgres: a probe on its own connection pings the database every
    /// 250ms; no answer within this long and every API call answers
    /// UNAVAILABLE at once (health NOT_SERVING) until it answers again.
    #[arg(long, env = "KEYPLANE_DATABASE_PROBE_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub database_probe_timeout: Duration,
    /// Prometheus `/metrics` listen address (off when unset).
    #[arg(long, env = "KEYPLANE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Root token file (break-glass). SQLite: default `<data-dir>/root-token`,
    /// generated (0600) when missing. Postgres: only when given, and the
    /// file must exist, so every replica accepts the same token; without it
    /// there is no root token (bootstrap with `keyplane create-admin-key`).
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
    /// How often keys past their expiry are marked `expired` (a key event
    /// tells sidecars at once; checks refuse them before that too).
    #[arg(long, env = "KEYPLANE_EXPIRY_SWEEP_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub expiry_sweep_interval: Duration,
    /// How long a block of credits leased by a sidecar lasts; unspent
    /// credits not given back by then count as spent.
    #[arg(long, env = "KEYPLANE_CREDIT_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub credit_lease_ttl: Duration,
    /// Publish `api_key.expiring` this long before a key expires (once per
    /// expiry, by the expiry sweep); none when unset.
    #[arg(long, env = "KEYPLANE_KEY_EXPIRING_NOTICE", value_parser = humantime::parse_duration)]
    pub key_expiring_notice: Option<Duration>,
    /// Delete keys that expired or were revoked longer ago than this
    /// (audited, actor `system`); kept for ever when unset.
    #[arg(long, env = "KEYPLANE_DELETE_EXPIRED_KEYS_AFTER", value_parser = humantime::parse_duration)]
    pub delete_expired_keys_after: Option<Duration>,
    /// Concurrent argon2 computations (default: CPU count).
    #[arg(long, env = "KEYPLANE_HASH_WORKERS")]
    pub hash_workers: Option<usize>,
    /// OAuth providers file (TOML, `[providers.<name>]` tables); none when unset.
    #[arg(long, env = "KEYPLANE_OAUTH_PROVIDERS")]
    pub oauth_providers: Option<PathBuf>,
    /// Timeout of one call to an OAuth provider.
    #[arg(long, env = "KEYPLANE_OAUTH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub oauth_timeout: Duration,
    /// Bounds on argon2 work for wrong secrets.
    #[command(flatten)]
    pub abuse: AbuseArgs,
    /// TLS on the gRPC listener.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Outbound HTTP policy (webhooks, OAuth providers).
    #[command(flatten)]
    pub egress: EgressArgs,
    /// Webhook delivery.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// Usage analytics.
    #[command(flatten)]
    pub usage: UsageArgs,
    /// The web console.
    #[command(flatten)]
    pub console: ConsoleArgs,
}

fn parse_prefix(value: &str) -> Result<String, String> {
    let ok = (1..=16).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(value.to_owned()) } else { Err("use 1 to 16 lowercase letters or digits".into()) }
}

impl Config {
    /// A configuration for tests: SQLite in `data_dir`, cheap argon2.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            storage: StorageArgs {
                data_dir: data_dir.into(),
                database_url: None,
                database_acquire_timeout: Duration::from_secs(5),
            },
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_probe_timeout: Duration::from_millis(500),
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
            expiry_sweep_interval: Duration::from_millis(100),
            credit_lease_ttl: DEFAULT_CREDIT_LEASE_TTL,
            delete_expired_keys_after: None,
            key_expiring_notice: None,
            oauth_providers: None,
            oauth_timeout: Duration::from_secs(10),
            abuse: AbuseArgs {
                failures_per_key: 10,
                failure_window: Duration::from_secs(60),
                suspect_hashes_per_second: 20,
                admin_requests_per_second: 1000,
                auth_failures_per_minute: 20,
                auth_failure_backoff: Duration::from_secs(60),
            },
            tls: TlsArgs { reload_interval: Duration::from_millis(100), ..TlsArgs::default() },
            egress: EgressArgs::default(),
            webhooks: WebhookArgs { poll_interval: Duration::from_millis(100), ..WebhookArgs::default() },
            usage: UsageArgs { flush_interval: Duration::from_millis(100), ..UsageArgs::default() },
            console: ConsoleArgs::default(),
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

    /// Root token file path: the one given, or on SQLite the generated default.
    pub fn root_token_path(&self) -> Option<PathBuf> {
        match &self.root_token_file {
            Some(path) => Some(path.clone()),
            None if self.storage.is_postgres() => None,
            None => Some(self.storage.data_dir.join("root-token")),
        }
    }

    /// Checks settings that depend on each other; a message names the flags.
    pub fn validate(&self) -> crate::Result<()> {
        let webhooks = &self.webhooks;
        if webhooks.lease <= webhooks.timeout {
            return Err(crate::Error::Config(format!(
                "--webhook-lease ({}) must be longer than --webhook-timeout ({}), or a slow request could be sent twice at once",
                humantime::format_duration(webhooks.lease),
                humantime::format_duration(webhooks.timeout)
            )));
        }
        if webhooks.concurrency == 0 || webhooks.endpoint_concurrency == 0 {
            return Err(crate::Error::Config(
                "--webhook-concurrency and --webhook-endpoint-concurrency must be at least 1".into(),
            ));
        }
        let usage = &self.usage;
        let at_least = |value: Duration, minimum: Duration, flag: &str| {
            if value < minimum {
                Err(crate::Error::Config(format!(
                    "{flag} ({}) must be at least {}",
                    humantime::format_duration(value),
                    humantime::format_duration(minimum)
                )))
            } else {
                Ok(())
            }
        };
        at_least(usage.minute_retention, Duration::from_secs(3600), "--usage-minute-retention")?;
        at_least(usage.hour_retention, Duration::from_secs(2 * 86_400), "--usage-hour-retention")?;
        at_least(usage.day_retention, Duration::from_secs(14 * 86_400), "--usage-day-retention")?;
        at_least(usage.report_dedup_window, Duration::from_secs(600), "--usage-report-dedup-window")?;
        at_least(self.console.session_idle, Duration::from_secs(1), "--console-session-idle")?;
        at_least(self.console.session_lifetime, self.console.session_idle, "--console-session-lifetime")?;
        if self.event_poll_interval >= self.heartbeat_interval {
            return Err(crate::Error::Config(format!(
                "--event-poll-interval ({}) must be shorter than --heartbeat-interval ({})",
                humantime::format_duration(self.event_poll_interval),
                humantime::format_duration(self.heartbeat_interval)
            )));
        }
        if self.abuse.failures_per_key == 0 || self.abuse.suspect_hashes_per_second == 0 {
            return Err(crate::Error::Config(
                "--verify-max-failures-per-key and --verify-max-suspect-hashes-per-second must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Where outbound requests may go.
    pub fn egress_policy(&self) -> EgressPolicy {
        EgressPolicy { allowed_networks: self.egress.allow_cidr.clone(), allow_http: self.egress.allow_http }
    }

    /// Bounds on argon2 work for wrong secrets.
    pub fn abuse_limits(&self) -> AbuseLimits {
        AbuseLimits {
            failures_per_key: self.abuse.failures_per_key,
            failure_window: self.abuse.failure_window,
            suspect_hashes_per_second: self.abuse.suspect_hashes_per_second,
        }
    }

    /// Request budgets and failed-authentication back-offs.
    pub fn admission_limits(&self) -> AdmissionLimits {
        AdmissionLimits {
            requests_per_second: self.abuse.admin_requests_per_second,
            failures_per_minute: self.abuse.auth_failures_per_minute,
            failure_backoff: self.abuse.auth_failure_backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::groups::DEFAULT_RETRY_SCHEDULE;
    use super::*;
    use clap::CommandFactory;

    proptest::proptest! {
        #[test]
        fn durations_round_trip(millis in 0u64..10_000_000_000) {
            let duration = Duration::from_millis(millis);
            let text = humantime::format_duration(duration).to_string();
            proptest::prop_assert_eq!(humantime::parse_duration(&text).ok(), Some(duration));
        }

        #[test]
        fn retry_schedules_never_panic(text in ".*") {
            let _ = text.parse::<RetrySchedule>();
        }

        #[test]
        fn cidrs_round_trip(address in proptest::num::u128::ANY, length in 0u8..=128, v4 in proptest::bool::ANY) {
            let network = if v4 {
                ipnet::IpNet::V4(ipnet::Ipv4Net::new((address as u32).into(), length % 33).unwrap())
            } else {
                ipnet::IpNet::V6(ipnet::Ipv6Net::new(address.into(), length).unwrap())
            };
            proptest::prop_assert_eq!(network.to_string().parse::<ipnet::IpNet>().ok(), Some(network));
        }

        #[test]
        fn cidr_parsing_never_panics(text in ".*") {
            let _ = text.parse::<ipnet::IpNet>();
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn settings_that_depend_on_each_other_are_checked() {
        let mut config = Config::for_test("/tmp/unused");
        assert!(config.validate().is_ok());
        config.event_poll_interval = config.heartbeat_interval;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("--event-poll-interval") && error.contains("--heartbeat-interval"), "{error}");
        let mut config = Config::for_test("/tmp/unused");
        config.abuse.failures_per_key = 0;
        assert!(config.validate().unwrap_err().to_string().contains("--verify-max-failures-per-key"));
        let mut config = Config::for_test("/tmp/unused");
        config.webhooks.lease = config.webhooks.timeout;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("--webhook-lease") && error.contains("--webhook-timeout"), "{error}");
        let mut config = Config::for_test("/tmp/unused");
        config.usage.minute_retention = Duration::from_secs(60);
        assert!(config.validate().unwrap_err().to_string().contains("--usage-minute-retention"));
    }

    #[test]
    fn postgres_has_no_default_root_token_file() {
        let mut config = Config::for_test("/data");
        assert_eq!(config.root_token_path(), Some(PathBuf::from("/data/root-token")));
        config.storage.database_url = Some("postgres://db/keyplane".into());
        assert_eq!(config.root_token_path(), None);
        config.root_token_file = Some("/etc/keyplane/root-token".into());
        assert_eq!(config.root_token_path(), Some(PathBuf::from("/etc/keyplane/root-token")));
    }

    #[test]
    fn webhook_defaults_come_from_the_command_line_attributes() {
        let defaults = WebhookArgs::default();
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        assert_eq!(defaults.retry_schedule, DEFAULT_RETRY_SCHEDULE.parse().unwrap());
        assert_eq!(defaults.retry_schedule.0.len(), 8);
        assert_eq!(defaults.max_subscriptions, 50);
    }
}
