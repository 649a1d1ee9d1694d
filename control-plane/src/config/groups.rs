//! The flag groups of `keyplane serve` beyond storage: the console,
//! usage analytics, abuse limits, TLS, egress and webhooks, each with its
//! defaults and what it turns into for the service that uses it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use super::RetrySchedule;
use crate::egress::EgressPolicy;
use crate::service::usage::Retention;
use crate::service::webhooks::{DispatchSettings, WebhookPolicy};

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
pub(super) const DEFAULT_RETRY_SCHEDULE: &str = "0s,5s,5m,30m,2h,5h,10h,10h";

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
