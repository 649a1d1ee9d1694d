//! Load driver for webhook publication and delivery (BENCHMARKS.md): a
//! `keyplane serve` release binary runs as a child process, and this
//! process publishes through its public gRPC API, each publisher on a
//! connection of its own with an org API key (`keyplane:events:publish`),
//! to a real HTTP receiver on loopback that answers 200.
//!
//! 1. One endpoint, `--messages` messages, for each count of concurrent
//!    publishers in `--publishers`: deliveries/s from the first publication
//!    to the last receipt.
//! 2. Fan-out: `--fanout-endpoints` endpoints × `--fanout-messages` messages.
//! 3. Publish → receipt latency at `--rate` messages/s for `--seconds`.
//! 4. ListDeliveries pages with `--list-rows` finished delivery rows.
//!
//! On Postgres the server is a dedicated cluster with production durability
//! (fsync, synchronous commit) and `pg_stat_statements`: each throughput run
//! also reports statements and Postgres CPU per 1,000 deliveries. Each run
//! starts after `VACUUM ANALYZE` and `CHECKPOINT`, so the previous run's
//! leftovers do not land in it.
//!
//! `cargo build --release --workspace && target/release/loadgen-webhooks --backend postgres`
//!
//! Every loop is bounded by a count and a deadline; everything is on loopback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::postgres::{self, PgServer};
use keyplane_tests::process::{ControlPlaneProcess, WebhookServer, cpu_ticks};
use keyplane_tests::receiver::Receiver;
use keyplane_tests::stats::Summary;
use keyplane_tests::webhooks::publish_concurrently;
use keyplane_tests::{Authed, Backend, authed_channel, random_org};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "postgres")]
    backend: String,
    /// Messages published to one endpoint in each throughput run.
    #[arg(long, default_value_t = 5000)]
    messages: usize,
    /// Concurrent publishers of the one-endpoint runs (one run per count).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    publishers: Vec<usize>,
    /// Endpoints of the fan-out run.
    #[arg(long, default_value_t = 100)]
    fanout_endpoints: usize,
    /// Messages of the fan-out run (each is delivered to every endpoint).
    #[arg(long, default_value_t = 100)]
    fanout_messages: usize,
    /// Concurrent publishers of the fan-out run.
    #[arg(long, default_value_t = 16)]
    fanout_publishers: usize,
    /// Messages per second in the latency run.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Length of the latency run in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Finished delivery rows seeded for the ListDeliveries run (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    list_rows: u64,
    /// ListDeliveries requests measured per kind.
    #[arg(long, default_value_t = 1000)]
    list_requests: usize,
}

/// Longest any run may wait for its deliveries.
const DEADLINE: Duration = Duration::from_secs(300);

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The control plane under load and what the driver needs to reach it.
struct Bench {
    plane: ControlPlaneProcess,
    root: Authed,
    receiver: Receiver,
    /// The database, for statement counts and seeding.
    db: DatabaseConnection,
    /// The dedicated Postgres (None on SQLite).
    postgres: Option<PgServer>,
}

/// Cost counters sampled before and after a run.
#[derive(Clone, Copy, Default)]
struct Costs {
    keyplane_ticks: u64,
    postgres_ticks: u64,
}

impl Bench {
    async fn costs(&self) -> Costs {
        Costs {
            keyplane_ticks: cpu_ticks(self.plane.child.id().expect("pid")),
            postgres_ticks: self.postgres.as_ref().map_or(0, PgServer::cpu_ticks),
        }
    }

    /// A new org with an API key that may publish, and `endpoints`
    /// subscriptions to `path`.
    async fn org(&self, path: &str, endpoints: usize) -> (String, String) {
        let org = random_org();
        let mut keys = pb::api_key_service_client::ApiKeyServiceClient::new(self.root.clone());
        let created = keys
            .create_api_key(pb::CreateApiKeyRequest {
                org_id: org.clone(),
                name: "publisher".into(),
                scopes: vec!["keyplane:events:publish".into()],
                ..Default::default()
            })
            .await
            .expect("create publishing key")
            .into_inner();
        let mut webhooks = pb::webhook_service_client::WebhookServiceClient::new(self.root.clone());
        for _ in 0..endpoints {
            webhooks
                .create_subscription(pb::CreateSubscriptionRequest {
                    org_id: org.clone(),
                    url: self.receiver.url(path),
                    event_types: vec!["*".into()],
                    ..Default::default()
                })
                .await
                .expect("subscribe");
        }
        (org, created.token)
    }

    /// Starts a run from a quiet database: on Postgres the previous runs'
    /// dead rows are vacuumed, a checkpoint flushes their pages (so neither
    /// lands in the middle of this run), and the statement counters reset.
    async fn quiesce(&self) {
        if self.postgres.is_some() {
            for statement in ["VACUUM ANALYZE", "CHECKPOINT", "SELECT pg_stat_statements_reset()"] {
                self.db.execute_unprepared(statement).await.expect("quiesce Postgres");
            }
        }
    }

    /// Publishes `messages` messages to the org (its `endpoints` endpoints
    /// all on `path`) with `publishers` concurrent publishers, each on its
    /// own connection; returns when every delivery arrived and prints the
    /// rates and costs.
    async fn throughput(
        &self,
        (org, token): (String, String),
        path: &str,
        messages: usize,
        endpoints: usize,
        publishers: usize,
    ) {
        let deliveries = messages * endpoints;
        let mut clients = Vec::with_capacity(publishers);
        for _ in 0..publishers {
            clients.push(pb::event_service_client::EventServiceClient::new(
                authed_channel(&self.plane.addr, &token).await,
            ));
        }
        let before_count = self.receiver.count(path);
        self.quiesce().await;
        let before = self.costs().await;
        let started = Instant::now();
        let latencies = publish_concurrently(clients, messages, move |i| publish_request(&org, i)).await;
        let publish = Summary::of(latencies, started.elapsed());
        wait_count(&self.receiver, path, before_count + deliveries).await;
        let elapsed = started.elapsed();
        let after = self.costs().await;
        println!("  PublishEvent: {publish}");
        println!(
            "  {deliveries} deliveries in {:.2}s from the first publication: {:.0} deliveries/s",
            elapsed.as_secs_f64(),
            deliveries as f64 / elapsed.as_secs_f64()
        );
        let per_thousand = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1000.0 / deliveries as f64;
        let seconds = elapsed.as_secs_f64();
        println!(
            "  CPU: keyplane {:.0} % of a core ({:.3} s per 1,000 deliveries), Postgres {:.0} % ({:.3} s per 1,000)",
            (after.keyplane_ticks - before.keyplane_ticks) as f64 / TICKS_PER_SECOND / seconds * 100.0,
            per_thousand(after.keyplane_ticks - before.keyplane_ticks),
            (after.postgres_ticks - before.postgres_ticks) as f64 / TICKS_PER_SECOND / seconds * 100.0,
            per_thousand(after.postgres_ticks - before.postgres_ticks),
        );
        if let Some((total, top)) = match &self.postgres {
            Some(_) => Some(postgres::statements(&self.db).await),
            None => None,
        } {
            let per_thousand = total as f64 * 1000.0 / deliveries as f64;
            println!("  statements: {per_thousand:.0} per 1,000 deliveries; longest in total (calls, ms):");
            for (calls, ms, query) in top.iter().take(8) {
                let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
                println!("    {calls:>7} {ms:>8.0}  {}", query.chars().take(100).collect::<String>());
            }
        }
    }
}

/// Waits until `path` got `count` requests (bounded by [`DEADLINE`]).
async fn wait_count(receiver: &Receiver, path: &str, count: usize) {
    let deadline = Instant::now() + DEADLINE;
    while receiver.count(path) < count {
        assert!(Instant::now() < deadline, "{path}: {} of {count} deliveries after {DEADLINE:?}", receiver.count(path));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn publish_request(org: &str, i: usize) -> pb::PublishEventRequest {
    pb::PublishEventRequest {
        org_id: org.to_owned(),
        event_type: "order.created".into(),
        payload_json: format!(r#"{{"order_id":{i},"amount_cents":1999,"currency":"EUR"}}"#),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = if args.backend == "postgres" { Backend::Postgres } else { Backend::Sqlite };
    let dir = tempfile::tempdir().expect("temp dir");
    // Production durability, and statement statistics.
    let postgres = (backend == Backend::Postgres).then(|| {
        postgres::dedicated_with(
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on \
             -c shared_preload_libraries=pg_stat_statements",
        )
        .expect("Postgres is required for --backend postgres")
    });
    let database_url = match &postgres {
        Some(server) => server.create_database().await,
        None => backend.fresh_database(dir.path()).await.expect("SQLite"),
    };
    let flags = ["--webhook-max-subscriptions", "1000", "--admin-requests-per-second", "0"];
    let server = WebhookServer::with_database(backend, database_url.clone(), dir.path(), &flags);
    let plane = ControlPlaneProcess::start(&server.args).await;
    let db = sea_orm::Database::connect(&database_url).await.expect("connect to the database");
    if postgres.is_some() {
        db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await.expect("extension");
    }
    let root = authed_channel(&plane.addr, &server.root_token()).await;
    let bench = Bench { plane, root, receiver: Receiver::start().await, db, postgres };
    println!(
        "backend={} cpus={} (keyplane serve, release, child process; publishers and receiver in this process)",
        args.backend,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    for &publishers in &args.publishers {
        let path = format!("/one/{publishers}");
        println!("1 endpoint, {} messages, {publishers} publishers:", args.messages);
        bench.throughput(bench.org(&path, 1).await, &path, args.messages, 1, publishers).await;
    }

    println!(
        "fan-out: {} endpoints × {} messages, {} publishers:",
        args.fanout_endpoints, args.fanout_messages, args.fanout_publishers
    );
    let org = bench.org("/fanout", args.fanout_endpoints).await;
    bench.throughput(org, "/fanout", args.fanout_messages, args.fanout_endpoints, args.fanout_publishers).await;

    paced(&bench, &args).await;
    if args.list_rows > 0 {
        list_deliveries(&bench, backend, &args).await;
    }
    bench.plane.kill().await;
}

/// Publish → receipt latency at a fixed rate, one endpoint: every message
/// is published by a task of its own on a shared connection.
async fn paced(bench: &Bench, args: &Args) {
    let (org, token) = bench.org("/paced", 1).await;
    let client = pb::event_service_client::EventServiceClient::new(authed_channel(&bench.plane.addr, &token).await);
    bench.quiesce().await;
    let total = usize::try_from(args.rate * args.seconds).expect("count");
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
    let mut publishers = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let (mut client, request, sent) = (client.clone(), publish_request(&org, i), sent.clone());
        publishers.push(tokio::spawn(async move {
            let begun = Instant::now();
            let event = client.publish_event(request).await.expect("publish").into_inner().event.expect("event");
            sent.lock().expect("lock").insert(event.id, begun);
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    wait_count(&bench.receiver, "/paced", total).await;
    let sent = sent.lock().expect("lock").clone();
    let latencies: Vec<Duration> = bench
        .receiver
        .received("/paced")
        .iter()
        .filter_map(|r| sent.get(&r.header("webhook-id")).map(|begun| r.at.saturating_duration_since(*begun)))
        .collect();
    println!(
        "publish→receipt at {}/s for {}s: {}",
        args.rate,
        args.seconds,
        Summary::of(latencies, Duration::from_secs(args.seconds))
    );
}

/// Seeds `list_rows` finished deliveries in one org (10 subscriptions, 5%
/// failed) with SQL, then measures ListDeliveries pages one at a time.
async fn list_deliveries(bench: &Bench, backend: Backend, args: &Args) {
    let org = random_org();
    let seeded = Instant::now();
    let now = chrono::Utc::now();
    let select = "SELECT 'dlv_' || {id}, {org}, 'sub_' || (i % 10), 'msg_' || {id}, 'order.created', \
                  CASE WHEN i % 20 = 0 THEN 'failed' ELSE 'succeeded' END, 1, {now}, 200, NULL, {now}, {now}";
    let columns = "INSERT INTO webhook_deliveries (id, org_id, subscription_id, event_id, event_type, status, \
                   attempt_count, next_attempt_at, last_status_code, last_error, created_at, finished_at)";
    let statement = match backend {
        Backend::Postgres => Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "{columns} {} FROM generate_series(1, $3) i",
                select.replace("{id}", "lpad(i::text, 22, '0')").replace("{org}", "$1").replace("{now}", "$2")
            ),
            [org.clone().into(), now.into(), (args.list_rows as i64).into()],
        ),
        Backend::Sqlite => Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?3) {columns} {} FROM n",
                select.replace("{id}", "printf('%022d', i)").replace("{org}", "?1").replace("{now}", "?2")
            ),
            [org.clone().into(), now.into(), (args.list_rows as i64).into()],
        ),
    };
    bench.db.execute_raw(statement).await.expect("seed deliveries");
    let analyze = if backend == Backend::Postgres { "VACUUM ANALYZE webhook_deliveries" } else { "ANALYZE" };
    bench.db.execute_unprepared(analyze).await.expect("analyze");
    println!("seeded {} deliveries in {:.1}s", args.list_rows, seeded.elapsed().as_secs_f64());

    let mut client = pb::delivery_service_client::DeliveryServiceClient::new(bench.root.clone());
    type MakeRequest = fn() -> pb::ListDeliveriesRequest;
    let kinds: [(&str, MakeRequest); 3] = [
        ("walk", pb::ListDeliveriesRequest::default),
        ("one subscription", || pb::ListDeliveriesRequest { subscription_id: "sub_3".into(), ..Default::default() }),
        ("failed only", || pb::ListDeliveriesRequest {
            status: pb::DeliveryStatus::Failed as i32,
            ..Default::default()
        }),
    ];
    for (kind, make) in kinds {
        let mut page_token = String::new();
        let mut latencies = Vec::with_capacity(args.list_requests);
        let started = Instant::now();
        for _ in 0..args.list_requests {
            let mut request = make();
            request.org_id = org.clone();
            request.page_size = 50;
            request.page_token = page_token.clone();
            let begun = Instant::now();
            let page = client.list_deliveries(request).await.expect("list").into_inner();
            latencies.push(begun.elapsed());
            assert_eq!(page.deliveries.len(), 50);
            page_token = page.next_page_token;
        }
        println!(
            "ListDeliveries page of 50, {} rows, {kind}: {}",
            args.list_rows,
            Summary::of(latencies, started.elapsed())
        );
    }
}
