//! TopKeys: rankings summed in memory from each bucket's per-key scores
//! (the checks ranked by), which are kept between queries and checked
//! against the org's rollup of the same bucket before each use.
//!
//! Ranking in SQL aggregates every key's rows of the range on every request
//! (70,000 rows for 10,000 keys over a week, 40–60 ms on Postgres;
//! BENCHMARKS.md). Here a bucket's scores are read once. They stay exact
//! because a report adds to a bucket's key rows and to the org rows of that
//! bucket in one transaction (`ingest.rs`), and counts only grow: when the
//! org rows still sum to the cached scores' sum, no key's score has
//! changed. So every replica keeps its own cache without invalidation
//! messages; a bucket whose org rows moved (the current one, while reports
//! arrive) is read again. The winners' counts per outcome are then read
//! from the rollups for them alone (`UsageService::top_keys`).

use std::sync::Arc;

use moka::sync::Cache;
use sea_orm::ConnectionTrait;

use super::Window;
use crate::error::Result;
use crate::store::usage::{self, Granularity, Score};

/// Memory a cached key score is counted as, beyond its id's bytes.
const BYTES_PER_SCORE: usize = std::mem::size_of::<(String, i64)>();

/// One bucket of one org at one granularity, scored one way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BucketId {
    org: String,
    granularity: Granularity,
    bucket: i64,
    score: Score,
}

impl BucketId {
    fn of(query: &RankingQuery<'_>, bucket: i64) -> Self {
        Self { org: query.org.to_owned(), granularity: query.window.granularity, bucket, score: query.score }
    }
}

/// The scores of a bucket's keys (those with any) and their sum.
struct BucketScores {
    sum: i64,
    keys: Vec<(String, i64)>,
}

impl BucketScores {
    fn new(keys: Vec<(String, i64)>) -> Self {
        Self { sum: keys.iter().map(|(_, score)| score).sum(), keys }
    }

    fn weight(&self) -> u32 {
        let bytes: usize = self.keys.iter().map(|(id, _)| BYTES_PER_SCORE + id.len()).sum();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// What a ranking is over and by.
#[derive(Clone, Copy, Debug)]
pub struct RankingQuery<'a> {
    pub org: &'a str,
    pub window: Window,
    pub score: Score,
    pub limit: usize,
}

/// Per-key scores of recently ranked buckets, bounded in bytes.
pub struct RankingCache {
    buckets: Cache<BucketId, Arc<BucketScores>>,
}

impl RankingCache {
    pub fn new(max_bytes: u64) -> Self {
        let buckets = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &BucketId, scores: &Arc<BucketScores>| scores.weight())
            .build();
        Self { buckets }
    }

    /// The ids of the `limit` keys with the highest score in the window,
    /// busiest first, ties by key id; keys scoring 0 are left out.
    pub async fn top_keys(&self, db: &impl ConnectionTrait, query: RankingQuery<'_>) -> Result<Vec<String>> {
        let Window { granularity, start, end } = query.window;
        let mut cached = Vec::new();
        let mut stale = Vec::new();
        for (bucket, org_counts) in
            usage::org_series(db, granularity, query.org, query.score.environment, start, end).await?
        {
            let sum = query.score.of(&org_counts);
            if sum == 0 {
                continue;
            }
            match self.buckets.get(&BucketId::of(&query, bucket)) {
                Some(scores) if scores.sum == sum => cached.push(scores),
                _ => stale.push(bucket),
            }
        }
        // The cached buckets are summed while the database reads the stale ones.
        let (read, mut totals) = tokio::join!(self.read(db, &query, &stale), async { Totals::of(&cached) });
        let read = read?;
        for bucket in &read {
            totals.add(bucket);
        }
        Ok(totals.busiest(query.limit).into_iter().map(str::to_owned).collect())
    }

    /// Reads the scores of `buckets` from the database and keeps them.
    async fn read(
        &self,
        db: &impl ConnectionTrait,
        query: &RankingQuery<'_>,
        buckets: &[i64],
    ) -> Result<Vec<Arc<BucketScores>>> {
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = Vec::new();
        for (bucket, keys) in usage::key_scores(db, query.window.granularity, query.org, buckets, query.score).await? {
            let scores = Arc::new(BucketScores::new(keys));
            self.buckets.insert(BucketId::of(query, bucket), scores.clone());
            read.push(scores);
        }
        Ok(read)
    }
}

/// Each key's score summed over buckets.
struct Totals<'a> {
    // Hashing is most of a ranking's time (one lookup per key and bucket):
    // foldhash takes a third of the std hasher's time for these short ids.
    by_key: foldhash::HashMap<&'a str, i64>,
}

impl<'a> Totals<'a> {
    fn of(buckets: &'a [Arc<BucketScores>]) -> Self {
        let capacity = buckets.iter().map(|b| b.keys.len()).max().unwrap_or(0);
        let by_key = foldhash::HashMap::with_capacity_and_hasher(capacity, foldhash::fast::RandomState::default());
        let mut totals = Self { by_key };
        for bucket in buckets {
            totals.add(bucket);
        }
        totals
    }

    fn add(&mut self, bucket: &'a BucketScores) {
        for (key_id, score) in &bucket.keys {
            *self.by_key.entry(key_id).or_default() += score;
        }
    }

    /// The ids of the `limit` busiest keys, busiest first, ties by id.
    fn busiest(self, limit: usize) -> Vec<&'a str> {
        let busiest_first = |a: &(&str, i64), b: &(&str, i64)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
        let mut ranked: Vec<(&str, i64)> = self.by_key.into_iter().collect();
        if ranked.len() > limit {
            let Some(last) = limit.checked_sub(1) else { return Vec::new() };
            ranked.select_nth_unstable_by(last, busiest_first);
            ranked.truncate(limit);
        }
        ranked.sort_unstable_by(busiest_first);
        ranked.into_iter().map(|(id, _)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(scores: &[(&str, i64)]) -> Arc<BucketScores> {
        Arc::new(BucketScores::new(scores.iter().map(|(id, score)| ((*id).to_owned(), *score)).collect()))
    }

    #[test]
    fn rankings_sum_buckets_and_break_ties_by_key_id() {
        let days = [bucket(&[("a", 5), ("b", 4), ("t", 9)]), bucket(&[("c", 3), ("b", 2), ("d", 6)])];
        assert_eq!(days[0].sum, 18);
        assert_eq!(Totals::of(&days).busiest(10), ["t", "b", "d", "a", "c"], "b and d tie at 6");
        assert_eq!(Totals::of(&days).busiest(2), ["t", "b"]);
        let mut totals = Totals::of(&days[..1]);
        totals.add(&days[1]);
        assert_eq!(totals.busiest(1), ["t"]);
        assert!(Totals::of(&[]).busiest(10).is_empty());
    }
}
