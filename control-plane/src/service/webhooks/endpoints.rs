//! How deliveries reach an endpoint beyond its URL: custom request headers,
//! a client certificate for mutual TLS, a private CA, a shorter timeout.
//! Headers, certificates and the key are sealed together (associated data
//! [`associated`]); the timeout is a plain column. A subscription shows
//! only [`OptionsView`]: header names, a certificate fingerprint, a count.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::policy::WebhookPolicy;
use crate::crypto::MasterKeys;
use crate::egress::{EgressClient, EgressPolicy, EndpointTls};
use crate::error::{Error, Result};
use crate::service::validate::Violations;
use crate::store::webhooks;

/// Most custom headers on one endpoint.
const MAX_HEADERS: usize = 20;
/// Longest header value.
const MAX_HEADER_VALUE: usize = 4096;
/// Largest PEM text (a certificate chain, a CA bundle).
const MAX_PEM_BYTES: usize = 64 * 1024;
/// Shortest endpoint timeout.
const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Headers Keyplane sets itself, or that belong to the connection (besides
/// every `webhook-*`, `content-*` and `proxy-*` header).
const RESERVED: [&str; 9] =
    ["host", "user-agent", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "expect"];

/// The associated data of a subscription's sealed options.
pub fn associated(subscription_id: &str) -> String {
    format!("{subscription_id}:options")
}

/// Delivery options as an admin gives them. Its `Debug` names headers only.
#[derive(Clone, Default)]
pub struct DeliveryOptions {
    pub headers: Vec<(String, String)>,
    pub client_certificate_pem: String,
    pub client_key_pem: String,
    pub ca_bundle_pem: String,
    /// The endpoint's own timeout; `None`: the dispatcher's.
    pub timeout: Option<Duration>,
}

impl fmt::Debug for DeliveryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryOptions")
            .field("headers", &self.headers.iter().map(|(name, _)| name).collect::<Vec<_>>())
            .field("client_certificate", &!self.client_certificate_pem.is_empty())
            .field("ca_bundle", &!self.ca_bundle_pem.is_empty())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What is sealed.
#[derive(Default, Serialize, Deserialize)]
struct Sealed {
    headers: Vec<(String, String)>,
    #[serde(default)]
    client_certificate_pem: String,
    #[serde(default)]
    client_key_pem: String,
    #[serde(default)]
    ca_bundle_pem: String,
}

impl Sealed {
    fn open(keys: &MasterKeys, subscription: &webhooks::Model) -> Result<Option<Self>> {
        let Some(sealed) = &subscription.sealed_options else { return Ok(None) };
        let plain = keys.open(sealed, &associated(&subscription.id))?;
        let options = serde_json::from_slice(&plain)
            .map_err(|_| Error::Sealing("sealed delivery options do not parse".into()))?;
        Ok(Some(options))
    }

    fn tls(&self) -> Option<EndpointTls> {
        if self.client_certificate_pem.is_empty() && self.ca_bundle_pem.is_empty() {
            return None;
        }
        let identity = (!self.client_certificate_pem.is_empty())
            .then(|| format!("{}\n{}", self.client_certificate_pem, self.client_key_pem));
        let roots = (!self.ca_bundle_pem.is_empty()).then(|| self.ca_bundle_pem.clone());
        Some(EndpointTls { identity_pem: identity, ca_bundle_pem: roots })
    }
}

/// Checked options, ready to store with [`Self::seal`].
#[derive(Default)]
pub struct CheckedOptions {
    sealed: Option<Sealed>,
    timeout: Option<Duration>,
}

impl CheckedOptions {
    /// The sealed column of subscription `id`: `None` without headers or TLS.
    pub fn seal(&self, keys: &MasterKeys, id: &str) -> Result<Option<String>> {
        let Some(sealed) = &self.sealed else { return Ok(None) };
        let plain = serde_json::to_vec(sealed).map_err(|e| Error::Sealing(format!("encoding options: {e}")))?;
        keys.seal(&plain, &associated(id)).map(Some)
    }

    /// The timeout column.
    pub fn timeout_ms(&self) -> Option<i32> {
        self.timeout.map(|t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX))
    }

    /// What the audit log records: names and kinds, never values.
    pub fn audit(&self) -> serde_json::Value {
        let sealed = self.sealed.as_ref();
        serde_json::json!({
            "headers": sealed.map(|s| s.headers.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>()),
            "client_certificate": sealed.is_some_and(|s| !s.client_certificate_pem.is_empty()),
            "ca_bundle": sealed.is_some_and(|s| !s.ca_bundle_pem.is_empty()),
            "timeout_ms": self.timeout_ms(),
        })
    }
}

/// Checks `options` (field names under `field`), recording what is wrong.
pub fn check(
    violations: &mut Violations,
    policy: &WebhookPolicy,
    field: &str,
    options: DeliveryOptions,
) -> CheckedOptions {
    let DeliveryOptions { headers, client_certificate_pem, client_key_pem, ca_bundle_pem, timeout } = options;
    if headers.len() > MAX_HEADERS {
        violations.add(format!("{field}.headers"), format!("at most {MAX_HEADERS} headers"));
    }
    for (i, (name, value)) in headers.iter().enumerate() {
        if let Err(why) = check_header(name, value) {
            violations.add(format!("{field}.headers[{i}]"), why);
        } else if headers[..i].iter().any(|(earlier, _)| earlier.eq_ignore_ascii_case(name)) {
            violations.add(format!("{field}.headers[{i}].name"), format!("{name:?} is named twice"));
        }
    }
    let sealed = Sealed { headers, client_certificate_pem, client_key_pem, ca_bundle_pem };
    check_tls(violations, field, &sealed);
    if let Some(timeout) = timeout.filter(|t| !t.is_zero())
        && !(MIN_TIMEOUT..=policy.request_timeout).contains(&timeout)
    {
        violations.add(
            format!("{field}.timeout"),
            format!(
                "must be between 1s and the server's --webhook-timeout ({})",
                humantime::format_duration(policy.request_timeout)
            ),
        );
    }
    let empty = sealed.headers.is_empty() && sealed.tls().is_none();
    CheckedOptions { sealed: (!empty).then_some(sealed), timeout: timeout.filter(|t| !t.is_zero()) }
}

fn check_header(name: &str, value: &str) -> std::result::Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
        return Err(format!("{name:?} is not a header name"));
    }
    if RESERVED.contains(&lower.as_str())
        || lower.starts_with("webhook-")
        || lower.starts_with("content-")
        || lower.starts_with("proxy-")
    {
        return Err(format!("{name} is set by Keyplane or the connection; choose another header"));
    }
    if value.len() > MAX_HEADER_VALUE || HeaderValue::from_str(value).is_err() {
        return Err(format!("the value of {name} must be at most {MAX_HEADER_VALUE} visible characters"));
    }
    Ok(())
}

/// Checks the certificates and key, and that they make a TLS configuration.
fn check_tls(violations: &mut Violations, field: &str, sealed: &Sealed) {
    let certificate = &sealed.client_certificate_pem;
    let key = &sealed.client_key_pem;
    let mut problems: Vec<(&str, String)> = Vec::new();
    match (certificate.is_empty(), key.is_empty()) {
        (true, false) => problems.push(("client_certificate_pem", "is required with a client key".into())),
        (false, true) => problems.push(("client_key_pem", "is required with a client certificate".into())),
        (false, false) => {
            if pem_certificates(certificate).is_none() {
                problems.push(("client_certificate_pem", "is not a PEM certificate (chain)".into()));
            }
            if key.len() > MAX_PEM_BYTES || PrivateKeyDer::from_pem_slice(key.as_bytes()).is_err() {
                problems.push(("client_key_pem", "is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".into()));
            }
        }
        (true, true) => {}
    }
    if !sealed.ca_bundle_pem.is_empty() && pem_certificates(&sealed.ca_bundle_pem).is_none() {
        problems.push(("ca_bundle_pem", "is not a bundle of PEM certificates".into()));
    }
    if problems.is_empty()
        && let Some(tls) = sealed.tls()
        && let Err(why) = EndpointTls::check(&tls)
    {
        let name = if tls.identity_pem.is_some() { "client_key_pem" } else { "ca_bundle_pem" };
        problems.push((name, format!("cannot be used: {why}")));
    }
    for (name, why) in problems {
        violations.add(format!("{field}.{name}"), why);
    }
}

/// The DER certificates of a PEM text, if it holds at least one and nothing unreadable.
fn pem_certificates(pem: &str) -> Option<Vec<CertificateDer<'static>>> {
    if pem.len() > MAX_PEM_BYTES {
        return None;
    }
    let certificates: Vec<_> =
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<std::result::Result<_, _>>().ok()?;
    (!certificates.is_empty()).then_some(certificates)
}

/// What a subscription shows of its options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionsView {
    pub header_names: Vec<String>,
    /// SHA-256 of the client certificate's DER, in hex.
    pub client_certificate_sha256: Option<String>,
    /// CA certificates trusted instead of the public roots.
    pub ca_certificates: usize,
    pub timeout: Option<Duration>,
}

/// The options of `subscription`, as shown.
pub fn view(keys: &MasterKeys, subscription: &webhooks::Model) -> Result<OptionsView> {
    let timeout = subscription.timeout_ms.and_then(|ms| u64::try_from(ms).ok()).map(Duration::from_millis);
    let Some(sealed) = Sealed::open(keys, subscription)? else {
        return Ok(OptionsView { timeout, ..OptionsView::default() });
    };
    let fingerprint = pem_certificates(&sealed.client_certificate_pem)
        .and_then(|chain| chain.into_iter().next())
        .map(|der| crate::crypto::hex(&Sha256::digest(der.as_ref())));
    Ok(OptionsView {
        header_names: sealed.headers.into_iter().map(|(name, _)| name).collect(),
        client_certificate_sha256: fingerprint,
        ca_certificates: pem_certificates(&sealed.ca_bundle_pem).map_or(0, |c| c.len()),
        timeout,
    })
}

/// An endpoint's options, opened for sending.
pub struct Endpoint {
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A client of its own, for mutual TLS or a private CA.
    pub client: Option<EgressClient>,
    pub timeout: Option<Duration>,
}

impl Endpoint {
    /// Opens `subscription`'s options; its own client is built with `egress`
    /// and times out after `timeout` (the dispatcher's).
    pub fn open(
        keys: &MasterKeys,
        subscription: &webhooks::Model,
        egress: &Arc<EgressPolicy>,
        timeout: Duration,
    ) -> Result<Self> {
        let own_timeout = subscription.timeout_ms.and_then(|ms| u64::try_from(ms).ok()).map(Duration::from_millis);
        let Some(sealed) = Sealed::open(keys, subscription)? else {
            return Ok(Self { headers: Vec::new(), client: None, timeout: own_timeout });
        };
        let headers = sealed
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((HeaderName::from_bytes(name.as_bytes()).ok()?, HeaderValue::from_str(value).ok()?))
            })
            .collect();
        let client = match sealed.tls() {
            Some(tls) => Some(
                egress
                    .client_with_tls(timeout, &tls)
                    .map_err(|e| Error::Config(format!("the endpoint's TLS settings cannot be used: {e}")))?,
            ),
            None => None,
        };
        Ok(Self { headers, client, timeout: own_timeout })
    }
}
