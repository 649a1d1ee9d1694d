//! Admission to the API, before any work is done for a request: a request
//! budget per credential (admin services), and a back-off for addresses
//! that keep failing authentication. A valid credential from another
//! address is never slowed by either.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Credentials and addresses tracked at most (the least recent are
/// forgotten first: a forgotten credential starts with a full budget).
const TRACKED: u64 = 100_000;

/// How much the API admits.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionLimits {
    /// Requests per second per credential on the admin services, with a
    /// burst of as many; 0 turns the budget off.
    pub requests_per_second: u32,
    /// Failed authentications per minute from one address after which the
    /// address is refused for `failure_backoff`; 0 turns it off.
    pub failures_per_minute: u32,
    /// How long an address that failed too often is refused.
    pub failure_backoff: Duration,
}

/// One address's recent failed authentications.
struct PeerFailures {
    /// Failures allowed before the back-off.
    allowance: DefaultDirectRateLimiter,
    /// Refused until then.
    refused_until: Mutex<Option<Instant>>,
}

/// Request budgets and failed-authentication back-offs.
pub struct Admission {
    limits: AdmissionLimits,
    metrics: Arc<Metrics>,
    /// Credential (`root`, a key id) → its request budget.
    budgets: Cache<String, Arc<DefaultDirectRateLimiter>>,
    /// Client address → its failed authentications.
    failures: Cache<IpAddr, Arc<PeerFailures>>,
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: AdmissionLimits, metrics: Arc<Metrics>) -> Self {
        let idle = Duration::from_secs(60).max(limits.failure_backoff);
        Self {
            limits,
            metrics,
            budgets: Cache::builder().max_capacity(TRACKED).time_to_idle(Duration::from_secs(60)).build(),
            failures: Cache::builder().max_capacity(TRACKED).time_to_idle(idle).build(),
        }
    }

    /// Refuses a request from `peer` while the address is backing off.
    pub fn check_peer(&self, peer: Option<IpAddr>) -> Result<()> {
        let Some(state) = peer.and_then(|ip| self.failures.get(&throttle_key(ip))) else { return Ok(()) };
        let refused_until = *state.refused_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match refused_until.and_then(|until| until.checked_duration_since(Instant::now())) {
            Some(wait) => {
                self.metrics.admission_refused.get_or_create(&vec![("limit", "failed_authentications")]).inc();
                Err(Error::Throttled {
                    message: "too many failed authentications from this address",
                    retry_after: wait,
                })
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication from `peer`; one too many starts its back-off.
    pub fn record_failure(&self, peer: Option<IpAddr>) {
        let (Some(ip), Some(per_minute)) = (peer, NonZeroU32::new(self.limits.failures_per_minute)) else {
            return;
        };
        let state = self.failures.get_with(throttle_key(ip), || {
            Arc::new(PeerFailures {
                allowance: RateLimiter::direct(Quota::per_minute(per_minute)),
                refused_until: Mutex::new(None),
            })
        });
        if state.allowance.check().is_err() {
            let mut refused_until = state.refused_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *refused_until = Some(Instant::now() + self.limits.failure_backoff);
            tracing::warn!(peer = %ip, backoff = ?self.limits.failure_backoff, "too many failed authentications; refusing the address");
        }
    }

    /// Spends one request of `credential`'s budget.
    pub fn spend(&self, credential: &str) -> Result<()> {
        let Some(per_second) = NonZeroU32::new(self.limits.requests_per_second) else { return Ok(()) };
        let budget =
            self.budgets.get_with_by_ref(credential, || Arc::new(RateLimiter::direct(Quota::per_second(per_second))));
        budget.check().map_err(|not_until| {
            self.metrics.admission_refused.get_or_create(&vec![("limit", "credential")]).inc();
            Error::Throttled {
                message: "this credential is over its request rate",
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            }
        })
    }
}

/// A per-address allowance (sign-ins): an address, or an IPv6 client's /64,
/// gets so many attempts a minute. Addresses quiet long enough to be back
/// at a full allowance are forgotten by [`AddressLimiter::prune`].
pub struct AddressLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl AddressLimiter {
    pub fn per_minute(attempts: u32) -> Self {
        Self(RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(attempts).unwrap_or(NonZeroU32::MIN))))
    }

    /// Spends one attempt of `ip`'s allowance; false when it is used up.
    pub fn attempt(&self, ip: IpAddr) -> bool {
        self.0.check_key(&throttle_key(ip)).is_ok()
    }

    /// Forgets addresses back at a full allowance.
    pub fn prune(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }

    /// Addresses remembered.
    pub fn tracked(&self) -> usize {
        self.0.len()
    }
}

/// What an address counts as in per-address throttles: itself for IPv4,
/// its /64 for IPv6 (one host is handed a whole /64 and can rotate through
/// it), IPv4-mapped IPv6 as the IPv4 address.
pub fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let key = |text: &str| throttle_key(text.parse().unwrap()).to_string();
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), "2001:db8:1:2::");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn failed_authentications_count_per_ipv6_64() {
        let limits = AdmissionLimits {
            requests_per_second: 0,
            failures_per_minute: 2,
            failure_backoff: Duration::from_secs(60),
        };
        let admission = Admission::new(limits, Arc::new(Metrics::default()));
        for host in 1..=3 {
            admission.record_failure(Some(format!("2001:db8:7:7::{host}").parse().unwrap()));
        }
        let rotated = admission.check_peer(Some("2001:db8:7:7:ffff::9".parse().unwrap()));
        assert!(matches!(rotated, Err(Error::Throttled { .. })), "another address of the same /64: {rotated:?}");
        assert!(admission.check_peer(Some("2001:db8:7:8::1".parse().unwrap())).is_ok(), "another /64");
        assert!(admission.check_peer(Some("192.0.2.1".parse().unwrap())).is_ok());
    }

    #[test]
    fn sign_in_allowances_count_per_64_and_quiet_addresses_are_forgotten() {
        let limiter = AddressLimiter::per_minute(1);
        assert!(limiter.attempt("2001:db8:1:2::1".parse().unwrap()));
        assert!(!limiter.attempt("2001:db8:1:2::abcd".parse().unwrap()), "the same /64");
        let quick = AddressLimiter::per_minute(60_000);
        for host in 0..100u8 {
            assert!(quick.attempt(IpAddr::from([192, 0, 2, host])));
        }
        assert_eq!(quick.tracked(), 100);
        std::thread::sleep(Duration::from_millis(20));
        quick.prune();
        assert_eq!(quick.tracked(), 0, "addresses back at a full allowance are forgotten");
    }
}
