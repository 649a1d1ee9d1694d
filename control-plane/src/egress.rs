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
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy: self.clone() }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("Keyplane/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(EgressClient { policy: self.clone(), http, timeout })
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
    /// A POST to `url`, or why the policy refuses it.
    pub fn post(&self, url: Url) -> Result<reqwest::RequestBuilder, String> {
        self.policy.check_url(&url)?;
        Ok(self.http.post(url))
    }

    /// A failed request as text: the timeout, or the whole cause chain (a
    /// refusal by the policy included), never the URL — its query may hold
    /// credentials.
    pub fn failure_text(&self, error: reqwest::Error) -> String {
        if error.is_timeout() {
            return format!("timed out after {:?}", self.timeout);
        }
        let error = error.without_url();
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// `localhost` and its subdomains always resolve to loopback (RFC 6761).
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// IPv4-mapped and NAT64-embedded IPv4 addresses are judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => {
                let [.., a, b] = v6.segments();
                IpAddr::V4(Ipv4Addr::from((u32::from(a) << 16) | u32::from(b)))
            }
            None => ip,
        },
        v4 => v4,
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
                return Err(format!("{host} refused: {why}").into());
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
        ] {
            assert!(refused(&closed, ip), "{ip} should be refused");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
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
