//! The operator's rules for where endpoints may be and how much an org may
//! use: URL checks, hosts that need approval, subscription and payload limits.

use std::sync::Arc;
use std::time::Duration;

use crate::egress::EgressPolicy;
use crate::error::{Error, Result};

/// `--webhook-timeout`'s default.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest endpoint URL.
const MAX_URL_LEN: usize = 2048;

/// Operator rules for subscriptions and events.
#[derive(Clone, Debug)]
pub struct WebhookPolicy {
    /// Where endpoints may be.
    pub egress: Arc<EgressPolicy>,
    /// Host suffixes that need no approval (empty: every host).
    pub allowed_hosts: Vec<String>,
    pub max_subscriptions_per_org: u64,
    pub max_payload_bytes: usize,
    /// The dispatcher's request timeout: an endpoint's own may only be shorter.
    pub request_timeout: Duration,
}

impl WebhookPolicy {
    /// A policy allowing hosts under `allowed_hosts` (suffixes; a leading dot
    /// is ignored) without approval.
    pub fn new(
        egress: Arc<EgressPolicy>,
        allowed_hosts: &[String],
        max_subscriptions_per_org: u64,
        max_payload_bytes: usize,
    ) -> Self {
        Self {
            egress,
            allowed_hosts: allowed_hosts.iter().map(|h| h.trim_start_matches('.').to_ascii_lowercase()).collect(),
            max_subscriptions_per_org,
            max_payload_bytes,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The policy for a dispatcher whose requests time out after `timeout`.
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        Self { request_timeout: timeout, ..self }
    }

    /// Whether an endpoint on `host` waits for an admin's approval.
    pub fn needs_approval(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        !self.allowed_hosts.is_empty()
            && !self.allowed_hosts.iter().any(|allowed| host == *allowed || host.ends_with(&format!(".{allowed}")))
    }

    /// Checks an endpoint URL; returns its host.
    pub fn check_url(&self, field: &str, url: &str) -> Result<String> {
        if url.len() > MAX_URL_LEN {
            return Err(Error::invalid(field, format!("must be at most {MAX_URL_LEN} characters")));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| Error::invalid(field, format!("is not a URL: {e}")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::invalid(field, "must not contain credentials"));
        }
        if parsed.fragment().is_some() {
            return Err(Error::invalid(field, "must not contain a fragment"));
        }
        // Scheme, and IP literals or `localhost` in refused ranges: refused
        // when saved, and checked again on every resolved address.
        self.egress.check_url(&parsed).map_err(|why| Error::invalid(field, why))?;
        parsed.host_str().map(str::to_owned).ok_or_else(|| Error::invalid(field, "must have a host"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_outside_the_allow_list_need_approval() {
        let policy = WebhookPolicy::new(Arc::default(), &["example.com".into()], 50, 1024);
        assert!(!policy.needs_approval("example.com"));
        assert!(!policy.needs_approval("hooks.Example.com"));
        assert!(policy.needs_approval("badexample.com"));
        assert!(policy.needs_approval("example.org"));
    }
}
