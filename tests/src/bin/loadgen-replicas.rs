//! Load generator for the control plane at scale on Postgres (BENCHMARKS.md):
//! three `keyplane serve` replicas (release binaries, child processes) on
//! one Postgres.
//!
//! 1. Revocation through replica A → denial at a real `keyplane-sidecar`
//!    attached to replica C (other replicas learn of commits through
//!    LISTEN/NOTIFY).
//!    Then a role change through replica A → the permission query of a
//!    forward-auth route decided the new way by sidecars attached to
//!    replicas B and C (each sidecar's time, and the time until both).
//! 2. Fan-out: `--streams` Watch streams on each replica (one HTTP/2
//!    connection each, as sidecars have), then `--revocations` revocations
//!    through random replicas: every stream must get every event; latency
//!    from the revocation call's start to each stream's receipt. With
//!    `--orgs N` the revoked keys belong to N orgs and stream i asks only
//!    for org i mod N's events (sidecars started with `--org`): each must
//!    get exactly its org's.
//! 3. The replicas' RSS and CPU with the streams open and idle (heartbeats only).
//!
//! `cargo build --release --workspace && target/release/loadgen-replicas`
//!
//! Every loop is bounded in count and time; everything is on loopback.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync_pb;
use keyplane_tests::Backend;
use keyplane_tests::process::{self, ControlPlaneProcess, SidecarProcess, WebhookServer};
use keyplane_tests::stats::Summary;
use rand::Rng;

#[derive(Parser)]
struct Args {
    /// Revocations timed end to end through a sidecar on another replica.
    #[arg(long, default_value_t = 100)]
    sidecar_revocations: usize,
    /// Role changes timed end to end through sidecars on two other replicas.
    #[arg(long, default_value_t = 100)]
    role_changes: usize,
    /// Watch streams opened on each of the three replicas.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Revocations fanned out to every stream.
    #[arg(long, default_value_t = 200)]
    revocations: usize,
    /// Revocations per second during the fan-out (0: back to back).
    #[arg(long, default_value_t = 50)]
    revocation_rate: u64,
    /// Orgs the fan-out's keys belong to, each stream following one of them
    /// (0: one org, every stream following every org).
    #[arg(long, default_value_t = 0)]
    orgs: usize,
    /// Seconds the streams stay idle while the replicas' CPU is measured.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
}

/// (RSS in KiB, CPU time in clock ticks) of a process.
fn usage(pid: u32) -> (u64, u64) {
    (process::rss_kib(pid), process::cpu_ticks(pid))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let server = WebhookServer::prepare(Backend::Postgres, dir.path(), &[]).await.expect("Postgres is required");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ControlPlaneProcess::start(&server.args).await);
    }
    let root = server.root_token();
    let mut keys = Vec::new();
    for replica in &replicas {
        let channel = keyplane_tests::authed_channel(&replica.addr, &root).await;
        keys.push(pb::api_key_service_client::ApiKeyServiceClient::new(channel));
    }
    let create = |org: &str, name: &str, scopes: &[&str]| pb::CreateApiKeyRequest {
        org_id: org.to_owned(),
        name: name.to_owned(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let credential =
        keys[0].create_api_key(create("keyplane", "sidecar", &["keyplane:sidecar"])).await.unwrap().into_inner().token;
    let org = keyplane_tests::random_org();
    let orgs: Vec<String> = (0..args.orgs).map(|i| format!("{org}-{i}")).collect();
    // The org of the fan-out's i-th key.
    let org_of = |i: usize| if orgs.is_empty() { org.clone() } else { orgs[i % orgs.len()].clone() };
    let total = args.sidecar_revocations + args.revocations;
    let mut tokens = Vec::with_capacity(total);
    for i in 0..total {
        let key_org = if i < args.sidecar_revocations { org.clone() } else { org_of(i - args.sidecar_revocations) };
        let created = keys[i % 3].create_api_key(create(&key_org, "bench", &[])).await.unwrap().into_inner();
        tokens.push((created.api_key.unwrap().id, created.token, key_org));
    }

    // 1. Through replica A, denied at a sidecar of replica C.
    let sidecar = SidecarProcess::start_following(&[replicas[2].addr.clone()], &credential).await;
    let http = reqwest::Client::new();
    let mut latencies = Vec::new();
    for (id, token, _) in &tokens[..args.sidecar_revocations] {
        let status = http.get(sidecar.check_url()).bearer_auth(token).send().await.unwrap().status();
        assert_eq!(status, 200, "cached before the revocation");
        let started = Instant::now();
        let revoke = pb::RevokeApiKeyRequest { org_id: org.clone(), id: id.clone(), reason: String::new() };
        keys[0].revoke_api_key(revoke).await.unwrap();
        loop {
            let status = http.get(sidecar.check_url()).bearer_auth(token).send().await.unwrap().status();
            if status == 401 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "revocation applied within 5 s");
        }
        latencies.push(started.elapsed());
    }
    println!(
        "revocation through replica A → denial at a sidecar of replica C: {}",
        Summary::of(latencies, Duration::from_secs(1))
    );
    sidecar.kill().await;
    role_changes(&replicas, &root, &credential, &org, args.role_changes).await;

    // 2. Fan-out to `streams` Watch streams per replica.
    let before: Vec<_> = replicas.iter().map(|r| usage(r.child.id().unwrap())).collect();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String, Instant)>();
    let mut watchers = Vec::new();
    let opened = Instant::now();
    for stream in 0..args.streams * 3 {
        let replica = &replicas[stream % 3];
        let channel = keyplane_tests::authed_channel(&replica.addr, &credential).await;
        let mut client = sync_pb::key_sync_service_client::KeySyncServiceClient::new(channel);
        let org_ids = if orgs.is_empty() { Vec::new() } else { vec![orgs[stream % orgs.len()].clone()] };
        let request = sync_pb::WatchRequest { after_seq: 0, from_head: true, org_ids };
        let mut messages = client.watch(request).await.unwrap().into_inner();
        let seen = seen_tx.clone();
        watchers.push(tokio::spawn(async move {
            while let Ok(Some(message)) = messages.message().await {
                if let Some(sync_pb::watch_response::Message::Event(event)) = message.message {
                    let _ = seen.send((stream, event.key_id, Instant::now()));
                }
            }
        }));
    }
    println!("opened {} Watch streams in {:.1}s", args.streams * 3, opened.elapsed().as_secs_f64());
    let opened_usage: Vec<_> = replicas.iter().map(|r| usage(r.child.id().unwrap())).collect();

    // 3. Idle: heartbeats only.
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    for (i, replica) in replicas.iter().enumerate() {
        let (rss, ticks) = usage(replica.child.id().unwrap());
        let cpu = (ticks - opened_usage[i].1) as f64 / TICKS_PER_SECOND / args.idle_seconds as f64;
        println!(
            "replica {i}: RSS {} KiB before streams, {rss} KiB with {} streams; idle CPU {:.2} % of a core",
            before[i].0,
            args.streams,
            cpu * 100.0
        );
    }

    let mut started = HashMap::new();
    let fanout_started = Instant::now();
    let mut pace = (args.revocation_rate > 0)
        .then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / args.revocation_rate as f64)));
    for (id, _, key_org) in &tokens[args.sidecar_revocations..] {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let through = rand::rng().random_range(0..3);
        started.insert(id.clone(), (Instant::now(), key_org.clone()));
        let revoke = pb::RevokeApiKeyRequest { org_id: key_org.clone(), id: id.clone(), reason: String::new() };
        keys[through].revoke_api_key(revoke).await.unwrap();
    }
    // What stream `stream` must get: every revocation of the org it follows.
    let wanted = |stream: usize| {
        (0..args.revocations).filter(|i| orgs.is_empty() || i % orgs.len() == stream % orgs.len()).count()
    };
    let expected: usize = (0..args.streams * 3).map(wanted).sum();
    let mut received = 0;
    let mut latencies = Vec::with_capacity(expected);
    let mut per_stream = vec![0usize; args.streams * 3];
    while received < expected {
        let (stream, key_id, at) = tokio::time::timeout(Duration::from_secs(30), seen_rx.recv())
            .await
            .expect("every stream gets every event within 30 s")
            .unwrap();
        if let Some((begun, key_org)) = started.get(&key_id) {
            assert!(orgs.is_empty() || *key_org == orgs[stream % orgs.len()], "a stream got another org's event");
            latencies.push(at.saturating_duration_since(*begun));
            per_stream[stream] += 1;
            received += 1;
        }
    }
    assert!((0..per_stream.len()).all(|s| per_stream[s] == wanted(s)), "every stream got every event of its orgs");
    let elapsed = fanout_started.elapsed();
    println!(
        "fan-out of {} revocations ({}/s) to {} streams following {} ({} deliveries, all received): {}",
        args.revocations,
        args.revocation_rate,
        args.streams * 3,
        if orgs.is_empty() { "every org".to_owned() } else { format!("one of {} orgs each", orgs.len()) },
        expected,
        Summary::of(latencies, elapsed)
    );
    for watcher in watchers {
        watcher.abort();
    }
    for replica in replicas {
        replica.kill().await;
    }
}

/// Step 1, continued: flips a role's permission through replica A and times until
/// sidecars of replicas B and C answer `/check/orders` (which requires
/// `orders.read`) the new way, for a key holding the role.
async fn role_changes(replicas: &[ControlPlaneProcess], root: &str, credential: &str, org: &str, changes: usize) {
    let channel = keyplane_tests::authed_channel(&replicas[0].addr, root).await;
    let mut roles = pb::role_service_client::RoleServiceClient::new(channel.clone());
    let mut keys = pb::api_key_service_client::ApiKeyServiceClient::new(channel);
    let create = pb::CreateRoleRequest {
        org_id: org.to_owned(),
        name: "clerk".into(),
        permissions: vec!["orders.read".into()],
        ..Default::default()
    };
    let role = roles.create_role(create).await.unwrap().into_inner().role.unwrap();
    let request = pb::CreateApiKeyRequest { org_id: org.to_owned(), name: "clerk".into(), ..Default::default() };
    let created = keys.create_api_key(request).await.unwrap().into_inner();
    let (key_id, token) = (created.api_key.unwrap().id, created.token);
    let grant = pb::SetRolesRequest { org_id: org.to_owned(), holder_id: key_id, roles: vec!["clerk".into()] };
    roles.set_roles(grant).await.unwrap();
    let route = ["--route-permissions", "orders=orders.read"];
    let mut sidecars = Vec::new();
    for replica in &replicas[1..] {
        sidecars
            .push(SidecarProcess::start_following_with(std::slice::from_ref(&replica.addr), credential, &route).await);
    }
    let http = reqwest::Client::new();
    let check = |sidecar: &SidecarProcess| {
        let url = sidecar.check_url().replace("/check", "/check/orders");
        http.get(url).bearer_auth(&token).send()
    };
    for sidecar in &sidecars {
        assert_eq!(check(sidecar).await.unwrap().status(), 200, "the role grants orders.read");
    }
    let (mut each, mut both) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let (permission, expected) = if i % 2 == 0 { ("orders.list", 403) } else { ("orders.read", 200) };
        let update = pb::UpdateRoleRequest {
            org_id: org.to_owned(),
            id: role.id.clone(),
            update: Some(pb::RoleUpdate { permissions: vec![permission.into()], ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["permissions".into()] }),
        };
        let started = Instant::now();
        roles.update_role(update).await.unwrap();
        let mut pending: Vec<&SidecarProcess> = sidecars.iter().collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for sidecar in pending {
                if check(sidecar).await.unwrap().status() == expected {
                    each.push(started.elapsed());
                } else {
                    still.push(sidecar);
                }
            }
            pending = still;
            assert!(started.elapsed() < Duration::from_secs(5), "role change applied within 5 s");
        }
        both.push(started.elapsed());
    }
    println!(
        "role change through replica A → decided at a sidecar of replica B or C: {}",
        Summary::of(each, Duration::from_secs(1))
    );
    println!("role change through replica A → decided at both sidecars: {}", Summary::of(both, Duration::from_secs(1)));
    for sidecar in sidecars {
        sidecar.kill().await;
    }
}
