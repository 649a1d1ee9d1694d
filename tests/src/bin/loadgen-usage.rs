//! Load generator for usage analytics (BENCHMARKS.md).
//!
//! `ingest`: the real `keyplane` binary receives what `--sidecars` sidecars
//! send when each sees `--keys` active keys: every `--interval`, reports of
//! 1000 counts covering every key, from all sidecars at once. Prints the
//! report latency, the time a round of reports takes, and the control
//! plane's CPU (from /proc) per round and as a share of one core.
//!
//! `query`: seeds `--days` of hourly rollups (and a day of minutes, and
//! daily rollups) for `--keys` keys of one org straight into the database,
//! then measures QueryKeyUsage (one key's 30-day hourly series, the org's
//! day of minutes) and TopKeys over 7 days through the in-process API:
//! the first ranking, rankings of unchanged data, and rankings each after
//! a report into today (the case while sidecars report) of one key or of
//! every key.
//!
//! `cargo run --release -p keyplane-tests --bin loadgen-usage -- --backend postgres ingest`
//! `cargo run --release -p keyplane-tests --bin loadgen-usage -- --backend postgres query`
//!
//! Every loop is bounded by its count.

use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use clap::{Parser, Subcommand};
use keyplane_control_plane::crypto::new_id;
use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_control_plane::service::usage::ingest::MAX_COUNTS_PER_REPORT;
use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync_pb;
use keyplane_tests::process::{ControlPlaneProcess, WebhookServer};
use keyplane_tests::stats::{Summary, measure};
use keyplane_tests::{Backend, TestControlPlane, authed_channel, random_org, seed};
use rand::Rng;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "postgres")]
    backend: String,
    /// Keys of the org.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[command(subcommand)]
    run: Run,
}

#[derive(Subcommand)]
enum Run {
    /// Report ingestion through the real binary.
    Ingest {
        /// Sidecars reporting.
        #[arg(long, default_value_t = 10)]
        sidecars: usize,
        /// Rounds of reports.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Time between rounds (the sidecars' --usage-interval).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Query latency over seeded rollups.
    Query {
        /// Days of hourly rollups seeded.
        #[arg(long, default_value_t = 90)]
        days: i64,
        /// Requests measured per query.
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = if args.backend == "postgres" { Backend::Postgres } else { Backend::Sqlite };
    match args.run {
        Run::Ingest { sidecars, rounds, interval } => ingest(backend, args.keys, sidecars, rounds, interval).await,
        Run::Query { days, requests } => query(backend, args.keys, days, requests).await,
    }
}

/// Seeds `count` active keys of `org`; returns their ids.
async fn seed_keys(db: &DatabaseConnection, org: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    seed::keys(db, count, |i| {
        let id = new_id("key_");
        ids.push(id.clone());
        seed::key_row(org, id, format!("bench {i:05}"), Environment::Live, KeyStatus::Active, seed::UNMATCHABLE_HASH)
    })
    .await;
    ids
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

async fn ingest(backend: Backend, keys: usize, sidecars: usize, rounds: usize, interval: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(setup) = WebhookServer::prepare(backend, dir.path(), &["--usage-flush-interval", "5s"]).await else {
        panic!("{backend:?} is not available");
    };
    let server = ControlPlaneProcess::start(&setup.args).await;
    let pid = server.child.id().expect("pid");
    let db = Database::connect(&setup.database_url).await.expect("database");
    let org = random_org();
    let started = Instant::now();
    let ids = seed_keys(&db, &org, keys).await;
    println!("seeded {keys} keys in {:.1}s", started.elapsed().as_secs_f64());
    let root = setup.root_token();
    let credential = pb::api_key_service_client::ApiKeyServiceClient::new(authed_channel(&server.addr, &root).await)
        .create_api_key(pb::CreateApiKeyRequest {
            org_id: "keyplane".into(),
            name: "bench sidecar".into(),
            scopes: vec!["keyplane:sidecar".into()],
            ..Default::default()
        })
        .await
        .expect("sidecar credential")
        .into_inner()
        .token;
    let mut clients = Vec::new();
    for _ in 0..sidecars {
        let channel = authed_channel(&server.addr, &credential).await;
        clients.push(sync_pb::key_sync_service_client::KeySyncServiceClient::new(channel));
    }

    let mut report_latencies = Vec::new();
    let mut round_times = Vec::new();
    let cpu_before = cpu_seconds(pid);
    let run_started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    for _ in 0..rounds {
        ticker.tick().await;
        let minute = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("minute");
        let round_started = Instant::now();
        let mut tasks = Vec::new();
        for client in &clients {
            let (mut client, mut ids) = (client.clone(), ids.clone());
            // As the sidecar sends them: ranges of sorted key ids, from a random range on.
            ids.sort_unstable();
            let start = rand::rng().random_range(0..ids.len().div_ceil(MAX_COUNTS_PER_REPORT)) * MAX_COUNTS_PER_REPORT;
            ids.rotate_left(start);
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                for chunk in ids.chunks(MAX_COUNTS_PER_REPORT) {
                    let counts: Vec<sync_pb::UsageCount> = chunk
                        .iter()
                        .map(|id| sync_pb::UsageCount {
                            key_id: id.clone(),
                            minute: Some(prost_types::Timestamp { seconds: minute.timestamp(), nanos: 0 }),
                            allowed: rand::rng().random_range(1..50),
                            unauthorized: rand::rng().random_range(0..3),
                            forbidden: 0,
                            rate_limited: rand::rng().random_range(0..2),
                            last_used_at: Some(prost_types::Timestamp { seconds: minute.timestamp() + 30, nanos: 0 }),
                        })
                        .collect();
                    let report =
                        sync_pb::ReportUsageRequest { entries: Vec::new(), report_id: new_id("bench-"), counts };
                    let sent = Instant::now();
                    client.report_usage(report).await.expect("report");
                    latencies.push(sent.elapsed());
                }
                latencies
            }));
        }
        for task in tasks {
            report_latencies.extend(task.await.expect("sidecar"));
        }
        round_times.push(round_started.elapsed());
    }
    let wall = run_started.elapsed() + interval.saturating_sub(*round_times.last().unwrap_or(&Duration::ZERO));
    let cpu = cpu_seconds(pid) - cpu_before;
    let reports = Summary::of(report_latencies, wall);
    let rounds_summary = Summary::of(round_times.clone(), wall);
    println!(
        "{backend:?}: {sidecars} sidecars x {keys} keys every {interval:?}, {rounds} rounds: {} reports of 1000 counts",
        reports.count
    );
    println!("report latency: {}", reports);
    println!(
        "round (all sidecars' reports): p50 {:.0} ms, max {:.0} ms",
        rounds_summary.p50.as_secs_f64() * 1000.0,
        rounds_summary.max.as_secs_f64() * 1000.0
    );
    println!(
        "control plane CPU: {:.2} s per round, {:.0}% of one core over {:.1} s",
        cpu / rounds as f64,
        100.0 * cpu / wall.as_secs_f64(),
        wall.as_secs_f64()
    );
    server.stop().await;
}

async fn query(backend: Backend, keys: usize, days: i64, requests: usize) {
    let plane = TestControlPlane::start(backend).await.expect("backend available");
    let db = plane.database().await;
    let org = random_org();
    let ids = seed_keys(&db, &org, keys).await;
    let now = Utc::now();
    let today = now.duration_trunc(TimeDelta::days(1)).expect("day").timestamp();
    let started = Instant::now();
    seed::rollups(&db, &org, &ids, days, now).await;
    println!("seeded {days} days of hourly rollups for {keys} keys in {:.0}s", started.elapsed().as_secs_f64());

    if std::env::var("EXPLAIN").is_ok() {
        let sql = format!(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT bucket, \
             string_agg(CAST(allowed + unauthorized + forbidden + rate_limited AS TEXT) || ':' || key_id, ' ') \
             FROM usage_key_days WHERE org_id = '{org}' AND bucket IN ({today}) \
             AND allowed + unauthorized + forbidden + rate_limited > 0 GROUP BY bucket ORDER BY bucket"
        );
        for row in db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.expect("explain") {
            println!("{}", row.try_get::<String>("", "QUERY PLAN").unwrap_or_default());
        }
    }
    let usage = plane.usage(&plane.root_token).await;
    let ts = |at: chrono::DateTime<Utc>| Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 });
    let key_series = |i: usize| {
        let (mut usage, key_id, org) = (usage.clone(), ids[i % ids.len()].clone(), org.clone());
        async move {
            let request = pb::QueryKeyUsageRequest {
                org_id: org,
                key_id,
                start_time: ts(now - TimeDelta::days(30)),
                end_time: ts(now),
                granularity: pb::Granularity::Hour as i32,
                environment: 0,
            };
            let series = usage.query_key_usage(request).await.expect("query").into_inner();
            assert!(series.buckets.len() >= 720);
        }
    };
    println!("one key, 30 days of hours: {}", measure(requests, 1, key_series).await);
    let org_minutes = |_| {
        let (mut usage, org) = (usage.clone(), org.clone());
        async move {
            let request = pb::QueryKeyUsageRequest {
                org_id: org,
                start_time: ts(now - TimeDelta::hours(24)),
                end_time: ts(now),
                granularity: pb::Granularity::Minute as i32,
                ..Default::default()
            };
            let series = usage.query_key_usage(request).await.expect("query").into_inner();
            assert!(series.buckets.len() >= 1440);
        }
    };
    println!("the org, a day of minutes: {}", measure(requests, 1, org_minutes).await);
    let week = pb::TopKeysRequest {
        org_id: org.clone(),
        start_time: ts(now - TimeDelta::days(7)),
        end_time: ts(now),
        limit: 10,
        ..Default::default()
    };
    let top_keys = |_| {
        let (mut usage, request) = (usage.clone(), week.clone());
        async move {
            let top = usage.top_keys(request).await.expect("top keys").into_inner();
            assert_eq!(top.keys.len(), 10);
        }
    };
    println!("TopKeys over 7 days, first query (8 days read): {}", measure(1, 1, top_keys).await);
    println!("TopKeys over 7 days, no new reports: {}", measure(requests, 1, top_keys).await);
    // Reports into today before each query (not timed), as sidecars send
    // them every few seconds. One key's count leaves today's kept scores
    // close (the ranking narrows to a few candidates); a count for every key
    // moves them all (today's 10,000 scores are read again).
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let mut sync = plane.key_sync(&credential).await;
    let minute = ts(now.duration_trunc(TimeDelta::minutes(1)).expect("minute"));
    for (reported, keys_per_report, rounds) in [("one key", 1, requests), ("every key", ids.len(), requests / 6)] {
        let mut latencies = Vec::with_capacity(rounds);
        let started = Instant::now();
        for i in 0..rounds {
            let counts: Vec<sync_pb::UsageCount> = (0..keys_per_report)
                .map(|k| sync_pb::UsageCount {
                    key_id: ids[(i + k) % ids.len()].clone(),
                    minute,
                    allowed: 1,
                    ..Default::default()
                })
                .collect();
            for chunk in counts.chunks(MAX_COUNTS_PER_REPORT) {
                let report = sync_pb::ReportUsageRequest { counts: chunk.to_vec(), ..Default::default() };
                sync.report_usage(report).await.expect("report");
            }
            let begun = Instant::now();
            top_keys(i).await;
            latencies.push(begun.elapsed());
        }
        let summary = Summary::of(latencies, started.elapsed());
        println!("TopKeys over 7 days, a report of {reported} into today before each: {summary}");
    }
    plane.stop().await;
}
