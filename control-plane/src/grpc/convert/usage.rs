//! Usage reports from sidecars and usage queries.

use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync_pb;

use super::{environment_to_proto, time_from_proto, time_to_proto};
use crate::error::{Error, Result};
use crate::service::records::{Counts, Granularity, UsageOutcome as Outcome};
use crate::service::usage::ingest::{MinuteCount, UsageReport};
use crate::service::usage::{DeliveryStatsBucket, KeyRanking, RangeRequest};

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
