//! Load generator for the control plane's key API (BENCHMARKS.md):
//! VerifyApiKey cold (argon2) and warm, CreateApiKey throughput, and
//! ListApiKeys page latency with many keys in one org.
//!
//! `cargo run --release -p keyplane-tests --bin loadgen-keys -- --backend postgres`
//!
//! Every loop is bounded by a count; the control plane runs in-process on
//! 127.0.0.1:0 with production argon2 parameters unless told otherwise.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::stats::{Summary, measure};
use keyplane_tests::{Backend, TestControlPlane};

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Keys created (and then verified cold, once each).
    #[arg(long, default_value_t = 400)]
    keys: usize,
    /// Concurrent requests.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Keys seeded in one org for the list benchmark.
    #[arg(long, default_value_t = 100_000)]
    list_keys: usize,
    /// ListApiKeys requests measured.
    #[arg(long, default_value_t = 1000)]
    list_requests: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = match args.backend.as_str() {
        "postgres" => Backend::Postgres,
        _ => Backend::Sqlite,
    };
    let plane = TestControlPlane::start_with_production_hashing(backend).await.expect("backend available");
    println!("backend={} cpus={}", args.backend, std::thread::available_parallelism().map_or(0, |n| n.get()));
    let org = keyplane_tests::random_org();
    let client = plane.keys(&plane.root_token).await;

    // CreateApiKey throughput (each create hashes a secret with argon2id).
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let create = measure(args.keys, args.concurrency, |i| {
        let mut client = client.clone();
        let org = org.clone();
        let tokens = tokens.clone();
        async move {
            let created = client
                .create_api_key(pb::CreateApiKeyRequest {
                    org_id: org,
                    name: format!("bench {i}"),
                    ..Default::default()
                })
                .await
                .expect("create")
                .into_inner();
            tokens.lock().unwrap().push(created.token);
        }
    })
    .await;
    println!("CreateApiKey: {create}");

    let tokens = Arc::new(tokens.lock().unwrap().clone());
    for phase in ["VerifyApiKey cold (argon2)", "VerifyApiKey warm (verified-secret cache)"] {
        let summary = measure(tokens.len(), args.concurrency, |i| {
            let mut client = client.clone();
            let token = tokens[i].clone();
            async move {
                let response = client
                    .verify_api_key(pb::VerifyApiKeyRequest { token, ..Default::default() })
                    .await
                    .expect("verify")
                    .into_inner();
                assert!(response.valid);
            }
        })
        .await;
        println!("{phase}: {summary}");
    }

    // ListApiKeys with many keys in one org: seed rows directly (argon2 for
    // 100k keys would take an hour and is not what this measures).
    let list_org = keyplane_tests::random_org();
    let db = plane.database().await;
    let seeded = Instant::now();
    keyplane_tests::seed::keys(&db, args.list_keys, |i| {
        keyplane_tests::seed::key_row(
            &list_org,
            keyplane_control_plane::crypto::new_id("key_"),
            format!("seeded {i:06}"),
            if i % 10 == 0 { Environment::Test } else { Environment::Live },
            if i % 7 == 0 { KeyStatus::Revoked } else { KeyStatus::Active },
            keyplane_tests::seed::UNMATCHABLE_HASH,
        )
    })
    .await;
    println!("seeded {} keys in {:.1}s", args.list_keys, seeded.elapsed().as_secs_f64());

    // Three kinds of page, one request at a time: walking every page from
    // the start, filtered by status and environment, and by a name prefix.
    let mut client = client.clone();
    let mut page_token = String::new();
    type MakeRequest = fn(usize) -> pb::ListApiKeysRequest;
    let kinds: [(&str, MakeRequest); 3] = [
        ("walk", |_| pb::ListApiKeysRequest::default()),
        ("status+environment filter", |_| pb::ListApiKeysRequest {
            status: pb::ApiKeyStatus::Active as i32,
            environment: pb::Environment::Test as i32,
            ..Default::default()
        }),
        ("name prefix (100 matches)", |i| pb::ListApiKeysRequest {
            name_prefix: format!("seeded {:04}", (i * 7919) % 1000),
            ..Default::default()
        }),
    ];
    for (kind, make) in kinds {
        let mut latencies = Vec::with_capacity(args.list_requests);
        let started = Instant::now();
        for i in 0..args.list_requests {
            let mut request = make(i);
            request.org_id = list_org.clone();
            request.page_size = 50;
            if kind == "walk" {
                request.page_token = page_token.clone();
            }
            let begun = Instant::now();
            let page = client.list_api_keys(request).await.expect("list").into_inner();
            latencies.push(begun.elapsed());
            if kind == "walk" {
                page_token = page.next_page_token;
            }
        }
        println!(
            "ListApiKeys page of 50, {} keys, {kind}: {}",
            args.list_keys,
            Summary::of(latencies, started.elapsed())
        );
    }
    plane.stop().await;
}
