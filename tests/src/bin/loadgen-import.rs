//! Load generator for key import (BENCHMARKS.md, "Key import"): ImportApiKeys
//! throughput per hash format, in batches of 1,000, and what an imported
//! key costs at verification — the first VerifyApiKey (the old system's
//! hash), and later ones (the verified-secret cache) — against keys
//! Keyplane issued, measured in the same run.
//!
//! `cargo run --release -p keyplane-tests --bin loadgen-import -- --backend postgres`
//!
//! Hashes are made before the clock starts, with the formats' usual costs
//! (bcrypt 10, argon2id 19 MiB/t=2, scrypt ln=14). Every loop is bounded.

use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::PasswordHasher;
use base64::Engine;
use clap::Parser;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::stats::{Summary, measure};
use keyplane_tests::{Backend, TestControlPlane};
use pb::ImportedHashFormat as Format;
use sha2::Digest;

#[derive(Parser)]
struct Args {
    /// sqlite or postgres.
    #[arg(long, default_value = "sqlite")]
    backend: String,
    /// Keys imported per SHA-256 format.
    #[arg(long, default_value_t = 5000)]
    digest_keys: usize,
    /// Keys imported per salted format (their hashes take long to make).
    #[arg(long, default_value_t = 300)]
    salted_keys: usize,
    /// Keys verified per format (cold, then warm).
    #[arg(long, default_value_t = 200)]
    verify_keys: usize,
    /// Concurrent verifications.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// A token and the record its old system would export.
fn record(format: Format, i: usize) -> (String, pb::ImportedApiKey) {
    let token =
        format!("cc_live_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>()));
    let hash = match format {
        Format::Sha256Hex => keyplane_control_plane::crypto::hex(&sha2::Sha256::digest(token.as_bytes())),
        Format::Bcrypt => bcrypt::hash(&token, 10).expect("bcrypt"),
        Format::Argon2 => argon2::Argon2::default().hash_password(token.as_bytes()).expect("argon2").to_string(),
        Format::Scrypt => {
            let params = scrypt::Params::new(14, 8, 1).expect("params");
            let salt: [u8; 16] = rand::random();
            scrypt::Scrypt::new_with_params(params)
                .hash_password_with_salt(token.as_bytes(), &salt)
                .expect("scrypt")
                .to_string()
        }
        _ => unreachable!("not benchmarked"),
    };
    let lookup = if format == Format::Sha256Hex { String::new() } else { token[..14].to_owned() };
    let key = pb::ImportedApiKey {
        source_id: format!("{}-{i}", format.as_str_name()),
        hash,
        hash_format: format.into(),
        lookup,
        ..Default::default()
    };
    (token, key)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = if args.backend == "postgres" { Backend::Postgres } else { Backend::Sqlite };
    let plane = TestControlPlane::start_with_production_hashing(backend).await.expect("backend available");
    println!("backend={} cpus={}", args.backend, std::thread::available_parallelism().map_or(0, |n| n.get()));
    let org = keyplane_tests::random_org();
    let client = plane.keys(&plane.root_token).await;

    // The baseline: keys Keyplane issues, verified cold and warm.
    let mut native = Vec::new();
    for i in 0..args.verify_keys {
        let request =
            pb::CreateApiKeyRequest { org_id: org.clone(), name: format!("native {i}"), ..Default::default() };
        native.push(client.clone().create_api_key(request).await.expect("create").into_inner().token);
    }
    verify_phases(&client, "native (Keyplane's argon2id)", Arc::new(native), args.concurrency).await;

    for (format, count) in [
        (Format::Sha256Hex, args.digest_keys),
        (Format::Bcrypt, args.salted_keys),
        (Format::Argon2, args.salted_keys),
        (Format::Scrypt, args.salted_keys),
    ] {
        let made: Vec<(String, pb::ImportedApiKey)> = tokio::task::spawn_blocking(move || {
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..2)
                    .map(|w| scope.spawn(move || (w..count).step_by(2).map(|i| record(format, i)).collect::<Vec<_>>()))
                    .collect();
                workers.into_iter().flat_map(|w| w.join().expect("hashing")).collect()
            })
        })
        .await
        .expect("hashing");
        let (tokens, records): (Vec<String>, Vec<pb::ImportedApiKey>) = made.into_iter().unzip();
        let started = Instant::now();
        for batch in records.chunks(1000) {
            let request = pb::ImportApiKeysRequest { org_id: org.clone(), keys: batch.to_vec(), upgrade_on_use: false };
            let answer = client.clone().import_api_keys(request).await.expect("import").into_inner();
            let imported = answer.results.iter().filter(|r| r.outcome == pb::ImportOutcome::Imported as i32).count();
            assert_eq!(imported, batch.len(), "{:?}", answer.results.iter().find(|r| r.key_id.is_empty()));
        }
        let took = started.elapsed();
        println!(
            "ImportApiKeys {}: {count} keys in {took:.2?} = {:.0} keys/s",
            format.as_str_name(),
            count as f64 / took.as_secs_f64()
        );
        let sample: Vec<String> = tokens.into_iter().take(args.verify_keys).collect();
        verify_phases(&client, format.as_str_name(), Arc::new(sample), args.concurrency).await;
    }
    plane.stop().await;
}

/// VerifyApiKey of each token once (cold), then again (warm).
async fn verify_phases(
    client: &pb::api_key_service_client::ApiKeyServiceClient<keyplane_tests::Authed>,
    label: &str,
    tokens: Arc<Vec<String>>,
    concurrency: usize,
) {
    for phase in ["cold", "warm"] {
        let summary: Summary = measure(tokens.len(), concurrency, |i| {
            let mut client = client.clone();
            let token = tokens[i].clone();
            async move {
                let request = pb::VerifyApiKeyRequest { token, ..Default::default() };
                let answer = client.verify_api_key(request).await.expect("verify").into_inner();
                assert!(answer.valid, "{answer:?}");
            }
        })
        .await;
        println!("VerifyApiKey {label} {phase}: {summary}");
    }
}
