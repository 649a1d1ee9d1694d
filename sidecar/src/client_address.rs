//! Which address a request comes from, for key allow-lists. Envoy's
//! ext_authz names the downstream address itself; for HTTP forward-auth the
//! socket peer is the proxy, so `X-Forwarded-For` / `X-Real-IP` are
//! believed only when that peer is one of the `--trusted-proxy` networks
//! (a client could send them to anyone).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// The proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Proxies in `networks`.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a forward-auth request from socket peer `peer` (its
    /// [`peer_ip`]; a Unix socket peer has none), given its
    /// `X-Real-IP` and every `X-Forwarded-For` line in order. Headers count
    /// only from a trusted peer, and then the proxy's own value wins:
    /// - `X-Real-IP`, which a proxy sets to the address it saw, overwriting
    ///   the client's (every shipped example does), names the client unless
    ///   it is itself a trusted proxy (a chain of proxies);
    /// - else the right-most `X-Forwarded-For` entry that is not a trusted
    ///   proxy (a proxy appends the address it saw; entries to its left
    ///   were written by the client and prove nothing);
    /// - else the peer.
    pub fn client<'a>(
        &self,
        peer: Option<IpAddr>,
        real_ip: Option<&str>,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        let Some(proxy) = peer.filter(|ip| self.trusts(*ip)) else { return peer };
        let real_ip = real_ip.map(|value| parse_ip(value.trim()));
        match real_ip {
            Some(Some(ip)) if !self.trusts(ip) => return Some(ip),
            // Not an address: nobody to believe.
            Some(None) => return None,
            _ => {}
        }
        let entries: Vec<&str> =
            forwarded_for.flat_map(|line| line.split(',')).map(str::trim).filter(|e| !e.is_empty()).collect();
        let right_most_untrusted =
            entries.iter().rev().map(|entry| parse_ip(entry)).find(|ip| !ip.is_some_and(|ip| self.trusts(ip)));
        match (right_most_untrusted, entries.first()) {
            // A right-most untrusted entry that is not an address: nobody to believe.
            (Some(found), _) => found,
            // Every entry is a trusted proxy: the left-most one is the client.
            (None, Some(first)) => parse_ip(first),
            (None, None) => real_ip.flatten().or(Some(proxy)),
        }
    }
}

/// The IP of a socket peer given as the text of its address (`unix` for a
/// Unix socket peer, which has none). Parsed once per connection.
pub fn peer_ip(peer: &str) -> Option<IpAddr> {
    peer.parse::<SocketAddr>().ok().map(|addr| addr.ip().to_canonical())
}

/// An address as found in forwarding headers or Envoy's attributes: an IP,
/// optionally with a port (`1.2.3.4:5`, `[::1]:5`).
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let ip = text.parse::<IpAddr>().ok().or_else(|| text.parse::<SocketAddr>().ok().map(|addr| addr.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(proxies: &[&str], peer: &str, headers: &[(&str, &str)]) -> Option<String> {
        let proxies = TrustedProxies::new(proxies.iter().map(|p| p.parse().unwrap()).collect());
        let real_ip = headers.iter().find(|(n, _)| *n == "x-real-ip").map(|(_, v)| *v);
        let forwarded = headers.iter().filter(|(n, _)| *n == "x-forwarded-for").map(|(_, v)| *v);
        proxies.client(peer_ip(peer), real_ip, forwarded).map(|ip| ip.to_string())
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let spoofed = [("x-forwarded-for", "10.1.1.1"), ("x-real-ip", "10.1.1.1")];
        assert_eq!(client(&[], "192.0.2.7:4000", &spoofed).as_deref(), Some("192.0.2.7"));
        assert_eq!(client(&["10.0.0.0/8"], "192.0.2.7:4000", &spoofed).as_deref(), Some("192.0.2.7"));
        assert_eq!(client(&[], "unix", &spoofed), None);
    }

    #[test]
    fn behind_a_trusted_proxy_the_right_most_untrusted_entry_is_the_client() {
        let proxies = ["10.0.0.0/8"];
        let peer = "10.0.0.2:4000";
        let chain = [("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.5")];
        assert_eq!(client(&proxies, peer, &chain).as_deref(), Some("203.0.113.9"));
        let only_proxies = [("x-forwarded-for", "10.0.0.9, 10.0.0.5")];
        assert_eq!(client(&proxies, peer, &only_proxies).as_deref(), Some("10.0.0.9"));
        let garbage = [("x-forwarded-for", "6.6.6.6, not-an-ip")];
        assert_eq!(client(&proxies, peer, &garbage), None);
        assert_eq!(client(&proxies, peer, &[("x-real-ip", "2001:db8::1")]).as_deref(), Some("2001:db8::1"));
        assert_eq!(client(&proxies, peer, &[]).as_deref(), Some("10.0.0.2"));
        assert_eq!(
            client(&["::1/128"], "[::1]:80", &[("x-forwarded-for", "[2001:db8::2]:443")]).as_deref(),
            Some("2001:db8::2")
        );
    }

    #[test]
    fn the_proxys_own_value_wins_over_the_clients() {
        let proxies = ["127.0.0.1/32"];
        let peer = "127.0.0.1:4000";
        // nginx sets X-Real-IP to the address it saw; the client sent its own X-Forwarded-For.
        let spoofed = [("x-forwarded-for", "203.0.113.7"), ("x-real-ip", "198.51.100.1")];
        assert_eq!(client(&proxies, peer, &spoofed).as_deref(), Some("198.51.100.1"));
        // Every X-Forwarded-For line counts, the proxy's appended one last.
        let lines = [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "198.51.100.1")];
        assert_eq!(client(&proxies, peer, &lines).as_deref(), Some("198.51.100.1"));
        // A chain: the first proxy's X-Real-IP is a trusted proxy, so X-Forwarded-For decides.
        let chain = [("x-real-ip", "127.0.0.1"), ("x-forwarded-for", "6.6.6.6, 198.51.100.1")];
        assert_eq!(client(&proxies, peer, &chain).as_deref(), Some("198.51.100.1"));
        assert_eq!(client(&proxies, peer, &[("x-real-ip", "garbage")]), None);
        assert_eq!(client(&proxies, peer, &[("x-real-ip", "127.0.0.1")]).as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        assert_eq!(parse_ip("::ffff:192.0.2.1").map(|ip| ip.to_string()).as_deref(), Some("192.0.2.1"));
    }
}
