//! Command line and environment (`KEYPLANE_SIDECAR_*`), parsed in one place.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use keyplane_proto::token::Environment;

/// Keyplane sidecar: answers API-key checks for Envoy ext_authz and HTTP
/// forward-auth (Traefik, nginx, Caddy) from a cache kept correct by the
/// control plane's revocation stream.
#[derive(Clone, Debug, Parser)]
#[command(name = "keyplane-sidecar", version, about, long_about = None)]
pub struct Config {
    /// Control-plane gRPC URL, or the URLs of several replicas (comma-separated
    /// or repeated): the sidecar follows one and moves to the next when it
    /// fails. `https://` always means TLS (verified with the system roots or
    /// --control-plane-ca-file); `http://` is plaintext.
    #[arg(
        long,
        env = "KEYPLANE_SIDECAR_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051",
        value_delimiter = ','
    )]
    pub control_plane: Vec<String>,
    /// PEM file of the CA(s) that sign the control plane's certificate
    /// (default: the system roots). Needs an `https://` control plane.
    #[arg(long, env = "KEYPLANE_SIDECAR_CONTROL_PLANE_CA_FILE")]
    pub control_plane_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to the control plane (mTLS); needs
    /// --tls-client-key-file and an `https://` control plane.
    #[arg(long, env = "KEYPLANE_SIDECAR_TLS_CLIENT_CERT_FILE", requires = "tls_client_key_file")]
    pub tls_client_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-client-cert-file.
    #[arg(long, env = "KEYPLANE_SIDECAR_TLS_CLIENT_KEY_FILE", requires = "tls_client_cert_file")]
    pub tls_client_key_file: Option<PathBuf>,
    /// Longest wait for the control plane on a cache miss (and for a usage
    /// report); past it the check answers 503. Keep it below the proxy's own
    /// auth timeout (Envoy ext_authz: 200ms by default).
    #[arg(long, env = "KEYPLANE_SIDECAR_CONTROL_PLANE_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub control_plane_timeout: Duration,
    /// File holding this sidecar's credential: a platform key (org `keyplane`)
    /// with scope `keyplane:sidecar`.
    #[arg(long, env = "KEYPLANE_SIDECAR_CREDENTIAL_FILE")]
    pub credential_file: PathBuf,
    /// Environment this sidecar serves, `live` or `test`; keys of the other
    /// one are refused (403).
    #[arg(long, env = "KEYPLANE_SIDECAR_ENVIRONMENT", default_value = "live")]
    pub environment: Environment,
    /// gRPC address: Envoy ext_authz v3, health, reflection. `host:port` or
    /// `unix:/path/to/socket`.
    #[arg(long, env = "KEYPLANE_SIDECAR_GRPC_LISTEN", default_value = "127.0.0.1:50061")]
    pub grpc_listen: ListenAddr,
    /// HTTP address: forward-auth under `/check`, `/healthz`, `/readyz`,
    /// `/metrics`. `host:port` or `unix:/path/to/socket`.
    #[arg(long, env = "KEYPLANE_SIDECAR_HTTP_LISTEN", default_value = "127.0.0.1:8081")]
    pub http_listen: ListenAddr,
    /// Most cached verification results.
    #[arg(long, env = "KEYPLANE_SIDECAR_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// How long a positive result stays cached (changes arrive on the stream sooner).
    #[arg(long, env = "KEYPLANE_SIDECAR_CACHE_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,
    /// How long a negative result (unknown, bad secret, revoked, expired) stays cached.
    #[arg(long, env = "KEYPLANE_SIDECAR_NEGATIVE_CACHE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub negative_cache_ttl: Duration,
    /// With no event or heartbeat for this long, stop allowing from cache (503).
    #[arg(long, env = "KEYPLANE_SIDECAR_MAX_STALENESS", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_staleness: Duration,
    /// Keep allowing from cache when stale (fail open) instead of answering 503.
    #[arg(long, env = "KEYPLANE_SIDECAR_FAIL_OPEN")]
    pub fail_open: bool,
    /// Tell clients why a token was refused (`revoked`, `bad_secret`, …)
    /// instead of a generic `invalid_token`. For debugging only: it tells an
    /// attacker which key ids exist.
    #[arg(long, env = "KEYPLANE_SIDECAR_EXPOSE_DENIAL_REASONS")]
    pub expose_denial_reasons: bool,
    /// Scopes every check requires (comma-separated); a route's scopes (an
    /// ext_authz context extension, or `X-Required-Scopes` set by the proxy)
    /// add to them and never lift them.
    #[arg(long, env = "KEYPLANE_SIDECAR_DEFAULT_SCOPES", value_delimiter = ',')]
    pub default_scopes: Vec<String>,
    /// The permission query a forward-auth route requires, as
    /// `NAME=QUERY` (repeatable; `;`-separated in the variable): the proxy
    /// checks route NAME at `/check/NAME` (docs/api.md "Roles and permissions").
    /// ext_authz routes set the `permissions` context extension instead.
    #[arg(long = "route-permissions", env = "KEYPLANE_SIDECAR_ROUTE_PERMISSIONS", value_delimiter = ';', value_parser = crate::routes::parse)]
    pub route_permissions: Vec<crate::routes::RoutePermissions>,
    /// Serve only these orgs' keys (repeatable or comma-separated; default:
    /// every org). The sidecar then follows only their key events, and
    /// refuses any other org's key (401; `org_not_served` in metrics): a
    /// replica writes each event only to the sidecars that serve its org.
    #[arg(long = "org", env = "KEYPLANE_SIDECAR_ORGS", value_delimiter = ',')]
    pub orgs: Vec<String>,
    /// Request header carrying the key (`authorization` expects `Bearer <token>`).
    #[arg(long, env = "KEYPLANE_SIDECAR_CREDENTIAL_HEADER", default_value = "authorization")]
    pub credential_header: String,
    /// Proxies whose `X-Forwarded-For` / `X-Real-IP` the HTTP front end
    /// believes for key allow-lists (CIDRs, repeatable or comma-separated).
    /// From any other peer those headers are ignored and the socket peer is
    /// the client. Envoy ext_authz names the client itself.
    #[arg(long = "trusted-proxy", env = "KEYPLANE_SIDECAR_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Pass the credential header on to the application (default: removed).
    #[arg(long, env = "KEYPLANE_SIDECAR_KEEP_CREDENTIAL")]
    pub keep_credential: bool,
    /// How often usage counts are reported to the control plane.
    #[arg(long, env = "KEYPLANE_SIDECAR_USAGE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub usage_interval: Duration,
    /// Token prefix issued by the control plane.
    #[arg(long, env = "KEYPLANE_SIDECAR_TOKEN_PREFIX", default_value = "kp")]
    pub token_prefix: String,
    /// Starts of tokens imported from another system (e.g. `cc_live_`),
    /// which are verified by the control plane although they are not in
    /// Keyplane's format; other such tokens are refused here as malformed.
    /// An empty start admits every token (each unknown one then costs a
    /// Verify, cached for --negative-cache-ttl).
    #[arg(long = "imported-token-prefix", env = "KEYPLANE_SIDECAR_IMPORTED_TOKEN_PREFIXES", value_delimiter = ',')]
    pub imported_token_prefixes: Vec<String>,
    /// Log format.
    #[arg(long, env = "KEYPLANE_SIDECAR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where a listener binds: a TCP address or a Unix domain socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `host:port`.
    Tcp(SocketAddr),
    /// `unix:/path`: the socket file is replaced if it exists.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.strip_prefix("unix:") {
            Some("") => Err("unix: needs a socket path, e.g. unix:/run/keyplane/authz.sock".into()),
            Some(path) => Ok(Self::Unix(PathBuf::from(path))),
            None => value
                .parse()
                .map(Self::Tcp)
                .map_err(|_| format!("{value:?} is neither host:port (an IP address) nor unix:/path")),
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => addr.fmt(f),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// A configuration for tests: short intervals, loopback addresses.
    pub fn for_test(control_plane: String, credential_file: PathBuf) -> Self {
        Self {
            control_plane: vec![control_plane],
            control_plane_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            control_plane_timeout: Duration::from_secs(1),
            credential_file,
            environment: Environment::Live,
            grpc_listen: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            http_listen: ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(5),
            max_staleness: Duration::from_secs(5),
            fail_open: false,
            expose_denial_reasons: false,
            default_scopes: Vec::new(),
            route_permissions: Vec::new(),
            orgs: Vec::new(),
            credential_header: "authorization".into(),
            trusted_proxies: Vec::new(),
            keep_credential: false,
            usage_interval: Duration::from_millis(200),
            token_prefix: "kp".into(),
            imported_token_prefixes: Vec::new(),
            log_format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn listen_addresses() {
        assert_eq!("127.0.0.1:80".parse(), Ok(ListenAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 80)))));
        assert_eq!("unix:/run/a.sock".parse(), Ok(ListenAddr::Unix("/run/a.sock".into())));
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost:80".parse::<ListenAddr>().is_err());
        assert_eq!(ListenAddr::Unix("/x".into()).to_string(), "unix:/x");
    }
}
