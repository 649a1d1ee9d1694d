//! Load generator for the web console (BENCHMARKS.md): the time of each
//! page and its size, in an org with `--keys` keys and `--deliveries`
//! webhook deliveries (each with an attempt) spread over five endpoints,
//! written straight into the database.
//!
//! Pages are fetched one at a time over loopback by a signed-in client,
//! `--requests` times each, after a warm-up; the baseline is a trivial
//! axum handler answering the same client in the same run, so a page's
//! time minus the baseline's is what the console spends on it.
//!
//! `cargo run --release -p keyplane-tests --bin loadgen-console -- --backend postgres`
//!
//! Every loop is bounded by its count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use keyplane_control_plane::crypto::new_id;
use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::stats::measure;
use keyplane_tests::{Backend, random_org, seed, webhooks};
use sea_orm::{ConnectionTrait, DatabaseConnection};

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "postgres")]
    backend: String,
    /// Keys of the org.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Webhook deliveries of the org.
    #[arg(long, default_value_t = 1_000_000)]
    deliveries: usize,
    /// Requests measured per page.
    #[arg(long, default_value_t = 200)]
    requests: usize,
}

/// Endpoints the deliveries are spread over.
const ENDPOINTS: usize = 5;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let backend = if args.backend == "postgres" { Backend::Postgres } else { Backend::Sqlite };
    let plane = webhooks::start(backend, |_| {}).await.expect("backend available");
    let org = random_org();
    let db = plane.database().await;

    let started = Instant::now();
    let key_ids = seed_keys(&db, &org, args.keys).await;
    let mut endpoints = Vec::new();
    for i in 0..ENDPOINTS {
        let (subscription, _) =
            webhooks::subscribe(&plane, &org, &format!("http://127.0.0.1:9/hook/{i}"), &["*"]).await;
        endpoints.push(subscription.id);
    }
    seed_deliveries(&db, backend, &org, &endpoints, args.deliveries).await;
    println!(
        "seeded {} keys and {} deliveries (and as many events and attempts) in {:.0}s",
        args.keys,
        args.deliveries,
        started.elapsed().as_secs_f64()
    );

    let (_, admin) = plane.create_key(&org, &["keyplane:admin"]).await;
    let console = ConsoleClient::new(plane.console_addr);
    console.sign_in_to(&admin, &org).await;
    let console = Arc::new(console);
    let delivery = format!("dlv_bench{:013}", args.deliveries / 2);
    let pages = [
        ("overview", "/".to_owned()),
        ("keys", "/keys".to_owned()),
        ("keys, name prefix", "/keys?prefix=bench+0999".to_owned()),
        ("keys, revoked test keys", "/keys?status=revoked&environment=test".to_owned()),
        ("a key (24 h chart)", format!("/keys/{}", key_ids[key_ids.len() / 2])),
        ("webhooks", "/webhooks".to_owned()),
        ("an endpoint (chart, delivery log)", format!("/webhooks/{}", endpoints[0])),
        ("an endpoint, failed only", format!("/webhooks/{}?status=failed", endpoints[0])),
        ("an endpoint, one event type", format!("/webhooks/{}?event_type=invoice.paid", endpoints[0])),
        ("a delivery", format!("/deliveries/{delivery}")),
        ("audit", "/audit".to_owned()),
    ];
    let mut assets = 0;
    for path in ["/static/console.css", "/static/console.js"] {
        assets += console.get(path).await.body.len();
    }

    let baseline = Arc::new(ConsoleClient::new(trivial_server().await));
    let summary = measure(args.requests, 1, |_| {
        let baseline = baseline.clone();
        async move {
            assert_eq!(baseline.get("/").await.body, "ok");
        }
    })
    .await;
    println!("{:<36} {summary}", "baseline (trivial hyper handler)");
    for (name, path) in pages {
        let page = console.get(&path).await;
        assert_eq!(page.status, 200, "{name}: {}", page.body);
        for _ in 0..10 {
            console.get(&path).await;
        }
        let summary = measure(args.requests, 1, |_| {
            let (console, path) = (console.clone(), path.clone());
            async move {
                assert_eq!(console.get(&path).await.status, 200);
            }
        })
        .await;
        let bytes = page.body.len();
        println!("{name:<36} {summary} html={:.1}KB with assets={:.1}KB", kb(bytes), kb(bytes + assets));
    }
    plane.stop().await;
}

fn kb(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

/// A trivial hyper handler on loopback answering `ok`; returns its address.
async fn trivial_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    keyplane_tests::serve_http(listener, |_| async {
        Ok(hyper::Response::new(http_body_util::Full::new(hyper::body::Bytes::from_static(b"ok"))))
    });
    addr
}

/// Seeds `count` keys of `org` (a tenth test keys, a seventh revoked, names
/// `bench 000000`…); returns their ids.
async fn seed_keys(db: &DatabaseConnection, org: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    seed::keys(db, count, |i| {
        let id = new_id("key_");
        ids.push(id.clone());
        seed::key_row(
            org,
            id,
            format!("bench {i:06}"),
            if i % 10 == 0 { Environment::Test } else { Environment::Live },
            if i % 7 == 0 { KeyStatus::Revoked } else { KeyStatus::Active },
            seed::UNMATCHABLE_HASH,
        )
    })
    .await;
    ids
}

/// `count` events, each delivered once (one attempt) to one of
/// `endpoints` in turn, a second apart up to now; one in ten failed, event
/// types `order.created` and (one in twenty) `invoice.paid`. Written by the
/// database itself.
async fn seed_deliveries(db: &DatabaseConnection, backend: Backend, org: &str, endpoints: &[String], count: usize) {
    let run = |sql: String| async move { db.execute_unprepared(&sql).await.expect("seed deliveries") };
    let (series, at, pick) = if backend == Backend::Postgres {
        (
            format!("generate_series(1, {count}) AS s(n)"),
            format!("now() - make_interval(secs => {count} - n)"),
            "(ARRAY[{endpoints}])[1 + n % {len}]",
        )
    } else {
        (
            format!(
                "(WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {count}) SELECT n FROM s)"
            ),
            format!("strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-' || ({count} - n) || ' seconds')"),
            "json_extract(json_array({endpoints}), '$[' || (n % {len}) || ']')",
        )
    };
    let quoted: Vec<String> = endpoints.iter().map(|id| format!("'{id}'")).collect();
    let pick = pick.replace("{endpoints}", &quoted.join(",")).replace("{len}", &endpoints.len().to_string());
    let id = |prefix: &str| {
        if backend == Backend::Postgres {
            format!("'{prefix}bench' || lpad(n::text, 13, '0')")
        } else {
            format!("'{prefix}bench' || printf('%013d', n)")
        }
    };
    let event_type = "CASE WHEN n % 20 = 0 THEN 'invoice.paid' ELSE 'order.created' END";
    let failed = "n % 10 = 0";
    run(format!(
        "INSERT INTO webhook_events (id, org_id, event_type, payload, idempotency_key, created_at) \
         SELECT {}, '{org}', {event_type}, '{{\"order\":' || n || '}}', NULL, {at} FROM {series}",
        id("msg_")
    ))
    .await;
    run(format!(
        "INSERT INTO webhook_deliveries (id, org_id, subscription_id, event_id, event_type, status, attempt_count, \
         next_attempt_at, last_status_code, last_error, created_at, finished_at) \
         SELECT {}, '{org}', {pick}, {}, {event_type}, CASE WHEN {failed} THEN 'failed' ELSE 'succeeded' END, 1, \
         {at}, CASE WHEN {failed} THEN 500 ELSE 200 END, NULL, {at}, {at} FROM {series}",
        id("dlv_"),
        id("msg_")
    ))
    .await;
    run(format!(
        "INSERT INTO webhook_attempts (id, delivery_id, org_id, number, started_at, status_code, latency_micros, \
         error, response_excerpt) \
         SELECT {}, {}, '{org}', 1, {at}, CASE WHEN {failed} THEN 500 ELSE 200 END, 1000 + n % 5000, NULL, 'ok' \
         FROM {series}",
        id("att_"),
        id("dlv_")
    ))
    .await;
    for table in ["webhook_events", "webhook_deliveries", "webhook_attempts"] {
        seed::analyze(db, table).await;
    }
}
