//! Keyplane's own webhook events, delivered to an org's subscriptions like
//! any published event: one variant each, with its payload type, so the
//! compiler lists every event and what it carries. The table in docs/webhooks.md is
//! checked against [`SystemEvent::NAMES`].

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::store::api_keys::{self, KeyStatus};

/// What events about a key say of it (never its scopes or secrets).
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct KeyData {
    pub key_id: String,
    pub name: String,
    pub environment: &'static str,
    pub status: KeyStatus,
    pub start: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub identity_id: Option<String>,
}

impl From<&api_keys::Model> for KeyData {
    fn from(key: &api_keys::Model) -> Self {
        Self {
            key_id: key.id.clone(),
            name: key.name.clone(),
            environment: key.environment.as_str(),
            status: key.status,
            start: key.start.clone(),
            expires_at: key.expires_at,
            identity_id: key.identity_id.clone(),
        }
    }
}

/// `api_key.rotated`: the old key, and its replacement.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct KeyRotated {
    #[serde(flatten)]
    pub key: KeyData,
    pub new_key_id: String,
    pub grace_seconds: u64,
}

/// `api_key.expiring`: a key expires within the configured lead time.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct KeyExpiring {
    #[serde(flatten)]
    pub key: KeyData,
    /// Seconds from the notice to the expiry.
    pub expires_in_seconds: i64,
}

/// `api_key.deleted`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct KeyDeleted {
    pub key_id: String,
    /// `retention` when the retention of ended keys deleted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// `webhook.endpoint_disabled`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct EndpointDisabled {
    pub subscription_id: String,
    pub reason: String,
}

/// The JSON Schema of `T`.
fn schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// `webhook.endpoint_failing`: the first failed attempt of a run.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct EndpointFailing {
    pub subscription_id: String,
    /// The HTTP status of the failed attempt, if one came.
    pub status_code: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
}

/// `webhook.delivery_exhausted`: a delivery gave up (its last attempt
/// failed, or the endpoint answered 410); it can be retried by hand.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct DeliveryExhausted {
    pub delivery_id: String,
    pub subscription_id: String,
    pub event_type: String,
    pub attempts: i32,
    /// The last attempt's HTTP status, if one came.
    pub status_code: Option<i32>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// `api_key.credits_low`: a key's or an identity's credits fell below its
/// alert (once per refill period; without a refill, once until credits are
/// given again). Leases count as spent: sidecars hold what they leased.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct CreditsLow {
    /// The key whose credits are low, when they are a key's own.
    pub key_id: Option<String>,
    /// The identity whose credits (shared by its keys) are low.
    pub identity_id: Option<String>,
    pub remaining: u64,
    /// Below this many, credits are low.
    pub threshold: u64,
    pub next_refill_at: Option<DateTime<Utc>>,
}

/// `api_key.rate_limited`: a key's checks were refused by a rate limit
/// (its own or its identity's): at most one notice per window, from the
/// sidecars' usage reports.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RateLimited {
    pub key_id: String,
    pub identity_id: Option<String>,
    /// Whose limit refused: `key` or `identity`.
    pub limited_by: &'static str,
    /// Start of the window the refusals fell in.
    pub window_start: DateTime<Utc>,
    pub window_seconds: u64,
    /// Refusals in the report that announced them (more may follow in the window).
    pub refused: u64,
}

/// One of Keyplane's own events.
#[derive(Clone, Debug)]
pub enum SystemEvent {
    ApiKeyCreated(KeyData),
    ApiKeyRotated(KeyRotated),
    ApiKeyRevoked(KeyData),
    ApiKeyExpired(KeyData),
    ApiKeyDeleted(KeyDeleted),
    ApiKeyExpiring(KeyExpiring),
    EndpointDisabled(EndpointDisabled),
    EndpointFailing(EndpointFailing),
    DeliveryExhausted(DeliveryExhausted),
    CreditsLow(CreditsLow),
    RateLimited(RateLimited),
}

impl SystemEvent {
    /// Every event type, as subscriptions name them.
    pub const NAMES: [&'static str; 11] = [
        "api_key.created",
        "api_key.rotated",
        "api_key.revoked",
        "api_key.expired",
        "api_key.deleted",
        "webhook.endpoint_disabled",
        "webhook.endpoint_failing",
        "webhook.delivery_exhausted",
        "api_key.expiring",
        "api_key.credits_low",
        "api_key.rate_limited",
    ];

    /// Whether `event_type` is a notice about endpoints' health: no notice
    /// is sent about a delivery of one (an endpoint that fails everything
    /// would otherwise be sent notices about its notices, without end).
    pub fn is_endpoint_notice(event_type: &str) -> bool {
        Self::NAMES[5..8].contains(&event_type)
    }

    /// The event type.
    pub fn name(&self) -> &'static str {
        match self {
            SystemEvent::ApiKeyCreated(_) => Self::NAMES[0],
            SystemEvent::ApiKeyRotated(_) => Self::NAMES[1],
            SystemEvent::ApiKeyRevoked(_) => Self::NAMES[2],
            SystemEvent::ApiKeyExpired(_) => Self::NAMES[3],
            SystemEvent::ApiKeyDeleted(_) => Self::NAMES[4],
            SystemEvent::EndpointDisabled(_) => Self::NAMES[5],
            SystemEvent::EndpointFailing(_) => Self::NAMES[6],
            SystemEvent::DeliveryExhausted(_) => Self::NAMES[7],
            SystemEvent::ApiKeyExpiring(_) => Self::NAMES[8],
            SystemEvent::CreditsLow(_) => Self::NAMES[9],
            SystemEvent::RateLimited(_) => Self::NAMES[10],
        }
    }

    /// What event type `name` means, for the catalog.
    pub fn description_of(name: &str) -> &'static str {
        match name {
            "api_key.created" => "An API key was created (never its token or scopes).",
            "api_key.rotated" => "An API key was rotated: the old key, its replacement and the grace period.",
            "api_key.revoked" => "An API key was revoked.",
            "api_key.expired" => "An API key reached its expiry.",
            "api_key.deleted" => {
                "An API key was deleted (reason \"retention\" when the retention of ended keys deleted it)."
            }
            "webhook.endpoint_disabled" => "An endpoint was disabled after failing for too long.",
            "webhook.endpoint_failing" => "An endpoint's attempts began to fail (once per run of failures).",
            "webhook.delivery_exhausted" => "A delivery gave up after its last attempt (the dead letter).",
            "api_key.expiring" => {
                "An API key expires within the lead time set by --key-expiring-notice (once per expiry)."
            }
            "api_key.credits_low" => {
                "A key's or an identity's credits fell below its low-credits alert (once per refill period)."
            }
            "api_key.rate_limited" => "A key's checks were refused by its rate limit (at most once per window).",
            _ => "",
        }
    }

    /// The JSON Schema of event type `name`'s payload, generated from its type.
    pub fn schema_of(name: &str) -> Option<Value> {
        Some(match name {
            "api_key.created" | "api_key.revoked" | "api_key.expired" => schema::<KeyData>(),
            "api_key.rotated" => schema::<KeyRotated>(),
            "api_key.deleted" => schema::<KeyDeleted>(),
            "webhook.endpoint_disabled" => schema::<EndpointDisabled>(),
            "webhook.endpoint_failing" => schema::<EndpointFailing>(),
            "webhook.delivery_exhausted" => schema::<DeliveryExhausted>(),
            "api_key.expiring" => schema::<KeyExpiring>(),
            "api_key.credits_low" => schema::<CreditsLow>(),
            "api_key.rate_limited" => schema::<RateLimited>(),
            _ => return None,
        })
    }

    /// The payload (`data` of the delivered body).
    pub fn payload(&self) -> Value {
        let value = match self {
            SystemEvent::ApiKeyCreated(key) | SystemEvent::ApiKeyRevoked(key) | SystemEvent::ApiKeyExpired(key) => {
                serde_json::to_value(key)
            }
            SystemEvent::ApiKeyRotated(rotated) => serde_json::to_value(rotated),
            SystemEvent::ApiKeyDeleted(deleted) => serde_json::to_value(deleted),
            SystemEvent::EndpointDisabled(disabled) => serde_json::to_value(disabled),
            SystemEvent::EndpointFailing(failing) => serde_json::to_value(failing),
            SystemEvent::DeliveryExhausted(exhausted) => serde_json::to_value(exhausted),
            SystemEvent::ApiKeyExpiring(expiring) => serde_json::to_value(expiring),
            SystemEvent::CreditsLow(low) => serde_json::to_value(low),
            SystemEvent::RateLimited(limited) => serde_json::to_value(limited),
        };
        // Plain structs of strings, numbers and times always serialize.
        value.unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_is_listed_in_the_readme_and_valid() {
        let readme = include_str!("../../../../docs/webhooks.md");
        for name in SystemEvent::NAMES {
            assert!(readme.contains(&format!("`{name}`")), "docs/webhooks.md lists system event {name}");
            assert!(super::super::event_types::check_event_type(name).is_ok(), "{name}");
        }
        let deleted = SystemEvent::ApiKeyDeleted(KeyDeleted { key_id: "key_1".into(), reason: None });
        assert_eq!(deleted.payload(), serde_json::json!({ "key_id": "key_1" }));
        assert_eq!(deleted.name(), "api_key.deleted");
    }
}
