//! Command line and environment (`KEYPLANE_*`), parsed in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::crypto::HashingParams;
use crate::egress::EgressPolicy;
use crate::service::admission::AdmissionLimits;
use crate::service::usage::Retention;
use crate::service::verify::AbuseLimits;
use crate::service::webhooks::{DispatchSettings, WebhookPolicy};

pub use crate::service::webhooks::dispatch::RetrySchedule;

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

/// Refuses `--console-port`, naming the flag that sets the console's port.
fn no_console_port(_: &str) -> Result<String, String> {
    Err("there is no --console-port: the console listens on --console-listen HOST:PORT \
         (default 127.0.0.1:8080; `off` turns it off)"
        .into())
}

/// The web console and its sessions.
#[derive(Clone, Debug, Args)]
pub struct ConsoleArgs {
    /// Web console address (`host:port`), or `off`. On loopback by default:
    /// open it and sign in with the root token or a Keyplane API key.
    #[arg(long = "console-listen", env = "KEYPLANE_CONSOLE_LISTEN", default_value = "127.0.0.1:8080")]
    pub address: ConsoleListen,
    /// The console's address as browsers reach it (portal links point
    /// there), e.g. `https://keys.example.com`; default: from --console-listen.
    #[arg(long = "console-url", env = "KEYPLANE_CONSOLE_URL")]
    pub url: Option<String>,
    /// Not a flag: says which one is (clap would suggest --console-url).
    #[arg(long = "console-port", hide = true, value_parser = no_console_port)]
    pub no_console_port: Option<String>,
    /// A console session ends after this long without a request.
    #[arg(long = "console-session-idle", env = "KEYPLANE_CONSOLE_SESSION_IDLE", default_value = "30m", value_parser = humantime::parse_duration)]
    pub session_idle: Duration,
    /// A console session ends this long after sign-in, whatever the activity.
    #[arg(long = "console-session-lifetime", env = "KEYPLANE_CONSOLE_SESSION_LIFETIME", default_value = "12h", value_parser = humantime::parse_duration)]
    pub session_lifetime: Duration,
    /// Mark session cookies `Secure` (automatic when the console serves
    /// TLS): set it when a TLS proxy sits in front of the console.
    #[arg(long = "console-secure-cookies", env = "KEYPLANE_CONSOLE_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// People sign in to the console with this OpenID provider: a TOML file
    /// naming the issuer, the client, and which groups hold which rights in
    /// which orgs (docs/console.md, "Single sign-on").
    #[arg(long = "oidc-config", env = "KEYPLANE_OIDC_CONFIG", value_name = "FILE")]
    pub oidc_config: Option<PathBuf>,
    /// Whether the console's sign-in form takes the root token and API keys
    /// (break-glass and automation); `false` leaves single sign-on only.
    #[arg(long = "console-key-sign-in", env = "KEYPLANE_CONSOLE_KEY_SIGN_IN", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub key_sign_in: bool,
}

/// Where the console listens, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleListen {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for ConsoleListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        value.parse().map(Self::On).map_err(|_| format!("{value:?} is neither host:port (an IP address) nor off"))
    }
}

impl Default for ConsoleArgs {
    /// The command-line defaults (one source of truth: the `#[arg]` attributes).
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            console: ConsoleArgs,
        }
        Defaults::parse_from(["keyplane"]).console
    }
}

/// Usage analytics: how long rollups are kept, and how often the control
/// plane applies its own VerifyApiKey counts.
#[derive(Clone, Debug, Args)]
pub struct UsageArgs {
    /// How long per-minute usage rollups are kept.
    #[arg(long = "usage-minute-retention", env = "KEYPLANE_USAGE_MINUTE_RETENTION", default_value = "48h", value_parser = humantime::parse_duration)]
    pub minute_retention: Duration,
    /// How long hourly usage rollups are kept.
    #[arg(long = "usage-hour-retention", env = "KEYPLANE_USAGE_HOUR_RETENTION", default_value = "90days", value_parser = humantime::parse_duration)]
    pub hour_retention: Duration,
    /// How long daily usage rollups are kept.
    #[arg(long = "usage-day-retention", env = "KEYPLANE_USAGE_DAY_RETENTION", default_value = "730days", value_parser = humantime::parse_duration)]
    pub day_retention: Duration,
    /// How long applied usage-report ids are remembered: a sidecar retrying
    /// a report within this window is not counted twice.
    #[arg(long = "usage-report-dedup-window", env = "KEYPLANE_USAGE_REPORT_DEDUP_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub report_dedup_window: Duration,
    /// How often the control plane applies the usage of its own
    /// VerifyApiKey calls (sidecars have --usage-interval).
    #[arg(long = "usage-flush-interval", env = "KEYPLANE_USAGE_FLUSH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub flush_interval: Duration,
    /// Memory (MiB) for the per-key scores of recently ranked buckets that
    /// TopKeys keeps between queries (about 60 bytes per key and bucket: 64
    /// MiB hold 8 days of 140,000 keys, for each way of ranking in use); 0
    /// reads every bucket from the database on every query.
    #[arg(long = "usage-ranking-cache-mib", env = "KEYPLANE_USAGE_RANKING_CACHE_MIB", default_value_t = 64)]
    pub ranking_cache_mib: u64,
}

impl Default for UsageArgs {
    /// The command-line defaults (one source of truth: the `#[arg]` attributes).
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            usage: UsageArgs,
        }
        Defaults::parse_from(["keyplane"]).usage
    }
}

impl UsageArgs {
    /// How long each rollup is kept.
    pub fn retention(&self) -> Retention {
        Retention { minutes: self.minute_retention, hours: self.hour_retention, days: self.day_retention }
    }

    pub fn ranking_cache_bytes(&self) -> u64 {
        self.ranking_cache_mib.saturating_mul(1 << 20)
    }
}

/// Bounds on the argon2 work an attacker guessing secrets can cause.
#[derive(Clone, Debug, Args)]
pub struct AbuseArgs {
    /// Wrong secrets for one key id within --verify-failure-window after
    /// which further unverified secrets for it are refused without hashing
    /// (secrets already verified keep working).
    #[arg(long = "verify-max-failures-per-key", env = "KEYPLANE_VERIFY_MAX_FAILURES_PER_KEY", default_value_t = 10)]
    pub failures_per_key: u32,
    /// How long wrong secrets count against a key id.
    #[arg(long = "verify-failure-window", env = "KEYPLANE_VERIFY_FAILURE_WINDOW", default_value = "1m", value_parser = humantime::parse_duration)]
    pub failure_window: Duration,
    /// Argon2 verifications per second, over all key ids with a recent wrong
    /// secret (keys without failures are never limited).
    #[arg(
        long = "verify-max-suspect-hashes-per-second",
        env = "KEYPLANE_VERIFY_MAX_SUSPECT_HASHES_PER_SECOND",
        default_value_t = 20
    )]
    pub suspect_hashes_per_second: u32,
    /// Admin API requests per second per credential (with a burst of as
    /// many); beyond, RESOURCE_EXHAUSTED with RetryInfo. 0 = no limit. The
    /// sidecar protocol is not limited.
    #[arg(long = "admin-requests-per-second", env = "KEYPLANE_ADMIN_REQUESTS_PER_SECOND", default_value_t = 1000)]
    pub admin_requests_per_second: u32,
    /// Failed authentications per minute from one address (gRPC or console
    /// sign-in) after which the address is refused for --auth-failure-backoff.
    /// 0 = never.
    #[arg(long = "auth-failures-per-minute", env = "KEYPLANE_AUTH_FAILURES_PER_MINUTE", default_value_t = 20)]
    pub auth_failures_per_minute: u32,
    /// How long an address that failed to authenticate too often is refused.
    #[arg(long = "auth-failure-backoff", env = "KEYPLANE_AUTH_FAILURE_BACKOFF", default_value = "1m", value_parser = humantime::parse_duration)]
    pub auth_failure_backoff: Duration,
}

/// TLS for the gRPC listener (and the console's, when it exists).
#[derive(Clone, Debug, Default, Args)]
pub struct TlsArgs {
    /// PEM certificate chain; enables TLS. Reloaded when the file changes.
    #[arg(long = "tls-cert-file", env = "KEYPLANE_TLS_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long = "tls-key-file", env = "KEYPLANE_TLS_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// PEM CA(s): require every client (sidecars, admin tools) to present a
    /// certificate signed by one of them (mTLS).
    #[arg(long = "tls-client-ca-file", env = "KEYPLANE_TLS_CLIENT_CA_FILE", requires = "cert_file")]
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for changes (certificate rotation).
    #[arg(long = "tls-reload-interval", env = "KEYPLANE_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub reload_interval: Duration,
}

/// Where outbound requests (webhooks, OAuth providers) may go.
#[derive(Clone, Debug, Default, Args)]
pub struct EgressArgs {
    /// Allow destinations in this internal network (CIDR, repeatable), e.g.
    /// `10.1.0.0/16`. Loopback, private, link-local, CGNAT, multicast and
    /// metadata addresses are refused otherwise.
    #[arg(
        long = "egress-allow-cidr",
        visible_alias = "webhook-allow-cidr",
        env = "KEYPLANE_EGRESS_ALLOW_CIDR",
        value_delimiter = ','
    )]
    pub allow_cidr: Vec<ipnet::IpNet>,
    /// Allow plain `http://` destinations (https only otherwise).
    #[arg(long = "egress-allow-http", visible_alias = "webhook-allow-http", env = "KEYPLANE_EGRESS_ALLOW_HTTP")]
    pub allow_http: bool,
}

/// Webhook delivery settings.
#[derive(Clone, Debug, Args)]
pub struct WebhookArgs {
    /// Timeout of one delivery request.
    #[arg(long = "webhook-timeout", env = "KEYPLANE_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Delay before each attempt, comma-separated; the first is normally 0s.
    /// Each delay gets ±20% jitter.
    #[arg(long = "webhook-retry-schedule", env = "KEYPLANE_WEBHOOK_RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE, value_parser = clap::value_parser!(RetrySchedule))]
    pub retry_schedule: RetrySchedule,
    /// How long a claimed delivery stays reserved for its worker; must exceed the timeout.
    #[arg(long = "webhook-lease", env = "KEYPLANE_WEBHOOK_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// A subscription failing without a single success for this long is disabled.
    #[arg(long = "webhook-disable-after", env = "KEYPLANE_WEBHOOK_DISABLE_AFTER", default_value = "5days", value_parser = humantime::parse_duration)]
    pub disable_after: Duration,
    /// Hosts (suffixes, repeatable) subscriptions may target without approval;
    /// when set, other hosts wait for ApproveSubscription.
    #[arg(long = "webhook-allowed-host", env = "KEYPLANE_WEBHOOK_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Subscriptions per org at most.
    #[arg(long = "webhook-max-subscriptions", env = "KEYPLANE_WEBHOOK_MAX_SUBSCRIPTIONS", default_value_t = 50)]
    pub max_subscriptions: u64,
    /// Largest event payload in bytes.
    #[arg(long = "webhook-max-payload-bytes", env = "KEYPLANE_WEBHOOK_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// Succeeded deliveries (and their attempts) older than this are purged.
    #[arg(long = "webhook-delivery-retention", env = "KEYPLANE_WEBHOOK_DELIVERY_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub delivery_retention: Duration,
    /// Delivery requests in flight at most, over all endpoints.
    #[arg(long = "webhook-concurrency", env = "KEYPLANE_WEBHOOK_CONCURRENCY", default_value_t = 128)]
    pub concurrency: usize,
    /// Delivery requests in flight at most to one subscription, so a slow
    /// endpoint cannot take every worker.
    #[arg(long = "webhook-endpoint-concurrency", env = "KEYPLANE_WEBHOOK_ENDPOINT_CONCURRENCY", default_value_t = 16)]
    pub endpoint_concurrency: usize,
    /// How often the dispatcher looks for due deliveries written by other
    /// processes (local publications wake it at once).
    #[arg(long = "webhook-poll-interval", env = "KEYPLANE_WEBHOOK_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
}

/// Immediately, then 5s, 5m, 30m, 2h, 5h, 10h and 10h later.
const DEFAULT_RETRY_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

impl Default for WebhookArgs {
    /// The command-line defaults (one source of truth: the `#[arg]` attributes).
    fn default() -> Self {
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            webhooks: WebhookArgs,
        }
        Defaults::parse_from(["keyplane"]).webhooks
    }
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

impl WebhookArgs {
    /// How the dispatcher sends and retries.
    pub fn dispatch_settings(&self) -> DispatchSettings {
        DispatchSettings {
            timeout: self.timeout,
            schedule: self.retry_schedule.clone(),
            lease: self.lease,
            disable_after: self.disable_after,
            concurrency: self.concurrency,
            endpoint_concurrency: self.endpoint_concurrency,
            poll: self.poll_interval,
        }
    }

    /// The rules subscriptions and events follow.
    pub fn policy(&self, egress: std::sync::Arc<EgressPolicy>) -> WebhookPolicy {
        WebhookPolicy::new(egress, &self.allowed_hosts, self.max_subscriptions, self.max_payload_bytes)
            .with_request_timeout(self.timeout)
    }
}

#[cfg(test)]
mod tests {
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
