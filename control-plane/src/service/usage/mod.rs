//! Usage analytics (ARCHITECTURE.md, "Usage analytics"): reports of checks
//! are applied to minute, hour and day rollups ([`ingest`]); queries read
//! them over a checked window ([`window`]) and return zero-filled series,
//! rankings and webhook attempt statistics.

pub mod ingest;
mod ranking;
pub mod window;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use super::auth::RequestContext;
use crate::crypto::Environment;
use crate::error::{Error, Result};
use crate::service::authz::{Action, Target};
use crate::store::delivery_stats::{self, AttemptStats, LATENCY_BOUNDS_MICROS};
use crate::store::usage::{self, Counts, Granularity, KeyCounts, Outcome, Score};
use crate::store::{api_keys, webhooks};
use ranking::{RankingCache, RankingQuery};
pub use window::{RangeRequest, Retention, Window};

/// Keys TopKeys returns when the caller names no limit.
const DEFAULT_TOP_KEYS: u32 = 10;
const MAX_TOP_KEYS: u32 = 100;
/// TopKeys reads hours for ranges up to this long, days beyond.
const TOP_KEYS_HOURLY_UP_TO: chrono::Duration = chrono::Duration::hours(48);

/// A usage series and its sum.
#[derive(Debug)]
pub struct UsageSeries {
    pub buckets: Vec<(DateTime<Utc>, Counts)>,
    pub totals: Counts,
}

/// One key's place in a ranking.
#[derive(Debug)]
pub struct KeyRanking {
    pub key_id: String,
    /// Empty when the key has been deleted since.
    pub name: String,
    pub environment: Environment,
    pub counts: Counts,
}

/// Webhook attempts in one bucket.
#[derive(Debug, PartialEq, Eq)]
pub struct DeliveryStatsBucket {
    pub start: DateTime<Utc>,
    pub attempts: i64,
    pub succeeded: i64,
    pub failed: i64,
    /// Estimated from the latency histogram; `None` without attempts.
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

/// Input of [`UsageService::top_keys`].
#[derive(Debug)]
pub struct TopKeysQuery {
    pub org_id: String,
    pub range: RangeRequest,
    /// 0 for the default.
    pub limit: u32,
    /// `None` ranks by the total.
    pub order_by: Option<Outcome>,
    pub environment: Option<Environment>,
}

/// The usage query service.
pub struct UsageService {
    db: DatabaseConnection,
    retention: Retention,
    rankings: RankingCache,
}

impl UsageService {
    /// `ranking_cache_bytes` bounds the per-key scores TopKeys keeps between queries.
    pub fn new(db: DatabaseConnection, retention: Retention, ranking_cache_bytes: u64) -> Self {
        Self { db, retention, rankings: RankingCache::new(ranking_cache_bytes) }
    }

    /// Checks of one key of the caller's org (`key_id`), or of the whole org,
    /// per bucket of the window.
    pub async fn key_usage(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        key_id: Option<&str>,
        range: RangeRequest,
        environment: Option<Environment>,
    ) -> Result<UsageSeries> {
        let org = ctx.authorize(Action::ReadUsage, Target::Org(org_id))?;
        let window = range.resolve(Utc::now(), &self.retention)?;
        let sparse = match key_id {
            Some(key_id) => {
                let key = api_keys::find(&self.db, &org, key_id).await?.ok_or(Error::NotFound("api key"))?;
                if environment.is_some_and(|env| env != key.environment) {
                    Vec::new()
                } else {
                    usage::key_series(&self.db, window.granularity, &org, key_id, window.start, window.end).await?
                }
            }
            None => {
                usage::org_series(&self.db, window.granularity, &org, environment, window.start, window.end).await?
            }
        };
        let buckets = window.fill(sparse);
        let mut totals = Counts::default();
        for (_, counts) in &buckets {
            totals.add(counts);
        }
        Ok(UsageSeries { buckets, totals })
    }

    /// The busiest keys of the caller's org in the range.
    pub async fn top_keys(&self, ctx: &RequestContext, query: TopKeysQuery) -> Result<Vec<KeyRanking>> {
        let org = ctx.authorize(Action::ReadUsage, Target::Org(&query.org_id))?;
        let limit = match query.limit {
            0 => DEFAULT_TOP_KEYS,
            1..=MAX_TOP_KEYS => query.limit,
            _ => return Err(Error::invalid("limit", format!("must be between 1 and {MAX_TOP_KEYS}"))),
        };
        let mut range = query.range;
        if range.granularity.is_none()
            && let (Some(start), Some(end)) = (range.start, range.end)
        {
            let hourly = end - start <= TOP_KEYS_HOURLY_UP_TO;
            range.granularity = Some(if hourly { Granularity::Hour } else { Granularity::Day });
        }
        let window = range.resolve(Utc::now(), &self.retention)?;
        let score = Score { outcome: query.order_by, environment: query.environment };
        let ranking = RankingQuery { org: &org, window, score, limit: limit as usize };
        let candidates = self.rankings.candidates(&self.db, ranking).await?;
        let ids: Vec<&str> = candidates.iter().map(String::as_str).collect();
        let (mut counts, keys) = tokio::try_join!(
            usage::key_totals(&self.db, window.granularity, &org, &ids, (window.start, window.end)),
            api_keys::find_many(&self.db, &org, &ids),
        )?;
        counts.retain(|key| score.of(&key.counts) > 0);
        fn ranked(key: &KeyCounts, score: Score) -> (&str, i64) {
            (key.key_id.as_str(), score.of(&key.counts))
        }
        counts.sort_unstable_by(|a, b| ranking::busiest_first(&ranked(a, score), &ranked(b, score)));
        counts.truncate(limit as usize);
        let mut names: HashMap<String, String> = keys.into_iter().map(|k| (k.id, k.name)).collect();
        Ok(counts
            .into_iter()
            .map(|KeyCounts { key_id, environment, counts }| KeyRanking {
                name: names.remove(&key_id).unwrap_or_default(),
                environment,
                counts,
                key_id,
            })
            .collect())
    }

    /// Webhook attempts of one subscription of the caller's org, or of all,
    /// per bucket of the window.
    pub async fn delivery_stats(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        subscription_id: Option<&str>,
        range: RangeRequest,
    ) -> Result<Vec<DeliveryStatsBucket>> {
        let org = ctx.authorize(Action::ReadUsage, Target::Org(org_id))?;
        let window = range.resolve(Utc::now(), &self.retention)?;
        if let Some(id) = subscription_id {
            webhooks::find(&self.db, &org, id).await?.ok_or(Error::NotFound("subscription"))?;
        }
        let sparse =
            delivery_stats::series(&self.db, window.granularity, &org, subscription_id, window.start, window.end)
                .await?;
        Ok(window
            .fill(sparse)
            .into_iter()
            .map(|(start, stats)| DeliveryStatsBucket {
                start,
                attempts: stats.attempts,
                succeeded: stats.succeeded,
                failed: stats.failed,
                p50: percentile(&stats, 0.50),
                p99: percentile(&stats, 0.99),
            })
            .collect())
    }
}

/// The `q` quantile of the attempt latencies, interpolated linearly within
/// the histogram bucket that holds it (the last bucket is taken to be as
/// wide, relatively, as the others).
pub fn percentile(stats: &AttemptStats, q: f64) -> Option<Duration> {
    let total: i64 = stats.latencies.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut below = 0.0;
    for (i, count) in stats.latencies.iter().enumerate() {
        let count = *count as f64;
        if below + count >= rank {
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_MICROS[i - 1] } as f64;
            let upper = LATENCY_BOUNDS_MICROS.get(i).map_or(lower * 1.585, |b| *b as f64);
            let micros = lower + (upper - lower) * ((rank - below) / count);
            return Some(Duration::from_micros(micros as u64));
        }
        below += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_fall_within_the_right_bucket() {
        let mut stats = AttemptStats::default();
        for _ in 0..98 {
            stats.record(true, 5_000);
        }
        stats.record(false, 300_000);
        stats.record(false, 300_000);
        let p50 = percentile(&stats, 0.5).unwrap();
        assert!((Duration::from_micros(3_981)..=Duration::from_micros(6_310)).contains(&p50), "{p50:?}");
        let p99 = percentile(&stats, 0.99).unwrap();
        assert!((Duration::from_micros(251_189)..=Duration::from_micros(398_107)).contains(&p99), "{p99:?}");
        assert_eq!(percentile(&AttemptStats::default(), 0.5), None);
    }
}
