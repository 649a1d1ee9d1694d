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
use sea_orm::DatabaseConnection;

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
    seed::deliveries(&db, &org, &endpoints, 1..=args.deliveries, 1.0, "bench").await;
    seed::analyze_deliveries(&db).await;
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
