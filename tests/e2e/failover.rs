//! Failover between control-plane replicas, with real processes: three
//! `keyplane serve` replicas on one Postgres and three `keyplane-sidecar`s,
//! each given every replica (`--control-plane a,b,c`) in a different order.
//! One replica is killed with SIGKILL while revocations flow through the
//! others: every revocation reaches every sidecar, and no sidecar stops
//! being ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::process::{ControlPlaneProcess, SidecarProcess, WebhookServer};
use keyplane_tests::{Backend, authed_channel, eventually_within, random_org};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_move_to_another_replica_when_theirs_dies_postgres() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = WebhookServer::prepare(Backend::Postgres, dir.path(), &[]).await else { return };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ControlPlaneProcess::start(&server.args).await);
    }
    let root = server.root_token();
    let mut keys = Vec::new();
    for replica in &replicas {
        keys.push(pb::api_key_service_client::ApiKeyServiceClient::new(authed_channel(&replica.addr, &root).await));
    }
    let create = |org: &str, scopes: &[&str]| pb::CreateApiKeyRequest {
        org_id: org.to_owned(),
        name: "k".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    let credential =
        keys[1].create_api_key(create("keyplane", &["keyplane:sidecar"])).await.unwrap().into_inner().token;
    let org = random_org();
    let mut tokens = Vec::new();
    for _ in 0..40 {
        let created = keys[1].create_api_key(create(&org, &[])).await.unwrap().into_inner();
        tokens.push((created.api_key.unwrap().id, created.token));
    }

    // Sidecar i follows replica i first, then the others.
    let addresses: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    let mut sidecars = Vec::new();
    for first in 0..3 {
        let order: Vec<String> = (0..3).map(|i| addresses[(first + i) % 3].clone()).collect();
        sidecars.push(SidecarProcess::start_following(&order, &credential).await);
    }
    let http = reqwest::Client::new();
    let status = |sidecar: &SidecarProcess, token: &str| {
        let request = http.get(sidecar.check_url()).bearer_auth(token.to_owned());
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    for sidecar in &sidecars {
        for (_, token) in &tokens {
            assert_eq!(status(sidecar, token).await, 200);
        }
    }

    // Readiness is watched throughout: it must never drop.
    let unready = Arc::new(AtomicBool::new(false));
    let watching = Arc::new(AtomicBool::new(true));
    let mut watchers = Vec::new();
    for sidecar in &sidecars {
        let (ready, unready, watching) =
            (format!("http://{}/readyz", sidecar.http_addr), unready.clone(), watching.clone());
        let http = http.clone();
        watchers.push(tokio::spawn(async move {
            while watching.load(Ordering::Acquire) {
                let status = http.get(&ready).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                if status != 200 {
                    unready.store(true, Ordering::Release);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // Revocations flow through replicas 1 and 2; replica 0 dies after the tenth.
    let revoked = 30;
    let mut doomed = Some(replicas.remove(0));
    for (i, (id, _)) in tokens[..revoked].iter().enumerate() {
        if i == 10 {
            doomed.take().unwrap().kill().await;
        }
        let revoke = pb::RevokeApiKeyRequest { org_id: org.clone(), id: id.clone(), reason: String::new() };
        keys[1 + i % 2].revoke_api_key(revoke).await.expect("revoke through a live replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, sidecar) in sidecars.iter().enumerate() {
        for (id, token) in &tokens[..revoked] {
            let denied =
                eventually_within(Duration::from_secs(10), || status(sidecar, token), |s| *s == 401 || *s == 0).await;
            assert_eq!(denied, 401, "sidecar {n} denies {id}");
        }
    }
    // Once denied, never allowed again; keys not revoked still work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for sidecar in &sidecars {
        for (_, token) in &tokens[..revoked] {
            assert_eq!(status(sidecar, token).await, 401);
        }
        for (_, token) in &tokens[revoked..] {
            assert_eq!(status(sidecar, token).await, 200);
        }
    }
    watching.store(false, Ordering::Release);
    for watcher in watchers {
        watcher.await.unwrap();
    }
    assert!(!unready.load(Ordering::Acquire), "a sidecar left the ready state during the failover");
    let moved =
        http.get(format!("http://{}/metrics", sidecars[0].http_addr)).send().await.unwrap().text().await.unwrap();
    assert!(
        keyplane_tests::metric_value(&moved, "keyplane_sidecar_stream_reconnects_total", "") >= 1.0,
        "the sidecar of the killed replica reconnected elsewhere"
    );
    for sidecar in sidecars {
        sidecar.kill().await;
    }
    for replica in replicas {
        replica.kill().await;
    }
}
