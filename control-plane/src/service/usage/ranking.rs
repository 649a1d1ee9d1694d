//! TopKeys: rankings summed in memory from each bucket's per-key scores
//! (the checks ranked by), kept between queries and checked against the
//! org's rollup of the same bucket before each use (why SQL aggregation is
//! not used: BENCHMARKS.md, "TopKeys").
//!
//! Why kept scores stay exact: a report adds to a bucket's key rows and to
//! its org rows in one transaction (`ingest.rs`), and counts only grow, so
//! equal org sums mean no key's score changed; no invalidation crosses
//! replicas. A bucket whose sum grew is not read again: kept scores are
//! lower bounds, the growth bounds any key's gain, and only keys whose
//! bounds reach the `limit`-th lower bound are ranked, by their exact
//! counts. The bucket is read again when too many candidates remain, or
//! when the growth alone reaches the last ranking's `limit`-th total (a key
//! not kept could then win).

use std::sync::Arc;

use moka::sync::Cache;
use sea_orm::ConnectionTrait;

use super::Window;
use crate::error::Result;
use crate::store::usage::{self, Granularity, Score};

/// Candidates beyond the number of keys asked for that bounds may leave
/// before the grown buckets are read again instead (each candidate's
/// counts are read over the whole window).
const EXTRA_CANDIDATES: usize = 32;

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

/// A ranking's org, granularity, score and length: what its `limit`-th
/// total is remembered by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RankingId {
    org: String,
    granularity: Granularity,
    score: Score,
    limit: usize,
}

impl RankingId {
    fn of(query: &RankingQuery<'_>) -> Self {
        let RankingQuery { org, window, score, limit } = *query;
        Self { org: org.to_owned(), granularity: window.granularity, score, limit }
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

/// Rankings whose last total is remembered (a few dozen bytes each).
const REMEMBERED_RANKINGS: u64 = 10_000;

/// Per-key scores of recently ranked buckets, bounded in bytes.
pub struct RankingCache {
    buckets: Cache<BucketId, Arc<BucketScores>>,
    /// The `limit`-th total of the last exact ranking of each kind (0 when
    /// it had fewer keys): a grown bucket whose growth reaches it would not
    /// be narrowed, so it is read at once, while the kept ones are summed.
    last_totals: Cache<RankingId, i64>,
}

impl RankingCache {
    pub fn new(max_bytes: u64) -> Self {
        let buckets = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &BucketId, scores: &Arc<BucketScores>| scores.weight())
            .build();
        Self { buckets, last_totals: Cache::new(REMEMBERED_RANKINGS) }
    }

    /// Ids of keys among which are the `limit` with the highest score in the
    /// window (keys scoring 0 are never among them), at most `limit` +
    /// [`EXTRA_CANDIDATES`], busiest first as far as the kept scores tell:
    /// the caller ranks them by their exact counts.
    pub async fn candidates(&self, db: &impl ConnectionTrait, query: RankingQuery<'_>) -> Result<Vec<String>> {
        let Window { granularity, start, end } = query.window;
        let mut current = Vec::new();
        let mut grown = Vec::new();
        let mut growth = 0;
        let mut unread = Vec::new();
        for (bucket, org_counts) in
            usage::org_series(db, granularity, query.org, query.score.environment, start, end).await?
        {
            let sum = query.score.of(&org_counts);
            if sum == 0 {
                continue;
            }
            match self.buckets.get(&BucketId::of(&query, bucket)) {
                Some(scores) if scores.sum == sum => current.push(scores),
                Some(scores) if scores.sum < sum => {
                    growth += sum - scores.sum;
                    grown.push((bucket, scores));
                }
                _ => unread.push(bucket),
            }
        }
        let ranking = RankingId::of(&query);
        if self.last_totals.get(&ranking).is_some_and(|last| growth >= last) {
            unread.extend(grown.drain(..).map(|(bucket, _)| bucket));
        }
        // The kept buckets are summed while the database reads the others.
        let (read, mut totals) = tokio::join!(self.read(db, &query, &unread), async { Totals::of(&current) });
        let read = read?;
        for bucket in read.iter().chain(grown.iter().map(|(_, scores)| scores)) {
            totals.add(bucket);
        }
        let limit = query.limit;
        let fresh;
        if !grown.is_empty() {
            if let Some(candidates) = totals.candidates(limit, growth, limit + EXTRA_CANDIDATES) {
                return Ok(candidates.into_iter().map(str::to_owned).collect());
            }
            let buckets: Vec<i64> = grown.iter().map(|(bucket, _)| *bucket).collect();
            fresh = self.read(db, &query, &buckets).await?;
            for (_, kept) in &grown {
                totals.remove(kept);
            }
            for bucket in &fresh {
                totals.add(bucket);
            }
        }
        let busiest = totals.busiest(limit);
        let last_total = if busiest.len() == limit { busiest.last().map_or(0, |(_, total)| *total) } else { 0 };
        self.last_totals.insert(ranking, last_total);
        Ok(busiest.into_iter().map(|(id, _)| id.to_owned()).collect())
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

    /// Takes back what [`add`](Self::add) added for `bucket`.
    fn remove(&mut self, bucket: &'a BucketScores) {
        for (key_id, score) in &bucket.keys {
            *self.by_key.entry(key_id).or_default() -= score;
        }
    }

    /// The `limit` busiest keys and their totals, busiest first, ties by id.
    fn busiest(self, limit: usize) -> Vec<(&'a str, i64)> {
        let mut ranked: Vec<(&str, i64)> = self.by_key.into_iter().collect();
        if ranked.len() > limit {
            let Some(last) = limit.checked_sub(1) else { return Vec::new() };
            ranked.select_nth_unstable_by(last, busiest_first);
            ranked.truncate(limit);
        }
        ranked.sort_unstable_by(busiest_first);
        ranked
    }

    /// When every key may have gained up to `growth` since these totals
    /// were counted (and keys missing from them up to `growth` in all): the
    /// keys that can still be among the `limit` busiest, busiest first by
    /// these totals. `None` when more than `max` keys can, or a missing key
    /// could.
    ///
    /// A key whose total plus `growth` stays below the `limit`-th highest
    /// total is below at least `limit` keys however the growth fell, ties
    /// included; nobody else can be ruled out.
    fn candidates(&self, limit: usize, growth: i64, max: usize) -> Option<Vec<&'a str>> {
        let mut ranked: Vec<(&'a str, i64)> = self.by_key.iter().map(|(id, score)| (*id, *score)).collect();
        let last = limit.checked_sub(1).filter(|&last| last < ranked.len())?;
        let (_, &mut (_, threshold), _) = ranked.select_nth_unstable_by(last, busiest_first);
        if growth >= threshold {
            return None;
        }
        ranked.retain(|(_, score)| score + growth >= threshold);
        if ranked.len() > max {
            return None;
        }
        ranked.sort_unstable_by(busiest_first);
        Some(ranked.into_iter().map(|(id, _)| id).collect())
    }
}

/// Higher scores first, ties by key id: the order of every ranking.
pub(super) fn busiest_first(a: &(&str, i64), b: &(&str, i64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0))
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
        fn ids(ranked: Vec<(&str, i64)>) -> Vec<&str> {
            ranked.into_iter().map(|(id, _)| id).collect()
        }
        assert_eq!(ids(Totals::of(&days).busiest(10)), ["t", "b", "d", "a", "c"], "b and d tie at 6");
        assert_eq!(Totals::of(&days).busiest(2), [("t", 9), ("b", 6)]);
        let mut totals = Totals::of(&days[..1]);
        totals.add(&days[1]);
        assert_eq!(totals.candidates(1, 0, 10).unwrap(), ["t"]);
        totals.remove(&days[0]);
        assert_eq!(totals.busiest(2), [("d", 6), ("c", 3)], "what the first bucket added is taken back");
        assert!(Totals::of(&[]).busiest(10).is_empty());
    }

    #[test]
    fn candidates_are_the_keys_growth_can_lift_to_the_last_winning_total() {
        let kept = [bucket(&[("a", 10), ("b", 8), ("c", 3), ("d", 1)])];
        let totals = Totals::of(&kept);
        assert_eq!(totals.candidates(2, 0, 10).unwrap(), ["a", "b"], "nothing grew: the winners");
        assert_eq!(totals.candidates(2, 5, 10).unwrap(), ["a", "b", "c"], "c + 5 reaches b's 8");
        assert_eq!(totals.candidates(3, 2, 10).unwrap(), ["a", "b", "c", "d"], "d + 2 ties with c");
        assert_eq!(totals.candidates(2, 8, 10), None, "a key not kept could reach 8");
        assert_eq!(totals.candidates(2, 5, 2), None, "more candidates than allowed");
        assert_eq!(totals.candidates(5, 1, 10), None, "fewer keys kept than asked for");
        assert_eq!(totals.candidates(0, 1, 10), None);
    }
}
