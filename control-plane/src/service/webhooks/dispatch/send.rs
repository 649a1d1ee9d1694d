//! Sending one attempt: the Standard Webhooks request (body, id, timestamp,
//! every live signature, and a legacy header if the subscription has one),
//! the endpoint's answer (status, `Retry-After`, a body excerpt), and what
//! that answer means for the delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::health::GONE;
use super::retry::RetrySchedule;
use crate::crypto::signing::legacy::SignatureScheme;
use crate::crypto::signing::{WebhookSecret, signature_header};
use crate::egress::{EgressClient, Failure};
use crate::metrics::Metrics;
use crate::store::deliveries::{self, AttemptRecord, NextStep};
use crate::store::{self, events, webhooks};

/// Response bytes kept per attempt.
const EXCERPT_BYTES: usize = 4096;

/// What an endpoint answered.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    excerpt: String,
}

/// Sends attempts through the egress-checked client.
pub struct Sender {
    client: EgressClient,
    schedule: RetrySchedule,
    metrics: Arc<Metrics>,
}

impl Sender {
    pub fn new(client: EgressClient, schedule: RetrySchedule, metrics: Arc<Metrics>) -> Self {
        Self { client, schedule, metrics }
    }

    /// Sends one attempt of `delivery` and says what happened and what follows.
    pub async fn attempt(
        &self,
        delivery: &deliveries::Model,
        subscription: &webhooks::Model,
        event: &events::Model,
        secrets: &[WebhookSecret],
    ) -> AttemptRecord {
        let number = delivery.attempt_count + 1;
        let started_at = store::now();
        let clock = Instant::now();
        let answer = self.post(subscription, event, secrets).await;
        let latency = clock.elapsed();
        let succeeded = matches!(&answer, Ok(a) if (200..300).contains(&a.status));
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.metrics.webhook_attempts.get_or_create(&vec![("outcome", outcome)]).inc();
        self.metrics.webhook_attempt_seconds.observe(latency.as_secs_f64());
        let now = store::now();
        let (status_code, error, excerpt, next) = match answer {
            Ok(answer) if succeeded => (Some(answer.status), None, answer.excerpt, NextStep::Succeeded),
            Ok(answer) if answer.status == 410 => (Some(410), Some(GONE.to_owned()), answer.excerpt, NextStep::Failed),
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

    /// POSTs `event` to the subscription's URL, signed with every secret.
    async fn post(
        &self,
        subscription: &webhooks::Model,
        event: &events::Model,
        secrets: &[WebhookSecret],
    ) -> Result<Answer, Failure> {
        // Saved URLs were checked when saved; one that no longer parses is not for sending.
        let url = reqwest::Url::parse(&subscription.url).map_err(|_| Failure::NotAllowed)?;
        let body = delivery_body(event);
        let timestamp = Utc::now().timestamp();
        let signature = signature_header(secrets, &event.id, timestamp, body.as_bytes());
        let mut request = self
            .client
            .post(url)?
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let SignatureScheme::HmacHeader(legacy) = subscription.signature_scheme() {
            for (name, value) in legacy.headers(secrets, timestamp, body.as_bytes()) {
                request = request.header(name, value);
            }
        }
        let mut response = request.body(body).send().await.map_err(|e| self.client.failure(e))?;
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk[..chunk.len().min(EXCERPT_BYTES - excerpt.len())]),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Answer { status, retry_after, excerpt: String::from_utf8_lossy(&excerpt).into_owned() })
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
