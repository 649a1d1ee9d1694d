//! Memory footprint of moka itself with 100k entries shaped like the
//! sidecar's cache (32-byte key, an Arc'd principal-sized value), to separate
//! moka's per-entry bookkeeping from the sidecar's own data (BENCHMARKS.md).
//! `target/release/moka-footprint`

use std::sync::Arc;
use std::time::Duration;

type Value = Arc<(String, String, Vec<String>, u64)>;

fn rss_kib() -> u64 {
    keyplane_tests::process::rss_kib(std::process::id())
}

#[tokio::main]
async fn main() {
    const ENTRIES: u64 = 100_000;
    let before = rss_kib();
    let cache: moka::future::Cache<[u8; 32], Value> =
        moka::future::Cache::builder().max_capacity(ENTRIES).time_to_live(Duration::from_secs(300)).build();
    for i in 0..ENTRIES {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&i.to_le_bytes());
        let value =
            (format!("key_0351p852NEghidiXb8k{i:05}"), "org_1234567890abcdef".into(), vec!["orders:read".into()], i);
        cache.insert(key, Arc::new(value)).await;
    }
    cache.run_pending_tasks().await;
    let delta = rss_kib() - before;
    println!(
        "moka with {} entries: RSS +{delta} KiB ({} bytes per entry)",
        cache.entry_count(),
        delta * 1024 / ENTRIES
    );
}
