//! Outbound HTTP that cannot be turned against the network it runs in (SSRF).
//!
//! Destinations are checked on the addresses actually connected to: a DNS
//! resolver wrapped around the system one drops loopback, private,
//! link-local, CGNAT, multicast, unspecified and cloud-metadata addresses
//! unless the operator allow-lists them, so a hostname that resolves (or
//! re-resolves) to an internal address is refused at connection time. IP
//! literals never reach a resolver and are checked before the request.
//! Redirects are not followed and proxies from the environment are ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Which destinations outbound requests may reach.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    /// Networks allowed even though they are internal (`--egress-allow-cidr`).
    pub allowed_networks: Vec<IpNet>,
    /// Whether plain `http://` URLs are allowed (`--egress-allow-http`).
    pub allow_http: bool,
}

impl EgressPolicy {
    /// Why `ip` may not be contacted, or `None` if it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        if self.allowed_networks.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        internal_range(ip)
            .map(|range| format!("destination {ip} is {range}; allow it with --egress-allow-cidr if intended"))
    }

    /// Checks the scheme: https, or http when the operator allows it.
    pub fn check_scheme(&self, url: &Url) -> Result<(), String> {
        match url.scheme() {
            "https" => Ok(()),
            "http" if self.allow_http => Ok(()),
            "http" => Err("http:// is not allowed; use https:// (or start with --egress-allow-http)".into()),
            other => Err(format!("scheme {other:?} is not allowed; use https://")),
        }
    }

    /// Checks what can be checked before connecting: the scheme, and the
    /// address when the host is an IP literal.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        self.check_scheme(url)?;
        match url.host() {
            None => Err("the URL has no host".into()),
            Some(url::Host::Ipv4(ip)) => self.refusal(IpAddr::V4(ip)).map_or(Ok(()), Err),
            Some(url::Host::Ipv6(ip)) => self.refusal(IpAddr::V6(ip)).map_or(Ok(()), Err),
            Some(url::Host::Domain(name)) if is_localhost(name) => {
                self.refusal(IpAddr::V4(Ipv4Addr::LOCALHOST)).map_or(Ok(()), |why| Err(format!("{name}: {why}")))
            }
            Some(url::Host::Domain(_)) => Ok(()),
        }
    }

    /// An HTTP client that enforces this policy, with a whole-request `timeout`.
    pub fn client(self: &Arc<Self>, timeout: Duration) -> reqwest::Result<EgressClient> {
        let http = self.builder(timeout).build()?;
        Ok(EgressClient { policy: self.clone(), http, timeout })
    }

    /// [`Self::client`] presenting a client certificate and/or trusting only
    /// a private CA (one endpoint's settings).
    pub fn client_with_tls(self: &Arc<Self>, timeout: Duration, tls: &EndpointTls) -> reqwest::Result<EgressClient> {
        let http = tls.apply(self.builder(timeout))?.build()?;
        Ok(EgressClient { policy: self.clone(), http, timeout })
    }

    fn builder(self: &Arc<Self>, timeout: Duration) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: self.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("Keyplane/", env!("CARGO_PKG_VERSION")))
    }
}

/// One endpoint's TLS settings, as PEM text.
#[derive(Clone, Debug, Default)]
pub struct EndpointTls {
    /// Certificate chain and private key presented for mutual TLS.
    pub identity_pem: Option<String>,
    /// CA certificates trusted instead of the public roots.
    pub ca_bundle_pem: Option<String>,
}

impl EndpointTls {
    fn apply(&self, mut builder: reqwest::ClientBuilder) -> reqwest::Result<reqwest::ClientBuilder> {
        if let Some(identity) = &self.identity_pem {
            builder = builder.identity(reqwest::Identity::from_pem(identity.as_bytes())?);
        }
        if let Some(bundle) = &self.ca_bundle_pem {
            builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(bundle.as_bytes())?);
        }
        Ok(builder)
    }

    /// Whether the settings make a TLS client (a key that belongs to its
    /// certificate, certificates that parse); why not.
    pub fn check(&self) -> Result<(), String> {
        let built = self.apply(reqwest::Client::builder()).and_then(reqwest::ClientBuilder::build);
        built.map(drop).map_err(|error| {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        })
    }
}

/// The only way Keyplane makes outbound requests: every URL is checked
/// before the request (scheme, IP literals) and every resolved address when
/// connecting.
#[derive(Clone)]
pub struct EgressClient {
    policy: Arc<EgressPolicy>,
    http: reqwest::Client,
    timeout: Duration,
}

impl EgressClient {
    /// A POST to `url`, or [`Failure::NotAllowed`] when the policy refuses
    /// it (the reason is logged).
    pub fn post(&self, url: Url) -> Result<reqwest::RequestBuilder, Failure> {
        if let Err(why) = self.policy.check_url(&url) {
            tracing::info!(reason = %why, "outbound request refused by the egress policy");
            return Err(Failure::NotAllowed);
        }
        Ok(self.http.post(url))
    }

    /// What a failed request comes to for whoever asked for it: a category.
    /// The whole cause chain (which names internal hosts and addresses,
    /// never the URL: its query may hold credentials) goes to the log only.
    pub fn failure(&self, error: reqwest::Error) -> Failure {
        let failure = Failure::of(&error);
        let error = error.without_url();
        let mut detail = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        tracing::info!(failure = failure.as_str(), timeout = ?self.timeout, %detail, "outbound request failed");
        failure
    }
}

/// Why an outbound request failed, as callers (API clients, portal
/// customers) are told: no internal names or addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The egress policy refused the destination (an internal address).
    NotAllowed,
    Timeout,
    ConnectionRefused,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The name did not resolve, or the connection failed otherwise.
    Connection,
    /// The request or its answer broke off.
    Request,
}

impl Failure {
    /// The category as shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::NotAllowed => "destination not allowed",
            Failure::Timeout => "timeout",
            Failure::ConnectionRefused => "connection refused",
            Failure::Tls => "TLS error",
            Failure::Connection => "connection failed",
            Failure::Request => "request failed",
        }
    }

    fn of(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            return Failure::Timeout;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = source {
            if cause.is::<Refused>() {
                return Failure::NotAllowed;
            }
            if cause.is::<rustls::Error>() {
                return Failure::Tls;
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Failure::ConnectionRefused;
                }
                if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                    return Failure::Tls;
                }
            }
            source = cause.source();
        }
        if error.is_connect() { Failure::Connection } else { Failure::Request }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resolver's refusal of every address a name resolved to.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// `localhost` and its subdomains always resolve to loopback (RFC 6761).
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// IPv6 addresses that carry an IPv4 address are judged as that IPv4
/// address: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), SIIT
/// (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| IpAddr::V4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    match s {
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => ip,
        [0, 0, 0, 0, 0, 0xffff, hi, lo] | [0, 0, 0, 0, 0, 0, hi, lo] | [0, 0, 0, 0, 0xffff, 0, hi, lo] => v4(hi, lo),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => v4(hi, lo),
        [0x2002, hi, lo, ..] => v4(hi, lo),
        _ => ip,
    }
}

/// The kind of internal range `ip` is in, if any.
fn internal_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared address space (CGNAT)")
            } else if v4.is_multicast() || v4.is_broadcast() {
                Some("multicast or broadcast")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if a >= 240 || (a == 192 && b == 0 && v4.octets()[2] == 0) || (a == 198 && (b == 18 || b == 19)) {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique local (private, includes cloud metadata)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xffc0 == 0xfec0 {
                Some("site-local (deprecated private)")
            } else if v6.segments()[..3] == [0x64, 0xff9b, 1] {
                Some("NAT64 local-use (translates to private IPv4)")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else {
                None
            }
        }
    }
}

/// Resolves with the system resolver, then drops refused addresses; fails
/// with the reason when none is left.
struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusals = Vec::new();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.refusal(addr.ip()) {
                    Some(why) => {
                        refusals.push(why);
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let why = refusals.into_iter().next().unwrap_or_else(|| "no addresses".into());
                return Err(
                    Box::new(Refused(format!("{host} refused: {why}"))) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &EgressPolicy, ip: &str) -> bool {
        policy.refusal(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn internal_addresses_are_refused_unless_allowed() {
        let closed = EgressPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "::ffff:0:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::7f00:1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "fec0::1",
        ] {
            assert!(refused(&closed, ip), "{ip} should be refused");
        }
        for ip in
            ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "100.128.0.1", "2002:5db8:d822::1", "64:ff9b::101:101"]
        {
            assert!(!refused(&closed, ip), "{ip} should be allowed");
        }
        let open = EgressPolicy { allowed_networks: vec!["127.0.0.0/8".parse().unwrap()], allow_http: true };
        assert!(!refused(&open, "127.0.0.1"));
        assert!(!refused(&open, "::ffff:127.0.0.1"));
        assert!(refused(&open, "10.0.0.1"));
    }

    /// The check on resolved addresses, for names that pass the URL check
    /// (here `localhost`, which the system resolves from /etc/hosts).
    #[tokio::test]
    async fn resolved_addresses_are_checked() {
        use std::str::FromStr;
        let closed = GuardedResolver { policy: Arc::new(EgressPolicy::default()) };
        let error = closed.resolve(Name::from_str("localhost").unwrap()).await.err().expect("refused");
        assert!(error.to_string().contains("localhost refused"), "{error}");
        let open = GuardedResolver {
            policy: Arc::new(EgressPolicy {
                allowed_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
                allow_http: false,
            }),
        };
        let addrs: Vec<SocketAddr> = open.resolve(Name::from_str("localhost").unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn urls_need_https_and_a_public_literal() {
        let closed = EgressPolicy::default();
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(closed.check_url(&url("https://example.com/hook")).is_ok());
        assert!(closed.check_url(&url("http://example.com/hook")).unwrap_err().contains("--egress-allow-http"));
        assert!(closed.check_url(&url("ftp://example.com/")).is_err());
        assert!(closed.check_url(&url("https://10.0.0.1/")).unwrap_err().contains("private"));
        assert!(closed.check_url(&url("https://[::1]/")).unwrap_err().contains("loopback"));
        // Every spelling of an internal address, as the URL parser normalises it.
        for refused in [
            "https://169.254.169.254/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::127.0.0.1]/",
            "https://[::ffff:0:127.0.0.1]/",
            "https://[64:ff9b::7f00:1]/",
            "https://[64:ff9b:1::7f00:1]/",
            "https://[2002:7f00:1::1]/",
            "https://[fec0::1]/",
            "https://127.1/",
            "https://0x7f.1/",
            "https://2130706433/",
            "https://0.0.0.0/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://api.localhost/",
        ] {
            assert!(closed.check_url(&url(refused)).is_err(), "{refused} must be refused");
        }
        let loopback_allowed =
            EgressPolicy { allowed_networks: vec!["127.0.0.0/8".parse().unwrap()], allow_http: false };
        assert!(loopback_allowed.check_url(&url("https://localhost:8443/")).is_ok());
        assert!(loopback_allowed.check_url(&url("https://127.1/")).is_ok());
    }
}
