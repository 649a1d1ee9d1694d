//! Conversions between protobuf messages and domain types. Bad values become
//! field violations naming the request field.

mod import;
mod limits;
pub mod roles;
mod schemes;
mod usage;

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyplane_proto::admin::v1 as pb;
use prost_types::value::Kind;
use serde_json::{Number, Value};

use crate::error::{Error, Result};
use crate::service::records::{
    ApiKey, AuditEntry, Connection, Delivery, DeliveryAttempt, DeliveryStatus, Environment, Event, Identity, KeyStatus,
    Subscription, SubscriptionStatus,
};
use crate::service::verify::{Failure, Verification, VerifiedKey};
use crate::service::webhooks::endpoints::{DeliveryOptions, OptionsView};
pub use import::{import_records, import_result_to_proto};
use limits::WithLimits;
pub use limits::{
    CreateLimits, LimitUpdate, credits_change_from_proto, credits_from_proto, new_limits, rate_limit_from_proto,
    read_mask_with_limits, refill_from_proto,
};
pub use schemes::scheme_from_proto;
pub use usage::{
    counts_to_proto, delivery_stats_to_proto, granularity_from_proto, key_ranking_to_proto, outcome_from_proto,
    range_from_proto, usage_report_from_proto,
};

/// Protobuf timestamp → UTC time.
pub fn time_from_proto(field: &str, ts: prost_types::Timestamp) -> Result<DateTime<Utc>> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))
}

/// UTC time → protobuf timestamp.
pub fn time_to_proto(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Protobuf duration → non-negative duration.
pub fn duration_from_proto(field: &str, duration: prost_types::Duration) -> Result<Duration> {
    Duration::try_from(duration).map_err(|_| Error::invalid(field, "must be a non-negative duration"))
}

/// Protobuf environment → domain (`None` for unspecified).
pub fn environment_from_proto(field: &str, value: i32) -> Result<Option<Environment>> {
    match pb::Environment::try_from(value) {
        Ok(pb::Environment::Unspecified) => Ok(None),
        Ok(pb::Environment::Live) => Ok(Some(Environment::Live)),
        Ok(pb::Environment::Test) => Ok(Some(Environment::Test)),
        Err(_) => {
            Err(Error::invalid(field, format!("unknown environment {value}; use ENVIRONMENT_LIVE or ENVIRONMENT_TEST")))
        }
    }
}

/// Domain environment → protobuf.
pub fn environment_to_proto(environment: Environment) -> pb::Environment {
    match environment {
        Environment::Live => pb::Environment::Live,
        Environment::Test => pb::Environment::Test,
    }
}

/// Protobuf status filter → key status (`None` for any).
pub fn status_from_proto(field: &str, value: i32) -> Result<Option<KeyStatus>> {
    match pb::ApiKeyStatus::try_from(value) {
        Ok(pb::ApiKeyStatus::Unspecified) => Ok(None),
        Ok(pb::ApiKeyStatus::Active) => Ok(Some(KeyStatus::Active)),
        Ok(pb::ApiKeyStatus::Revoked) => Ok(Some(KeyStatus::Revoked)),
        Ok(pb::ApiKeyStatus::Expired) => Ok(Some(KeyStatus::Expired)),
        Err(_) => Err(Error::invalid(field, format!("unknown status {value}"))),
    }
}

fn key_status_to_proto(status: KeyStatus) -> pb::ApiKeyStatus {
    match status {
        KeyStatus::Active => pb::ApiKeyStatus::Active,
        KeyStatus::Revoked => pb::ApiKeyStatus::Revoked,
        KeyStatus::Expired => pb::ApiKeyStatus::Expired,
    }
}

/// Protobuf `Struct` → JSON object.
pub fn struct_to_json(field: &str, value: prost_types::Struct) -> Result<Value> {
    fn convert(value: prost_types::Value) -> Option<Value> {
        Some(match value.kind? {
            Kind::NullValue(_) => Value::Null,
            Kind::BoolValue(b) => Value::Bool(b),
            Kind::NumberValue(n) => {
                // Integral values stay integers so JSON round-trips cleanly.
                if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                    Value::Number(Number::from(n as i64))
                } else {
                    Value::Number(Number::from_f64(n)?)
                }
            }
            Kind::StringValue(s) => Value::String(s),
            Kind::ListValue(list) => Value::Array(list.values.into_iter().map(convert).collect::<Option<_>>()?),
            Kind::StructValue(object) => {
                Value::Object(object.fields.into_iter().map(|(k, v)| Some((k, convert(v)?))).collect::<Option<_>>()?)
            }
        })
    }
    convert(prost_types::Value { kind: Some(Kind::StructValue(value)) })
        .ok_or_else(|| Error::invalid(field, "must be valid JSON (no NaN or infinite numbers)"))
}

/// JSON object → protobuf `Struct` (`None` for anything but an object).
pub fn json_to_struct(value: &Value) -> Option<prost_types::Struct> {
    fn convert(value: &Value) -> prost_types::Value {
        let kind = match value {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(items) => {
                Kind::ListValue(prost_types::ListValue { values: items.iter().map(convert).collect() })
            }
            Value::Object(map) => Kind::StructValue(prost_types::Struct {
                fields: map.iter().map(|(k, v)| (k.clone(), convert(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match convert(value).kind {
        Some(Kind::StructValue(object)) => Some(object),
        _ => None,
    }
}

/// Key → protobuf resource (no secret material).
pub fn api_key_to_proto(key: &ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: key.id.clone(),
        org_id: key.org_id.clone(),
        name: key.name.clone(),
        description: key.description.clone(),
        environment: environment_to_proto(key.environment).into(),
        scopes: key.scope_list(),
        status: key_status_to_proto(key.status).into(),
        start: key.start.clone(),
        expires_at: key.expires_at.map(time_to_proto),
        metadata: key.metadata.as_ref().and_then(json_to_struct),
        recoverable: key.sealed_token.is_some(),
        created_by: key.created_by.clone(),
        created_at: Some(time_to_proto(key.created_at)),
        updated_at: Some(time_to_proto(key.updated_at)),
        revoked_at: key.revoked_at.map(time_to_proto),
        revoked_by: key.revoked_by.clone().unwrap_or_default(),
        revocation_reason: key.revocation_reason.clone().unwrap_or_default(),
        rotated_from: key.rotated_from.clone().unwrap_or_default(),
        last_used_at: key.last_used_at.map(time_to_proto),
        usage_count: u64::try_from(key.usage_count).unwrap_or(0),
        identity_id: key.identity_id.clone().unwrap_or_default(),
        ..Default::default()
    }
    .with_limits(key)
}

/// Identity → protobuf resource.
pub fn identity_to_proto(identity: &Identity) -> pb::Identity {
    pb::Identity {
        id: identity.id.clone(),
        org_id: identity.org_id.clone(),
        external_id: identity.external_id.clone(),
        metadata: identity.metadata.as_ref().and_then(json_to_struct),
        created_at: Some(time_to_proto(identity.created_at)),
        updated_at: Some(time_to_proto(identity.updated_at)),
        ..Default::default()
    }
    .with_limits(identity)
}

/// Reads each path of a required update mask with `read`, which answers
/// false for a path it does not know.
pub fn read_mask(mask: Option<&prost_types::FieldMask>, mut read: impl FnMut(&str) -> Result<bool>) -> Result<()> {
    let paths = &mask.ok_or_else(|| Error::invalid("update_mask", "is required"))?.paths;
    for path in paths {
        if !read(path)? {
            return Err(Error::invalid("update_mask", format!("unknown or unchangeable field {path:?}")));
        }
    }
    Ok(())
}

/// The principal a verified key speaks for.
pub fn principal_to_proto(verified: &VerifiedKey) -> pb::Principal {
    let key = &verified.key;
    pb::Principal {
        key_id: key.id.clone(),
        org_id: key.org_id.clone(),
        environment: environment_to_proto(key.environment).into(),
        scopes: key.scope_list(),
        expires_at: key.expires_at.map(time_to_proto),
        identity: verified.identity.as_ref().map(|identity| {
            pb::PrincipalIdentity {
                id: identity.id.clone(),
                external_id: identity.external_id.clone(),
                ..Default::default()
            }
            .with_limits(identity)
        }),
        permissions: verified.grants.names(),
        roles: verified.grants.roles.iter().map(roles::role_ref_to_proto).collect(),
        ..Default::default()
    }
    .with_limits(key)
}

/// Domain failure → protobuf enum.
pub fn failure_to_proto(failure: Failure) -> pb::VerifyFailure {
    match failure {
        Failure::Malformed => pb::VerifyFailure::Malformed,
        Failure::Unknown => pb::VerifyFailure::Unknown,
        Failure::BadSecret => pb::VerifyFailure::BadSecret,
        Failure::Revoked => pb::VerifyFailure::Revoked,
        Failure::Denied(denied) => denied.into(),
        Failure::Throttled => pb::VerifyFailure::Throttled,
        Failure::CreditsExhausted => pb::VerifyFailure::CreditsExhausted,
    }
}

/// Verification → (valid, failure, principal).
pub fn verification_to_proto(verification: &Verification) -> (bool, pb::VerifyFailure, Option<pb::Principal>) {
    match verification {
        Verification::Valid(verified) => (true, pb::VerifyFailure::Unspecified, Some(principal_to_proto(verified))),
        Verification::Invalid(failure, verified) => {
            (false, failure_to_proto(*failure), verified.as_deref().map(principal_to_proto))
        }
    }
}

/// Audit row → protobuf.
pub fn audit_event_to_proto(entry: AuditEntry) -> pb::AuditEvent {
    let AuditEntry { event, actor_name } = entry;
    pb::AuditEvent {
        actor_name: actor_name.unwrap_or_default(),
        metadata: json_to_struct(&event.metadata),
        created_at: Some(time_to_proto(event.created_at)),
        seq: u64::try_from(event.seq).unwrap_or(0),
        id: event.id,
        org_id: event.org_id,
        actor_type: event.actor_type,
        actor_id: event.actor_id,
        action: event.action,
        target_type: event.target_type,
        target_id: event.target_id,
        request_id: event.request_id,
        peer_address: event.peer_address,
        user_agent: event.user_agent,
        prev_hash: event.prev_hash,
        hash: event.hash,
    }
}

/// Subscription and what it shows of its delivery options → protobuf
/// resource (never its secrets).
pub fn subscription_to_proto(subscription: &Subscription, options: OptionsView) -> pb::Subscription {
    let status = match subscription.status {
        SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
        SubscriptionStatus::Disabled => pb::SubscriptionStatus::Disabled,
        SubscriptionStatus::PendingApproval => pb::SubscriptionStatus::PendingApproval,
    };
    pb::Subscription {
        id: subscription.id.clone(),
        org_id: subscription.org_id.clone(),
        url: subscription.url.clone(),
        event_types: subscription.event_type_list(),
        description: subscription.description.clone(),
        status: status.into(),
        disabled_reason: subscription.disabled_reason.clone().unwrap_or_default(),
        rate_limit_per_second: u32::try_from(subscription.rate_limit_per_second).unwrap_or(0),
        failing_since: subscription.failing_since.map(time_to_proto),
        created_at: Some(time_to_proto(subscription.created_at)),
        updated_at: Some(time_to_proto(subscription.updated_at)),
        signature_scheme: Some(schemes::scheme_to_proto(&subscription.signature_scheme())),
        channels: subscription.channel_list(),
        delivery_options: Some(pb::DeliveryOptionsView {
            header_names: options.header_names,
            client_certificate_sha256: options.client_certificate_sha256.unwrap_or_default(),
            ca_certificates: u32::try_from(options.ca_certificates).unwrap_or(u32::MAX),
            timeout: options.timeout.and_then(|t| prost_types::Duration::try_from(t).ok()),
        }),
    }
}

/// Protobuf delivery options → domain (checked by the service).
pub fn delivery_options_from_proto(field: &str, options: Option<pb::DeliveryOptions>) -> Result<DeliveryOptions> {
    let Some(options) = options else { return Ok(DeliveryOptions::default()) };
    Ok(DeliveryOptions {
        headers: options.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        client_certificate_pem: options.client_certificate_pem,
        client_key_pem: options.client_key_pem,
        ca_bundle_pem: options.ca_bundle_pem,
        timeout: options.timeout.map(|t| duration_from_proto(&format!("{field}.timeout"), t)).transpose()?,
    })
}

/// Event → protobuf.
pub fn event_to_proto(event: &Event) -> pb::Event {
    pb::Event {
        id: event.id.clone(),
        org_id: event.org_id.clone(),
        event_type: event.event_type.clone(),
        payload_json: event.payload.clone(),
        idempotency_key: event.idempotency_key.clone().unwrap_or_default(),
        created_at: Some(time_to_proto(event.created_at)),
        channels: event.channel_list(),
    }
}

/// Protobuf delivery status filter → delivery status (`None` for any).
pub fn delivery_status_from_proto(field: &str, value: i32) -> Result<Option<DeliveryStatus>> {
    match pb::DeliveryStatus::try_from(value) {
        Ok(pb::DeliveryStatus::Unspecified) => Ok(None),
        Ok(pb::DeliveryStatus::Pending) => Ok(Some(DeliveryStatus::Pending)),
        Ok(pb::DeliveryStatus::Succeeded) => Ok(Some(DeliveryStatus::Succeeded)),
        Ok(pb::DeliveryStatus::Failed) => Ok(Some(DeliveryStatus::Failed)),
        Err(_) => Err(Error::invalid(field, format!("unknown status {value}"))),
    }
}

/// Delivery → protobuf.
pub fn delivery_to_proto(delivery: &Delivery) -> pb::Delivery {
    let status = match delivery.status {
        DeliveryStatus::Pending => pb::DeliveryStatus::Pending,
        DeliveryStatus::Succeeded => pb::DeliveryStatus::Succeeded,
        DeliveryStatus::Failed => pb::DeliveryStatus::Failed,
    };
    pb::Delivery {
        id: delivery.id.clone(),
        org_id: delivery.org_id.clone(),
        subscription_id: delivery.subscription_id.clone(),
        event_id: delivery.event_id.clone(),
        event_type: delivery.event_type.clone(),
        status: status.into(),
        attempt_count: u32::try_from(delivery.attempt_count).unwrap_or(0),
        next_attempt_at: (delivery.status == DeliveryStatus::Pending).then(|| time_to_proto(delivery.next_attempt_at)),
        last_status_code: delivery.last_status_code.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
        last_error: delivery.last_error.clone().unwrap_or_default(),
        created_at: Some(time_to_proto(delivery.created_at)),
        finished_at: delivery.finished_at.map(time_to_proto),
    }
}

/// Attempt → protobuf.
pub fn attempt_to_proto(attempt: &DeliveryAttempt) -> pb::DeliveryAttempt {
    let latency = Duration::from_micros(u64::try_from(attempt.latency_micros).unwrap_or(0));
    pb::DeliveryAttempt {
        number: u32::try_from(attempt.number).unwrap_or(0),
        started_at: Some(time_to_proto(attempt.started_at)),
        status_code: attempt.status_code.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
        latency: prost_types::Duration::try_from(latency).ok(),
        error: attempt.error.clone().unwrap_or_default(),
        response_excerpt: attempt.response_excerpt.clone().unwrap_or_default(),
    }
}

/// Connection → protobuf resource (never its tokens).
pub fn connection_to_proto(connection: &Connection) -> pb::Connection {
    pb::Connection {
        id: connection.id.clone(),
        org_id: connection.org_id.clone(),
        provider: connection.provider.clone(),
        account_label: connection.account_label.clone(),
        scopes: connection.scope_list(),
        access_token_expires_at: connection.expires_at.map(time_to_proto),
        has_refresh_token: connection.sealed_refresh_token.is_some(),
        created_at: Some(time_to_proto(connection.created_at)),
        updated_at: Some(time_to_proto(connection.updated_at)),
        last_refreshed_at: connection.refreshed_at.map(time_to_proto),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_struct_round_trip() {
        let value = serde_json::json!({"a": 1, "b": [true, null, "x", 1.5], "c": {"d": -3}});
        let proto = json_to_struct(&value).unwrap();
        assert_eq!(struct_to_json("metadata", proto).unwrap(), value);
        assert!(json_to_struct(&serde_json::json!([1])).is_none());
    }

    #[test]
    fn nan_is_refused_with_the_field_name() {
        let proto = prost_types::Struct {
            fields: [("x".to_owned(), prost_types::Value { kind: Some(Kind::NumberValue(f64::NAN)) })].into(),
        };
        let error = struct_to_json("metadata", proto).unwrap_err();
        assert!(error.to_string().contains("metadata"));
    }
}
