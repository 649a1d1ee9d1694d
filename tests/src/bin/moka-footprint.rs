//! What one cached key costs in memory: moka's own per-entry bookkeeping
//! under each configuration the sidecar could use (sync or future cache,
//! key type, expiry, eviction policy, weigher), and the sidecar's real
//! `KeyCache` holding real verdicts (BENCHMARKS.md, "Sidecar memory").
//!
//! Allocated with jemalloc, as the sidecar is. Each variant runs in a fresh child process (RSS does not shrink when a
//! cache is dropped, so variants cannot share one) that fills the cache
//! with 100,000 entries from the tokio worker threads, as the sidecar does.
//!
//! `target/release/moka-footprint` (all variants) or
//! `target/release/moka-footprint <variant>`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keyplane_proto::token::Environment;
use keyplane_sidecar::cache::{KeyCache, KeyId, Limits, Principal, Verdict};
use moka::policy::EvictionPolicy;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ENTRIES: u64 = 100_000;
/// Inserting tasks, spread over the runtime's worker threads.
const TASKS: u64 = 4;

/// The token-digest key the sidecar uses.
fn digest(i: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&i.to_le_bytes());
    key[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    key
}

/// A verdict as the sidecar builds it from a Verify answer: the key's own
/// id, a principal shared by the keys that differ only in their id (50
/// orgs, one scope set, no expiry, no limits).
fn verdict(cache: &KeyCache, i: u64) -> Verdict {
    let shared = cache.shared();
    let principal = Principal {
        org_id: shared.string(&format!("org_1234567890abcdef{:02}", i % 50)),
        scopes: shared.scopes(&["orders:read".into(), "orders:write".into()]),
        environment: Environment::Live,
        expires_at: None,
        limits: None,
        identity: None,
        grants: None,
    };
    let key_id = KeyId::parse(&format!("key_0351p852NEghidi{i:07}")).expect("key id");
    Verdict::Valid { key_id, principal: shared.principal(principal), as_of: i }
}

/// A filled cache, kept alive while RSS is read.
type Filled = std::pin::Pin<Box<dyn Future<Output = Box<dyn std::any::Any>>>>;

struct Variant {
    name: &'static str,
    what: &'static str,
    /// Fills a cache with `ENTRIES` entries and keeps it alive while RSS is read.
    fill: fn() -> Filled,
}

/// Fills `$cache` from `TASKS` tasks, running `$insert` for every entry
/// `$i` with its clone `$c`, then `$settle` with the cache as `$s`.
macro_rules! fill {
    ($cache:expr, |$c:ident, $i:ident| $insert:expr, |$s:ident| $settle:expr) => {{
        let $s = $cache;
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let $c = $s.clone();
                tokio::spawn(async move {
                    for $i in (task..ENTRIES).step_by(TASKS as usize) {
                        $insert;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("fill");
        }
        $settle;
        Box::new($s) as Box<dyn std::any::Any>
    }};
}

/// Fills a `future::Cache` with `value(i)` under `key(i)`.
macro_rules! fill_future {
    ($cache:expr, $key:expr, $value:expr) => {
        fill!($cache, |c, i| c.insert($key(i), $value(i)).await, |c| {
            c.run_pending_tasks().await;
            assert_eq!(c.entry_count(), ENTRIES)
        })
    };
}

/// Fills a `sync::Cache` with `value(i)` under `key(i)`.
macro_rules! fill_sync {
    ($cache:expr, $key:expr, $value:expr) => {
        fill!($cache, |c, i| c.insert($key(i), $value(i)), |c| {
            c.run_pending_tasks();
            assert_eq!(c.entry_count(), ENTRIES)
        })
    };
}

fn ttl() -> Duration {
    Duration::from_secs(300)
}

/// A builder of the digest-keyed future cache the variants vary.
fn digests() -> moka::future::CacheBuilder<[u8; 32], u64, moka::future::Cache<[u8; 32], u64>> {
    moka::future::Cache::builder().max_capacity(ENTRIES)
}

fn variants() -> Vec<Variant> {
    use moka::future::Cache as Future;
    use moka::sync::Cache as Sync;
    vec![
        Variant {
            name: "sync-u64",
            what: "sync::Cache<u64, u64>, no expiry",
            fill: || Box::pin(async { fill_sync!(Sync::<u64, u64>::new(ENTRIES), |i| i, |i| i) }),
        },
        Variant {
            name: "future-u64",
            what: "future::Cache<u64, u64>, no expiry",
            fill: || Box::pin(async { fill_future!(Future::<u64, u64>::new(ENTRIES), |i| i, |i| i) }),
        },
        Variant {
            name: "future-u128",
            what: "future::Cache<u128, u64>, no expiry",
            fill: || Box::pin(async { fill_future!(Future::<u128, u64>::new(ENTRIES), u128::from, |i| i) }),
        },
        Variant {
            name: "future-digest",
            what: "future::Cache<[u8; 32], u64>, no expiry",
            fill: || Box::pin(async { fill_future!(Future::<[u8; 32], u64>::new(ENTRIES), digest, |i| i) }),
        },
        Variant {
            name: "future-digest-lru",
            what: "… LRU eviction instead of TinyLFU",
            fill: || {
                Box::pin(async {
                    fill_future!(digests().eviction_policy(EvictionPolicy::lru()).build(), digest, |i| i)
                })
            },
        },
        Variant {
            name: "future-digest-weigher",
            what: "… with a weigher (capacity in weight units)",
            fill: || Box::pin(async { fill_future!(digests().weigher(|_, _| 1).build(), digest, |i| i) }),
        },
        Variant {
            name: "future-digest-ttl",
            what: "… with a time to live",
            fill: || Box::pin(async { fill_future!(digests().time_to_live(ttl()).build(), digest, |i| i) }),
        },
        Variant {
            name: "future-digest-expiry",
            what: "… with per-entry expiry (`Expiry`, as the sidecar: positive and negative answers differ)",
            fill: || {
                Box::pin(async {
                    struct Fixed;
                    impl moka::Expiry<[u8; 32], u64> for Fixed {
                        fn expire_after_create(&self, _: &[u8; 32], _: &u64, _: Instant) -> Option<Duration> {
                            Some(ttl())
                        }
                    }
                    fill_future!(digests().expire_after(Fixed).build(), digest, |i| i)
                })
            },
        },
        Variant {
            name: "sync-digest-ttl",
            what: "sync::Cache<[u8; 32], u64>, time to live",
            fill: || {
                Box::pin(async {
                    fill_sync!(Sync::builder().max_capacity(ENTRIES).time_to_live(ttl()).build(), digest, |i: u64| i)
                })
            },
        },
        Variant {
            name: "owned-principal",
            what: "future, digest, TTL, an owned principal (Arc of strings and a Vec, the sidecar before)",
            fill: || {
                Box::pin(async {
                    type Owned = Arc<(String, String, Vec<String>, Option<SystemTime>, Limits)>;
                    let cache = Future::<[u8; 32], Owned>::builder().max_capacity(ENTRIES).time_to_live(ttl()).build();
                    let value = |i: u64| {
                        Arc::new((
                            format!("key_0351p852NEghidiXb8k{i:05}"),
                            format!("org_1234567890abcdef{:02}", i % 50),
                            vec!["orders:read".to_owned(), "orders:write".to_owned()],
                            Some(SystemTime::now()),
                            Limits::default(),
                        ))
                    };
                    fill_future!(cache, digest, value)
                })
            },
        },
        Variant {
            name: "keycache",
            what: "the sidecar's KeyCache with valid verdicts (TTLs checked on lookup, shared principals)",
            fill: || {
                Box::pin(async {
                    let cache = KeyCache::new(ENTRIES, ttl(), Duration::from_secs(5));
                    fill!(
                        cache,
                        |c, i| {
                            let verdict = verdict(&c, i);
                            assert!(c.get_or_verify(digest(i), async { Ok::<_, ()>(verdict) }).await.is_ok());
                        },
                        |c| {
                            c.run_pending_tasks().await;
                            assert_eq!(c.len(), ENTRIES)
                        }
                    )
                })
            },
        },
    ]
}

fn rss_kib() -> u64 {
    keyplane_tests::process::rss_kib(std::process::id())
}

fn main() {
    let variants = variants();
    let runtime = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    if let Some(name) = std::env::args().nth(1) {
        let variant = variants.iter().find(|v| v.name == name).expect("known variant");
        let runtime = runtime();
        let before = rss_kib();
        let started = Instant::now();
        let cache = runtime.block_on((variant.fill)());
        let delta = rss_kib().saturating_sub(before);
        println!("{delta} {}", started.elapsed().as_millis());
        drop(cache);
        return;
    }
    println!("{} entries, {TASKS} inserting tasks on 2 worker threads; RSS growth of a fresh process", ENTRIES);
    println!("| variant | RSS growth | bytes per entry |");
    println!("|---|---|---|");
    let me = std::env::current_exe().expect("own path");
    for variant in &variants {
        let output = std::process::Command::new(&me).arg(variant.name).output().expect("run variant");
        let text = String::from_utf8_lossy(&output.stdout);
        let kib: u64 = text.split_whitespace().next().and_then(|k| k.parse().ok()).unwrap_or(0);
        println!(
            "| {} (`{}`) | {:.1} MB | {} |",
            variant.what,
            variant.name,
            kib as f64 / 1024.0,
            kib * 1024 / ENTRIES
        );
    }
}
