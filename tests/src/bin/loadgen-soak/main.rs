//! Soak (BENCHMARKS.md, "Soak"): grows the tables to production size in
//! steps and measures the hot paths at each, in one sitting on Postgres.
//!
//! At each step (`--steps`, in webhook deliveries; each delivery has its
//! event and an attempt, half in the measured org and half in another):
//! a tenth as many keys over `--orgs` orgs (1 M keys at 10 M deliveries),
//! and from the first step on `--usage-days` of hourly usage rollups for
//! 1,000 keys. Rows are written by the database itself (the API would spend
//! hours of argon2 and delivery on them), then vacuumed and analyzed, as
//! autovacuum would after a bulk load. Then, through the real API:
//!
//! - publish → receipt: `--messages` to one endpoint by 16 publishers,
//!   throughput and p99 from each publication's start to its receipt;
//! - dispatch: fan-out to 20 endpoints, deliveries/s;
//! - a sidecar's cache-miss verify (a key it has not seen), p99;
//! - ListDeliveries (first page of 50 of the measured org, and of one
//!   endpoint), p99;
//! - the console's endpoint page (delivery log and chart), p99.
//!
//! Each step is measured in `--rounds` rounds; the last table gives each
//! figure's median at every step and its ratio to the empty tables' (for
//! latencies, empty p99 / step p99): ≥ 0.8 is the goal.
//!
//! `cargo build --release -p keyplane-tests --bin loadgen-soak && target/release/loadgen-soak`
//!
//! Every loop is bounded by a count and a deadline; everything is on loopback.

mod figures;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use figures::{Figures, report};
use keyplane_control_plane::crypto::new_id;
use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::postgres::{self, PgServer};
use keyplane_tests::receiver::Receiver;
use keyplane_tests::stats::{Summary, measure};
use keyplane_tests::{Backend, TestControlPlane, TestSidecar, random_org, seed, webhooks};
use sea_orm::{ConnectionTrait, DatabaseConnection};

#[derive(Parser)]
struct Args {
    /// Webhook deliveries in the tables at each step.
    #[arg(long, value_delimiter = ',', default_value = "0,1000000,5000000,10000000")]
    steps: Vec<usize>,
    /// Orgs the keys are spread over.
    #[arg(long, default_value_t = 1000)]
    orgs: usize,
    /// Days of hourly usage rollups.
    #[arg(long, default_value_t = 90)]
    usage_days: i64,
    /// `on`: succeeded deliveries are purged after 30 days (the default;
    /// the seeded rows are younger, so the purge runs and finds little);
    /// `off`: kept for a century.
    #[arg(long, default_value = "on")]
    retention: String,
    /// Messages of the publish → receipt run.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Rounds of measurement at each step; the table gives each figure's median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Cache-miss verifies, ListDeliveries pages and console pages measured per round.
    #[arg(long, default_value_t = 200)]
    requests: usize,
}

/// How long any wait for deliveries may take.
const DEADLINE: Duration = Duration::from_secs(300);
const PUBLISHERS: usize = 16;
const FANOUT_ENDPOINTS: usize = 20;
const FANOUT_MESSAGES: usize = 100;
/// Deliveries seeded at the "empty" step: a first page for each org and endpoint.
const EMPTY: usize = 200;
/// How far back seeded deliveries go.
const SEEDED_SPAN: Duration = Duration::from_secs(25 * 86_400);
/// Keys with hourly usage rollups.
const USAGE_KEYS: usize = 1000;

struct Soak {
    _postgres: PgServer,
    plane: TestControlPlane,
    sidecar: TestSidecar,
    receiver: Receiver,
    db: DatabaseConnection,
    console: Arc<ConsoleClient>,
    /// The measured org and its endpoint holding half the seeded deliveries.
    org: String,
    bulk_endpoint: String,
    /// The other org holding seeded deliveries, and its endpoint.
    other: (String, String),
    fanout_org: String,
    key_orgs: Vec<String>,
    deliveries: usize,
    keys: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let retention = match args.retention.as_str() {
        "on" => Duration::from_secs(30 * 86_400),
        "off" => Duration::from_secs(100 * 365 * 86_400),
        other => panic!("--retention is on or off, not {other}"),
    };
    let mut soak = Soak::start(&args, retention).await;
    println!(
        "soak on Postgres, retention {} ({} cpus; control plane and sidecar in this process)",
        args.retention,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut results = Vec::new();
    for &step in &args.steps {
        let grown = Instant::now();
        // "Empty" still holds a page for each listing: a page of none costs less.
        soak.grow(step.max(EMPTY), &args).await;
        println!("\n{step} deliveries: grown in {:.0}s; {}", grown.elapsed().as_secs_f64(), soak.sizes().await);
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            println!(" round {round}:");
            rounds.push(soak.measure(&args).await);
        }
        results.push((step, Figures::median(&rounds)));
    }
    report(&results);
}

impl Soak {
    async fn start(args: &Args, retention: Duration) -> Self {
        // A server of its own, counting statements: where a figure falls,
        // the statements say what the time went to.
        let postgres =
            postgres::dedicated_with("-c shared_preload_libraries=pg_stat_statements").expect("Postgres is required");
        let database_url = postgres.create_database().await;
        let plane = webhooks::start(Backend::Postgres, |config| {
            config.storage.database_url = Some(database_url);
            config.webhooks.max_subscriptions = 1000;
            config.webhooks.delivery_retention = retention;
            config.abuse.admin_requests_per_second = 0;
        })
        .await
        .expect("Postgres is required");
        let sidecar = TestSidecar::start(&plane, |_| {}).await;
        let receiver = Receiver::start().await;
        let db = plane.database().await;
        db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await.expect("extension");
        let org = random_org();
        let bulk = |org: String| {
            let plane = &plane;
            async move {
                // Seeded rows are finished; the endpoint takes no new events.
                let (subscription, _) =
                    webhooks::subscribe(plane, &org, "http://127.0.0.1:9/bulk", &["bulk.none"]).await;
                (org, subscription.id)
            }
        };
        let (_, bulk_endpoint) = bulk(org.clone()).await;
        let other = bulk(random_org()).await;
        webhooks::subscribe(&plane, &org, &receiver.url("/soak"), &["order.created"]).await;
        let fanout_org = random_org();
        for i in 0..FANOUT_ENDPOINTS {
            webhooks::subscribe(&plane, &fanout_org, &receiver.url(&format!("/fan?e={i}")), &["order.created"]).await;
        }
        let (_, admin) = plane.create_key(&org, &["keyplane:admin"]).await;
        let console = ConsoleClient::new(plane.console_addr);
        console.sign_in_to(&admin, &org).await;
        let key_orgs = (0..args.orgs).map(|_| random_org()).collect();
        Self {
            _postgres: postgres,
            plane,
            sidecar,
            receiver,
            db,
            console: Arc::new(console),
            org,
            bulk_endpoint,
            other,
            fanout_org,
            key_orgs,
            deliveries: 0,
            keys: 0,
        }
    }

    /// Grows the tables to `deliveries` deliveries and a tenth as many keys.
    async fn grow(&mut self, deliveries: usize, args: &Args) {
        if deliveries <= self.deliveries {
            return;
        }
        let (from, to) = (self.deliveries / 2 + 1, deliveries / 2);
        // Every row younger than 25 days, so a 30-day retention finds none
        // to purge: what is measured is its sweep over the grown tables.
        let apart = SEEDED_SPAN.as_secs_f64() / (to as f64);
        let endpoints = [(self.org.clone(), self.bulk_endpoint.clone()), self.other.clone()];
        for (n, (org, endpoint)) in endpoints.iter().enumerate() {
            let tag = format!("soak{n}_");
            seed::deliveries(&self.db, org, std::slice::from_ref(endpoint), from..=to, apart, &tag).await;
        }
        seed::analyze_deliveries(&self.db).await;
        let first_keys = self.keys == 0;
        // Keys (and their usage) come with the first real step.
        let (have, want) = (self.keys, if deliveries > EMPTY { deliveries / 10 } else { 0 });
        let mut usage_ids = Vec::new();
        let orgs = &self.key_orgs;
        seed::keys(&self.db, want - have, |i| {
            let n = have + i;
            let id = new_id("key_");
            // The first 1,000 keys are the first org's: they get the usage rollups.
            let org = if n < USAGE_KEYS { &orgs[0] } else { &orgs[n % orgs.len()] };
            if n < USAGE_KEYS {
                usage_ids.push(id.clone());
            }
            seed::key_row(org, id, format!("soak {n:07}"), Environment::Live, KeyStatus::Active, seed::UNMATCHABLE_HASH)
        })
        .await;
        if first_keys && !usage_ids.is_empty() {
            seed::rollups(&self.db, &orgs[0], &usage_ids, args.usage_days, chrono::Utc::now()).await;
        }
        self.keys = want;
        self.deliveries = deliveries;
        self.db.execute_unprepared("CHECKPOINT").await.expect("checkpoint");
    }

    /// Rows and on-disk sizes of the grown tables.
    async fn sizes(&self) -> String {
        let tables = ["webhook_deliveries", "webhook_attempts", "webhook_events", "api_keys", "usage_key_hours"];
        let mut sizes = Vec::new();
        for table in tables {
            let sql = format!(
                "SELECT (SELECT count(*) FROM {table}) AS n, pg_total_relation_size('{table}')::bigint AS bytes"
            );
            let row = self.db.query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, sql));
            let row = row.await.expect("size").expect("a row");
            let (n, bytes): (i64, i64) = (row.try_get("", "n").expect("n"), row.try_get("", "bytes").expect("bytes"));
            sizes.push(format!("{table} {n} rows {:.0} MB", bytes as f64 / 1e6));
        }
        sizes.join(", ")
    }

    async fn measure(&self, args: &Args) -> Figures {
        self.db.execute_unprepared("SELECT pg_stat_statements_reset()").await.expect("reset statements");
        let (publish_rate, publish_p99) = self.publish_to_receipt(args.messages).await;
        println!(
            "  publish → receipt, 1 endpoint, {} messages: {publish_rate:.0}/s, p99 {publish_p99:?}",
            args.messages
        );
        let dispatch_rate = self.fan_out().await;
        println!(
            "  dispatch, {FANOUT_ENDPOINTS} endpoints × {FANOUT_MESSAGES} messages: {dispatch_rate:.0} deliveries/s"
        );
        let verify = self.cache_miss_verifies(args.requests).await;
        println!("  sidecar cache-miss verify: {verify}");
        let list = self.list_deliveries(args.requests, "").await;
        println!("  ListDeliveries, first page of 50: {list}");
        self.explain_first_page().await;
        let list_endpoint = self.list_deliveries(args.requests, &self.bulk_endpoint).await;
        println!("  ListDeliveries, one endpoint, first page of 50: {list_endpoint}");
        let path = format!("/webhooks/{}", self.bulk_endpoint);
        assert_eq!(self.console.get(&path).await.status, 200, "the endpoint page");
        let console = measure(args.requests, 1, |_| {
            let (console, path) = (self.console.clone(), path.clone());
            async move { assert_eq!(console.get(&path).await.status, 200) }
        })
        .await;
        println!("  console endpoint page: {console}");
        let (calls, top) = postgres::statements(&self.db).await;
        println!("  statements while measuring: {calls}; the longest in all:");
        for (calls, ms, query) in top.iter().take(6) {
            println!("    {calls:>7} {ms:>9.1} ms  {}", query.chars().take(140).collect::<String>());
        }
        Figures {
            publish_rate,
            publish_p99,
            dispatch_rate,
            verify_p99: verify.p99,
            list_p99: list.p99,
            list_endpoint_p99: list_endpoint.p99,
            console_p99: console.p99,
        }
    }

    /// Publishes `messages` to the measured org's receiver endpoint;
    /// returns messages/s from the first publication to the last receipt,
    /// and the p99 from a publication's start to its receipt.
    async fn publish_to_receipt(&self, messages: usize) -> (f64, Duration) {
        let begun: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let before = self.receiver.count("/soak");
        let started = Instant::now();
        self.publish(&self.org, messages, Some(begun.clone())).await;
        let received = self.wait_for("/soak", before, messages).await;
        let begun = begun.lock().expect("lock");
        let mut last = started;
        let latencies: Vec<Duration> = received
            .iter()
            .filter_map(|r| {
                let start = begun.get(&r.header("webhook-id"))?;
                last = last.max(r.at);
                Some(r.at.saturating_duration_since(*start))
            })
            .collect();
        assert_eq!(latencies.len(), messages, "every publication was received");
        let elapsed = last - started;
        (messages as f64 / elapsed.as_secs_f64(), Summary::of(latencies, elapsed).p99)
    }

    /// Deliveries/s of a fan-out from the first publication to the last receipt.
    async fn fan_out(&self) -> f64 {
        let before = self.receiver.count("/fan");
        let started = Instant::now();
        self.publish(&self.fanout_org, FANOUT_MESSAGES, None).await;
        let received = self.wait_for("/fan", before, FANOUT_MESSAGES * FANOUT_ENDPOINTS).await;
        let last = received.iter().map(|r| r.at).max().unwrap_or(started);
        (FANOUT_MESSAGES * FANOUT_ENDPOINTS) as f64 / (last - started).as_secs_f64()
    }

    /// Publishes `messages` `order.created` events to `org` from
    /// [`PUBLISHERS`] connections, noting when each began in `begun`.
    async fn publish(&self, org: &str, messages: usize, begun: Option<Arc<Mutex<HashMap<String, Instant>>>>) {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..PUBLISHERS {
            let mut client = self.plane.events(&self.plane.root_token).await;
            let (next, begun, org) = (next.clone(), begun.clone(), org.to_owned());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < messages {
                    let request = pb::PublishEventRequest {
                        org_id: org.clone(),
                        event_type: "order.created".into(),
                        payload_json: r#"{"order_id":1,"amount_cents":1999}"#.into(),
                        ..Default::default()
                    };
                    let start = Instant::now();
                    let published = client.publish_event(request).await.expect("publish").into_inner();
                    if let Some(begun) = &begun {
                        begun.lock().expect("lock").insert(published.event.expect("event").id, start);
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("publisher");
        }
    }

    /// Waits until `path` got `before + more` requests (bounded by
    /// [`DEADLINE`]); returns the ones after the first `before`.
    async fn wait_for(&self, path: &str, before: usize, more: usize) -> Vec<keyplane_tests::receiver::Received> {
        let mut all = self.receiver.wait_for(path, before + more, DEADLINE).await;
        all.drain(..before);
        all
    }

    /// Keys the sidecar has not seen, each checked once (a miss: one Verify).
    async fn cache_miss_verifies(&self, count: usize) -> Summary {
        let mut tokens = Vec::with_capacity(count);
        for _ in 0..count {
            tokens.push(self.plane.create_key(&self.org, &[]).await.1);
        }
        let tokens = Arc::new(tokens);
        measure(count, 1, |i| {
            let (tokens, http, url) =
                (tokens.clone(), self.sidecar.http.clone(), format!("http://{}/check", self.sidecar.http_addr));
            async move {
                let response = http.get(url).bearer_auth(&tokens[i]).send().await.expect("check");
                assert_eq!(response.status(), 200, "a fresh key is allowed");
            }
        })
        .await
    }

    /// The plan of the query a first page runs, and what it read.
    async fn explain_first_page(&self) {
        use keyplane_control_plane::store::deliveries::{DeliveryFilter, list_query};
        use sea_orm::{DbBackend, QueryTrait};
        let query = list_query(DbBackend::Postgres, &self.org, &DeliveryFilter::default(), None, 51);
        let mut statement = query.build(DbBackend::Postgres);
        statement.sql = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}", statement.sql);
        for row in self.db.query_all_raw(statement).await.expect("explain") {
            println!("    {}", row.try_get::<String>("", "QUERY PLAN").expect("plan line"));
        }
    }

    /// First pages of 50 of the measured org's deliveries (of one endpoint when given).
    async fn list_deliveries(&self, count: usize, subscription_id: &str) -> Summary {
        let client = self.plane.deliveries(&self.plane.root_token).await;
        let request = pb::ListDeliveriesRequest {
            org_id: self.org.clone(),
            subscription_id: subscription_id.to_owned(),
            page_size: 50,
            ..Default::default()
        };
        measure(count, 1, |_| {
            let (mut client, request) = (client.clone(), request.clone());
            async move {
                let page = client.list_deliveries(request).await.expect("list").into_inner();
                assert!(!page.deliveries.is_empty() || page.next_page_token.is_empty());
            }
        })
        .await
    }
}
