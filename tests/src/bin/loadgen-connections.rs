//! Load generator for OAuth connections (BENCHMARKS.md): `GetAccessToken`
//! for a valid token (read, open the sealed token, append the audit row) and
//! with a refresh at the fake provider on every call.
//!
//! `cargo run --release -p keyplane-tests --bin loadgen-connections -- --backend postgres`
//!
//! The control plane runs in-process on 127.0.0.1:0; the fake provider is a
//! real HTTP server on loopback. Every loop is bounded by a count.

use std::time::Duration;

use clap::Parser;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::oauth_provider::{ClientAuth, FakeProvider};
use keyplane_tests::stats::measure;
use keyplane_tests::{Backend, TestControlPlane, random_org};

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// GetAccessToken calls per run.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Connections the calls are spread over.
    #[arg(long, default_value_t = 100)]
    connections: usize,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = if args.backend == "postgres" { Backend::Postgres } else { Backend::Sqlite };
    let provider = FakeProvider::start("keyplane", "bench-secret", ClientAuth::Basic).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "bench-secret").expect("secret");
    let file = dir.path().join("providers.toml");
    std::fs::write(&file, provider.provider_toml("bench", &secret, "client_secret_basic")).expect("providers");
    let plane = TestControlPlane::start_with(backend, |config| {
        config.oauth_providers = Some(file.clone());
        config.egress.allow_cidr = vec!["127.0.0.0/8".parse().expect("cidr")];
        config.egress.allow_http = true;
    })
    .await
    .expect("backend available");
    println!("backend={} cpus={}", args.backend, std::thread::available_parallelism().map_or(0, |n| n.get()));

    let org = random_org();
    let client = plane.connections(&plane.root_token).await;
    for (phase, lifetime) in [("valid token", 3600), ("refresh on every call", 30)] {
        provider.set_access_lifetime(lifetime);
        let mut ids = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            let request = pb::ExchangeCodeRequest {
                org_id: org.clone(),
                provider: "bench".into(),
                code: provider.issue_code(None),
                redirect_uri: "https://app.example/callback".into(),
                ..Default::default()
            };
            let connection = client.clone().exchange_code(request).await.expect("exchange").into_inner();
            ids.push(connection.connection.expect("connection").id);
        }
        let refreshes_before = provider.refreshes();
        let summary = measure(args.calls, args.concurrency, |i| {
            let mut client = client.clone();
            let request = pb::GetAccessTokenRequest { org_id: org.clone(), id: ids[i % ids.len()].clone() };
            async move {
                client.get_access_token(request).await.expect("access token");
            }
        })
        .await;
        println!(
            "GetAccessToken, {phase} ({} connections, {} in flight, {} refreshes): {summary}",
            args.connections,
            args.concurrency,
            provider.refreshes() - refreshes_before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    plane.stop().await;
}
