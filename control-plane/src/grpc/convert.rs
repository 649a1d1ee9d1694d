//! Conversions between protobuf messages and domain types. Bad values become
//! field violations naming the request field.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyplane_proto::admin::v1 as pb;
use keyplane_proto::check::Denied;
use keyplane_proto::sync::v1 as sync_pb;
use prost_types::value::Kind;
use serde_json::{Number, Value};

use crate::error::{Error, Result};
use crate::service::records::{
    ApiKey, AuditEvent, Connection, Credits, CreditsChange, Delivery, DeliveryAttempt, DeliveryStatus, Environment,
    Event, HasLimits, Identity, KeyStatus, LimitChanges, NewLimits, RateLimit, Refill, RefillPeriod, Subscription,
    SubscriptionStatus,
};
use crate::service::records::{Counts, Granularity, UsageOutcome as Outcome};
use crate::service::usage::ingest::{MinuteCount, UsageReport};
use crate::service::usage::{DeliveryStatsBucket, KeyRanking, RangeRequest};
use crate::service::verify::{Failure, Verification, VerifiedKey};

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

/// A create request (of a key or an identity): its limit fields, taken out.
pub trait CreateLimits {
    fn take_limits(&mut self) -> (Option<pb::RateLimit>, Vec<String>, Option<pb::Credits>);
}

impl CreateLimits for pb::CreateApiKeyRequest {
    fn take_limits(&mut self) -> (Option<pb::RateLimit>, Vec<String>, Option<pb::Credits>) {
        (self.rate_limit.take(), std::mem::take(&mut self.allowed_cidrs), self.credits.take())
    }
}

impl CreateLimits for pb::CreateIdentityRequest {
    fn take_limits(&mut self) -> (Option<pb::RateLimit>, Vec<String>, Option<pb::Credits>) {
        (self.rate_limit.take(), std::mem::take(&mut self.allowed_cidrs), self.credits.take())
    }
}

/// The limits of a create request → domain.
pub fn new_limits(request: &mut impl CreateLimits) -> Result<NewLimits> {
    let (rate_limit, allowed_cidrs, credits) = request.take_limits();
    Ok(NewLimits {
        rate_limit: rate_limit.map(|l| rate_limit_from_proto("rate_limit", l)).transpose()?,
        allowed_cidrs,
        credits: credits.map(|c| credits_from_proto("credits", c)).transpose()?,
    })
}

/// Protobuf rate limit → domain.
pub fn rate_limit_from_proto(field: &str, limit: pb::RateLimit) -> Result<RateLimit> {
    let window = limit.window.ok_or_else(|| Error::invalid(format!("{field}.window"), "is required"))?;
    let global = match pb::RateLimitScope::try_from(limit.scope) {
        Ok(pb::RateLimitScope::Unspecified | pb::RateLimitScope::Local) => false,
        Ok(pb::RateLimitScope::Global) => true,
        Err(_) => return Err(Error::invalid(format!("{field}.scope"), format!("unknown scope {}", limit.scope))),
    };
    Ok(RateLimit { requests: limit.requests, window: duration_from_proto(&format!("{field}.window"), window)?, global })
}

fn rate_limit_to_proto(limit: RateLimit) -> pb::RateLimit {
    let scope = if limit.global { pb::RateLimitScope::Global } else { pb::RateLimitScope::Local };
    pb::RateLimit {
        requests: limit.requests,
        window: prost_types::Duration::try_from(limit.window).ok(),
        scope: scope.into(),
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
        rate_limit: key.rate_limit().map(rate_limit_to_proto),
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
        allowed_cidrs: key.allowed_cidr_list(),
        credits: key.credits().map(credits_to_proto),
        identity_id: key.identity_id.clone().unwrap_or_default(),
    }
}

/// Identity → protobuf resource.
pub fn identity_to_proto(identity: &Identity) -> pb::Identity {
    pb::Identity {
        id: identity.id.clone(),
        org_id: identity.org_id.clone(),
        external_id: identity.external_id.clone(),
        metadata: identity.metadata.as_ref().and_then(json_to_struct),
        rate_limit: identity.rate_limit().map(rate_limit_to_proto),
        allowed_cidrs: identity.allowed_cidr_list(),
        credits: identity.credits().map(credits_to_proto),
        created_at: Some(time_to_proto(identity.created_at)),
        updated_at: Some(time_to_proto(identity.updated_at)),
    }
}

fn credits_to_proto(credits: Credits) -> pb::Credits {
    pb::Credits {
        remaining: credits.remaining,
        refill: credits.refill.map(|refill| pb::CreditRefill {
            amount: refill.amount,
            period: Some(match refill.period {
                RefillPeriod::Every(every) => {
                    pb::credit_refill::Period::Every(prost_types::Duration::try_from(every).unwrap_or_default())
                }
                RefillPeriod::Daily => pb::credit_refill::Period::Daily(true),
                RefillPeriod::Monthly(day) => pb::credit_refill::Period::MonthlyOnDay(day),
            }),
            next_refill_at: credits.next_refill_at.map(time_to_proto),
        }),
    }
}

/// Protobuf credits → (remaining, refill).
pub fn credits_from_proto(field: &str, credits: pb::Credits) -> Result<(u64, Option<Refill>)> {
    let refill = credits.refill.map(|r| refill_from_proto(&format!("{field}.refill"), r)).transpose()?;
    Ok((credits.remaining, refill))
}

/// Protobuf refill → domain.
pub fn refill_from_proto(field: &str, refill: pb::CreditRefill) -> Result<Refill> {
    let period = match refill.period {
        Some(pb::credit_refill::Period::Every(every)) => {
            RefillPeriod::Every(duration_from_proto(&format!("{field}.every"), every)?)
        }
        Some(pb::credit_refill::Period::Daily(true)) => RefillPeriod::Daily,
        Some(pb::credit_refill::Period::MonthlyOnDay(day)) => RefillPeriod::Monthly(day),
        Some(pb::credit_refill::Period::Daily(false)) | None => {
            return Err(Error::invalid(format!("{field}.period"), "set one of every, daily or monthly_on_day"));
        }
    };
    Ok(Refill { amount: refill.amount, period })
}

/// Protobuf credits change → domain.
pub fn credits_change_from_proto(field: &str, change: Option<pb::CreditsChange>) -> Result<CreditsChange> {
    match change.and_then(|c| c.change) {
        Some(pb::credits_change::Change::Set(n)) => Ok(CreditsChange::Set(n)),
        Some(pb::credits_change::Change::Add(n)) => Ok(CreditsChange::Add(n)),
        Some(pb::credits_change::Change::Subtract(n)) => Ok(CreditsChange::Subtract(n)),
        None => Err(Error::invalid(field, "set one of set, add or subtract")),
    }
}

/// The limit fields of an update (of a key or an identity), as sent.
pub struct LimitUpdate<'a> {
    pub rate_limit: Option<pb::RateLimit>,
    pub allowed_cidrs: &'a [String],
    pub credits: Option<pb::CreditsChange>,
    pub credit_refill: Option<pb::CreditRefill>,
}

impl<'a> From<&'a pb::ApiKeyUpdate> for LimitUpdate<'a> {
    fn from(update: &'a pb::ApiKeyUpdate) -> Self {
        let (rate_limit, credits, credit_refill) = (update.rate_limit, update.credits, update.credit_refill);
        LimitUpdate { rate_limit, allowed_cidrs: &update.allowed_cidrs, credits, credit_refill }
    }
}

impl<'a> From<&'a pb::IdentityUpdate> for LimitUpdate<'a> {
    fn from(update: &'a pb::IdentityUpdate) -> Self {
        let (rate_limit, credits, credit_refill) = (update.rate_limit, update.credits, update.credit_refill);
        LimitUpdate { rate_limit, allowed_cidrs: &update.allowed_cidrs, credits, credit_refill }
    }
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

/// Reads mask path `path` into `limits` when it names a limit (the same
/// paths on keys and identities): whether it did.
pub fn limit_path(limits: &mut LimitChanges, path: &str, update: LimitUpdate<'_>) -> Result<bool> {
    match path {
        "rate_limit" => {
            limits.rate_limit =
                Some(update.rate_limit.map(|l| rate_limit_from_proto("update.rate_limit", l)).transpose()?);
        }
        "allowed_cidrs" => limits.allowed_cidrs = Some(update.allowed_cidrs.to_vec()),
        "credits" => limits.credits = Some(credits_change_from_proto("update.credits", update.credits)?),
        "credit_refill" => {
            limits.credit_refill =
                Some(update.credit_refill.map(|r| refill_from_proto("update.credit_refill", r)).transpose()?);
        }
        _ => return Ok(false),
    }
    Ok(true)
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
        rate_limit: key.rate_limit().map(rate_limit_to_proto),
        allowed_cidrs: key.allowed_cidr_list(),
        has_credits: key.credits().is_some(),
        identity: verified.identity.as_ref().map(|identity| pb::PrincipalIdentity {
            id: identity.id.clone(),
            external_id: identity.external_id.clone(),
            rate_limit: identity.rate_limit().map(rate_limit_to_proto),
            allowed_cidrs: identity.allowed_cidr_list(),
            has_credits: identity.credits().is_some(),
        }),
    }
}

/// Domain failure → protobuf enum.
pub fn failure_to_proto(failure: Failure) -> pb::VerifyFailure {
    match failure {
        Failure::Malformed => pb::VerifyFailure::Malformed,
        Failure::Unknown => pb::VerifyFailure::Unknown,
        Failure::BadSecret => pb::VerifyFailure::BadSecret,
        Failure::Revoked => pb::VerifyFailure::Revoked,
        Failure::Denied(Denied::Expired) => pb::VerifyFailure::Expired,
        Failure::Denied(Denied::WrongEnvironment) => pb::VerifyFailure::WrongEnvironment,
        Failure::Denied(Denied::MissingScope) => pb::VerifyFailure::MissingScope,
        Failure::Denied(Denied::IpNotAllowed) => pb::VerifyFailure::IpNotAllowed,
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
pub fn audit_event_to_proto(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
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

/// Subscription → protobuf resource (never its secrets).
pub fn subscription_to_proto(subscription: &Subscription) -> pb::Subscription {
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
    }
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

/// A sidecar's usage report → domain. Old sidecars' `entries` count as
/// allowed checks in the minute of their last use, with no report id.
pub fn usage_report_from_proto(request: sync_pb::ReportUsageRequest) -> Result<UsageReport> {
    let count = |field: String, value: u64| i64::try_from(value).map_err(|_| Error::invalid(field, "is out of range"));
    let mut counts = Vec::with_capacity(request.counts.len() + request.entries.len());
    for (i, entry) in request.entries.into_iter().enumerate() {
        let field = format!("entries[{i}].last_used_at");
        let last_used_at =
            time_from_proto(&field, entry.last_used_at.ok_or_else(|| Error::invalid(&field, "is required"))?)?;
        counts.push(MinuteCount {
            minute: Granularity::Minute.bucket_of(last_used_at.timestamp()),
            counts: Counts { allowed: count(format!("entries[{i}].count"), entry.count)?, ..Counts::default() },
            last_used_at: Some(last_used_at),
            key_id: entry.key_id,
        });
    }
    for (i, entry) in request.counts.into_iter().enumerate() {
        let field = format!("counts[{i}].minute");
        let minute = time_from_proto(&field, entry.minute.ok_or_else(|| Error::invalid(&field, "is required"))?)?;
        if minute.timestamp_subsec_nanos() != 0 {
            return Err(Error::invalid(field, "must be the start of a minute"));
        }
        let last_used_at =
            entry.last_used_at.map(|at| time_from_proto(&format!("counts[{i}].last_used_at"), at)).transpose()?;
        counts.push(MinuteCount {
            minute: minute.timestamp(),
            counts: Counts {
                allowed: count(format!("counts[{i}].allowed"), entry.allowed)?,
                unauthorized: count(format!("counts[{i}].unauthorized"), entry.unauthorized)?,
                forbidden: count(format!("counts[{i}].forbidden"), entry.forbidden)?,
                rate_limited: count(format!("counts[{i}].rate_limited"), entry.rate_limited)?,
            },
            last_used_at,
            key_id: entry.key_id,
        });
    }
    let report_id = Some(request.report_id).filter(|id| !id.is_empty());
    Ok(UsageReport { report_id, counts })
}

/// Protobuf granularity → domain (`None` for unspecified).
pub fn granularity_from_proto(field: &str, value: i32) -> Result<Option<Granularity>> {
    match pb::Granularity::try_from(value) {
        Ok(pb::Granularity::Unspecified) => Ok(None),
        Ok(pb::Granularity::Minute) => Ok(Some(Granularity::Minute)),
        Ok(pb::Granularity::Hour) => Ok(Some(Granularity::Hour)),
        Ok(pb::Granularity::Day) => Ok(Some(Granularity::Day)),
        Err(_) => Err(Error::invalid(field, format!("unknown granularity {value}"))),
    }
}

/// Protobuf outcome → domain (`None` for unspecified: the total).
pub fn outcome_from_proto(field: &str, value: i32) -> Result<Option<Outcome>> {
    match pb::UsageOutcome::try_from(value) {
        Ok(pb::UsageOutcome::Unspecified) => Ok(None),
        Ok(pb::UsageOutcome::Allowed) => Ok(Some(Outcome::Allowed)),
        Ok(pb::UsageOutcome::Unauthorized) => Ok(Some(Outcome::Unauthorized)),
        Ok(pb::UsageOutcome::Forbidden) => Ok(Some(Outcome::Forbidden)),
        Ok(pb::UsageOutcome::RateLimited) => Ok(Some(Outcome::RateLimited)),
        Err(_) => Err(Error::invalid(field, format!("unknown outcome {value}"))),
    }
}

/// A query range from its protobuf fields.
pub fn range_from_proto(
    start: Option<prost_types::Timestamp>,
    end: Option<prost_types::Timestamp>,
    granularity: i32,
) -> Result<RangeRequest> {
    Ok(RangeRequest {
        start: start.map(|t| time_from_proto("start_time", t)).transpose()?,
        end: end.map(|t| time_from_proto("end_time", t)).transpose()?,
        granularity: granularity_from_proto("granularity", granularity)?,
    })
}

/// Counts → protobuf.
pub fn counts_to_proto(counts: &Counts) -> pb::UsageCounts {
    let n = |value: i64| u64::try_from(value).unwrap_or(0);
    pb::UsageCounts {
        allowed: n(counts.allowed),
        unauthorized: n(counts.unauthorized),
        forbidden: n(counts.forbidden),
        rate_limited: n(counts.rate_limited),
        total: n(counts.total()),
    }
}

/// A ranked key → protobuf.
pub fn key_ranking_to_proto(ranking: &KeyRanking) -> pb::KeyUsageSummary {
    pb::KeyUsageSummary {
        key_id: ranking.key_id.clone(),
        name: ranking.name.clone(),
        environment: environment_to_proto(ranking.environment).into(),
        counts: Some(counts_to_proto(&ranking.counts)),
    }
}

/// A delivery-stats bucket → protobuf.
pub fn delivery_stats_to_proto(bucket: &DeliveryStatsBucket) -> pb::DeliveryStatsBucket {
    let n = |value: i64| u64::try_from(value).unwrap_or(0);
    pb::DeliveryStatsBucket {
        start_time: Some(time_to_proto(bucket.start)),
        attempts: n(bucket.attempts),
        succeeded: n(bucket.succeeded),
        failed: n(bucket.failed),
        p50_latency: bucket.p50.and_then(|d| prost_types::Duration::try_from(d).ok()),
        p99_latency: bucket.p99.and_then(|d| prost_types::Duration::try_from(d).ok()),
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
