//! Load generator for webhook delivery (BENCHMARKS.md): sustained
//! deliveries/s with 1 and with 100 subscriptions, publish→receipt latency
//! at a fixed publication rate, and ListDeliveries page latency with 1M
//! delivery rows.
//!
//! `cargo run --release -p keyplane-tests --bin loadgen-webhooks -- --backend postgres`
//!
//! The control plane runs in-process on 127.0.0.1:0 and delivers to a real
//! HTTP receiver on loopback. Every loop is bounded by a count and a deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::stats::{Summary, measure};
use keyplane_tests::{Backend, TestControlPlane, random_org};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Events published to one subscription for the throughput run.
    #[arg(long, default_value_t = 5000)]
    events: usize,
    /// Events published to 100 subscriptions (each makes 100 deliveries).
    #[arg(long, default_value_t = 100)]
    fanout_events: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Events per second in the latency run.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Length of the latency run in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Delivery rows seeded for the ListDeliveries run.
    #[arg(long, default_value_t = 1_000_000)]
    list_rows: u64,
    /// ListDeliveries requests measured per kind.
    #[arg(long, default_value_t = 1000)]
    list_requests: usize,
}

/// Longest any phase may wait for its deliveries.
const DEADLINE: Duration = Duration::from_secs(300);

/// Waits until `path` got `count` requests (bounded by [`DEADLINE`]).
async fn wait_count(receiver: &Receiver, path: &str, count: usize) {
    let deadline = Instant::now() + DEADLINE;
    while receiver.count(path) < count {
        assert!(Instant::now() < deadline, "{path}: {} of {count} deliveries after {DEADLINE:?}", receiver.count(path));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn subscribe(plane: &TestControlPlane, org: &str, url: String) {
    plane
        .webhooks(&plane.root_token)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.to_owned(),
            url,
            event_types: vec!["*".into()],
            ..Default::default()
        })
        .await
        .expect("subscribe");
}

fn publish_request(org: &str, i: usize) -> pb::PublishEventRequest {
    pb::PublishEventRequest {
        org_id: org.to_owned(),
        event_type: "order.created".into(),
        payload_json: format!(r#"{{"order_id":{i},"amount_cents":1999,"currency":"EUR"}}"#),
        idempotency_key: String::new(),
    }
}

/// Publishes `events` events with `concurrency` publishers; returns when
/// `deliveries` requests reached `path`, with the deliveries/s over that span.
async fn throughput(
    plane: &TestControlPlane,
    receiver: &Receiver,
    org: &str,
    path: &str,
    events: usize,
    deliveries: usize,
    concurrency: usize,
) {
    let client = plane.events(&plane.root_token).await;
    let started = Instant::now();
    let org = org.to_owned();
    let publish = measure(events, concurrency, |i| {
        let (mut client, request) = (client.clone(), publish_request(&org, i));
        async move {
            client.publish_event(request).await.expect("publish");
        }
    })
    .await;
    wait_count(receiver, path, deliveries).await;
    let elapsed = started.elapsed();
    println!("  PublishEvent: {publish}");
    println!(
        "  {deliveries} deliveries in {:.2}s from the first publication: {:.0} deliveries/s",
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = if args.backend == "postgres" { Backend::Postgres } else { Backend::Sqlite };
    let plane = TestControlPlane::start_with(backend, |config| {
        config.egress.allow_cidr = vec!["127.0.0.0/8".parse().expect("cidr")];
        config.egress.allow_http = true;
        config.webhooks.max_subscriptions = 200;
        config.webhooks.poll_interval = Duration::from_secs(1);
    })
    .await
    .expect("backend available");
    println!("backend={} cpus={}", args.backend, std::thread::available_parallelism().map_or(0, |n| n.get()));
    let receiver = Receiver::start().await;

    println!("1 subscription, {} events:", args.events);
    let org = random_org();
    subscribe(&plane, &org, receiver.url("/one")).await;
    throughput(&plane, &receiver, &org, "/one", args.events, args.events, args.concurrency).await;

    println!("100 subscriptions, {} events:", args.fanout_events);
    let org = random_org();
    for _ in 0..100 {
        subscribe(&plane, &org, receiver.url("/fanout")).await;
    }
    throughput(&plane, &receiver, &org, "/fanout", args.fanout_events, args.fanout_events * 100, args.concurrency)
        .await;

    // Publish→receipt latency at a fixed rate, one subscription.
    let org = random_org();
    subscribe(&plane, &org, receiver.url("/paced")).await;
    let total = usize::try_from(args.rate * args.seconds).expect("count");
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
    let mut publishers = Vec::with_capacity(total);
    for i in 0..total {
        ticker.tick().await;
        let (mut client, request, sent) =
            (plane.events(&plane.root_token).await, publish_request(&org, i), sent.clone());
        publishers.push(tokio::spawn(async move {
            let begun = Instant::now();
            let event = client.publish_event(request).await.expect("publish").into_inner().event.expect("event");
            sent.lock().expect("lock").insert(event.id, begun);
        }));
    }
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    wait_count(&receiver, "/paced", total).await;
    let sent = sent.lock().expect("lock").clone();
    let latencies: Vec<Duration> = receiver
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

    list_deliveries(&plane, backend, &args).await;
    plane.stop().await;
}

/// Seeds `list_rows` finished deliveries in one org (10 subscriptions, 5%
/// failed) with SQL, then measures ListDeliveries pages one at a time.
async fn list_deliveries(plane: &TestControlPlane, backend: Backend, args: &Args) {
    let org = random_org();
    let db = plane.database().await;
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
    db.execute_raw(statement).await.expect("seed deliveries");
    let analyze = if backend == Backend::Postgres { "VACUUM ANALYZE webhook_deliveries" } else { "ANALYZE" };
    db.execute_unprepared(analyze).await.expect("analyze");
    println!("seeded {} deliveries in {:.1}s", args.list_rows, seeded.elapsed().as_secs_f64());

    let mut client = plane.deliveries(&plane.root_token).await;
    type MakeRequest = fn(usize) -> pb::ListDeliveriesRequest;
    let kinds: [(&str, MakeRequest); 3] = [
        ("walk", |_| pb::ListDeliveriesRequest::default()),
        ("one subscription", |_| pb::ListDeliveriesRequest { subscription_id: "sub_3".into(), ..Default::default() }),
        ("failed only", |_| pb::ListDeliveriesRequest {
            status: pb::DeliveryStatus::Failed as i32,
            ..Default::default()
        }),
    ];
    for (kind, make) in kinds {
        let mut page_token = String::new();
        let mut latencies = Vec::with_capacity(args.list_requests);
        let started = Instant::now();
        for i in 0..args.list_requests {
            let mut request = make(i);
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
