//! Sending one attempt: the Standard Webhooks request (body, id, timestamp,
//! every live signature, and a legacy header if the subscription has one),
//! the endpoint's answer (status, `Retry-After`, a body excerpt), and what
//! that answer means for the delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::health::{ABORTED, GONE};
use super::retry::RetrySchedule;
use crate::crypto::MasterKeys;
use crate::crypto::signing::legacy::SignatureScheme;
use crate::crypto::signing::{WebhookSecret, signature_header};
use crate::egress::{EgressClient, EgressPolicy, Failure};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::service::webhooks::endpoints::Endpoint;
use crate::store::deliveries::{self, AttemptRecord, NextStep};
use crate::store::{self, events, webhooks};

/// Response bytes kept per attempt.
const EXCERPT_BYTES: usize = 4096;

/// What an endpoint answered.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    /// It answered `webhook-delivery: abort-message`: no more retries.
    abort: bool,
    excerpt: String,
}

/// The answer header with which a receiver stops a delivery's retries
/// (Svix's `webhook-delivery: abort-message`).
const DELIVERY_CONTROL: (&str, &str) = ("webhook-delivery", "abort-message");

/// Endpoints whose options are kept opened at most.
const OPENED_ENDPOINTS: u64 = 10_000;
/// How long opened options are kept unused.
const OPENED_IDLE: Duration = Duration::from_secs(600);

/// Sends attempts through the egress-checked client (or an endpoint's own,
/// for mutual TLS or a private CA).
pub struct Sender {
    client: EgressClient,
    egress: Arc<EgressPolicy>,
    timeout: Duration,
    schedule: RetrySchedule,
    metrics: Arc<Metrics>,
    /// Opened delivery options by subscription, with the `updated_at` they
    /// were opened at (a changed subscription is opened again).
    endpoints: moka::sync::Cache<String, (DateTime<Utc>, Arc<Endpoint>)>,
}

impl Sender {
    /// A sender whose requests go through `egress` and time out after `timeout`.
    pub fn new(
        egress: &Arc<EgressPolicy>,
        timeout: Duration,
        schedule: RetrySchedule,
        metrics: Arc<Metrics>,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            client: egress.client(timeout)?,
            egress: egress.clone(),
            timeout,
            schedule,
            metrics,
            endpoints: moka::sync::Cache::builder().max_capacity(OPENED_ENDPOINTS).time_to_idle(OPENED_IDLE).build(),
        })
    }

    /// The opened delivery options of `subscription`, if it has any.
    pub fn endpoint(&self, keys: &MasterKeys, subscription: &webhooks::Model) -> Result<Option<Arc<Endpoint>>> {
        if !subscription.has_options() {
            return Ok(None);
        }
        if let Some((opened_at, endpoint)) = self.endpoints.get(&subscription.id)
            && opened_at == subscription.updated_at
        {
            return Ok(Some(endpoint));
        }
        let endpoint = Arc::new(Endpoint::open(keys, subscription, &self.egress, self.timeout)?);
        self.endpoints.insert(subscription.id.clone(), (subscription.updated_at, endpoint.clone()));
        Ok(Some(endpoint))
    }

    /// Sends one attempt of `delivery` and says what happened and what follows.
    pub async fn attempt(
        &self,
        delivery: &deliveries::Model,
        subscription: &webhooks::Model,
        event: &events::Model,
        secrets: &[WebhookSecret],
        endpoint: Option<&Endpoint>,
    ) -> AttemptRecord {
        let number = delivery.attempt_count + 1;
        let started_at = store::now();
        let clock = Instant::now();
        let answer = self.post(subscription, event, secrets, endpoint).await;
        let latency = clock.elapsed();
        let succeeded = matches!(&answer, Ok(a) if (200..300).contains(&a.status));
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.metrics.webhook_attempts.get_or_create(&vec![("outcome", outcome)]).inc();
        self.metrics.webhook_attempt_seconds.observe(latency.as_secs_f64());
        let now = store::now();
        let (status_code, error, excerpt, next) = match answer {
            Ok(answer) if succeeded => (Some(answer.status), None, answer.excerpt, NextStep::Succeeded),
            Ok(answer) if answer.status == 410 => (Some(410), Some(GONE.to_owned()), answer.excerpt, NextStep::Failed),
            Ok(answer) if answer.abort => {
                (Some(answer.status), Some(ABORTED.to_owned()), answer.excerpt, NextStep::Failed)
            }
            Ok(answer) => {
                let why = if (300..400).contains(&answer.status) {
                    format!("HTTP {} (redirects are not followed)", answer.status)
                } else {
                    format!("HTTP {}", answer.status)
                };
                let next = self.schedule.after_failure(number, answer.retry_after, now);
                (Some(answer.status), Some(why), answer.excerpt, next)
            }
            Err(failure) => {
                (None, Some(failure.as_str().to_owned()), String::new(), self.schedule.after_failure(number, None, now))
            }
        };
        AttemptRecord {
            delivery_id: delivery.id.clone(),
            org_id: delivery.org_id.clone(),
            subscription_id: delivery.subscription_id.clone(),
            event_type: delivery.event_type.clone(),
            failing_since: subscription.failing_since,
            number: Some(number),
            started_at,
            status_code: status_code.map(i32::from),
            latency_micros: i64::try_from(latency.as_micros()).unwrap_or(i64::MAX),
            error,
            response_excerpt: (!excerpt.is_empty()).then_some(excerpt),
            next,
        }
    }

    /// POSTs `event` to the subscription's URL, signed with every secret,
    /// with the endpoint's headers (Keyplane's own headers win a clash).
    async fn post(
        &self,
        subscription: &webhooks::Model,
        event: &events::Model,
        secrets: &[WebhookSecret],
        endpoint: Option<&Endpoint>,
    ) -> Result<Answer, Failure> {
        // Saved URLs were checked when saved; one that no longer parses is not for sending.
        let url = reqwest::Url::parse(&subscription.url).map_err(|_| Failure::NotAllowed)?;
        let client = endpoint.and_then(|e| e.client.as_ref()).unwrap_or(&self.client);
        let body = delivery_body(event);
        let timestamp = Utc::now().timestamp();
        let signature = signature_header(secrets, &event.id, timestamp, body.as_bytes());
        let mut own = HeaderMap::with_capacity(6);
        own.insert("webhook-id", HeaderValue::from_str(&event.id).map_err(|_| Failure::Request)?);
        own.insert("webhook-timestamp", HeaderValue::from(timestamp));
        own.insert("webhook-signature", HeaderValue::from_str(&signature).map_err(|_| Failure::Request)?);
        own.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let SignatureScheme::HmacHeader(legacy) = subscription.signature_scheme() {
            for (name, value) in legacy.headers(secrets, timestamp, body.as_bytes()) {
                if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                    own.insert(name, value);
                }
            }
        }
        let mut request = client.post(url)?;
        if let Some(endpoint) = endpoint {
            for (name, value) in &endpoint.headers {
                request = request.header(name, value);
            }
            if let Some(timeout) = endpoint.timeout {
                request = request.timeout(timeout);
            }
        }
        let mut response = request.headers(own).body(body).send().await.map_err(|e| client.failure(e))?;
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let abort = response.headers().get_all(DELIVERY_CONTROL.0).iter().any(|v| {
            v.to_str().is_ok_and(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(DELIVERY_CONTROL.1)))
        });
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Answer { status, retry_after, abort, excerpt: String::from_utf8_lossy(&excerpt).into_owned() })
    }
}

/// The request body of a delivery: `{"type","timestamp","data"}` with the
/// payload copied byte for byte.
pub fn delivery_body(event: &events::Model) -> String {
    let event_type = Value::String(event.event_type.clone());
    let timestamp = Value::String(event.created_at.to_rfc3339_opts(SecondsFormat::Micros, true));
    format!(r#"{{"type":{event_type},"timestamp":{timestamp},"data":{}}}"#, event.payload)
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value.trim()).ok()?;
    Some((at.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn retry_after_never_panics(text in ".*") {
            let _ = parse_retry_after(&text);
        }

        #[test]
        fn retry_after_seconds_round_trip(seconds in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(parse_retry_after(&seconds.to_string()), Some(Duration::from_secs(seconds)));
        }

        #[test]
        fn retry_after_dates_are_delays(ahead in 2i64..1_000_000) {
            let at = (Utc::now() + chrono::Duration::seconds(ahead)).to_rfc2822();
            let delay = parse_retry_after(&at).expect("an HTTP date parses").as_secs() as i64;
            proptest::prop_assert!((ahead - 2..=ahead).contains(&delay), "{} for {}", delay, ahead);
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert!(parse_retry_after("soon").is_none());
        assert!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
    }
}
