//! The sidecar against a real control plane: Envoy ext_authz and HTTP
//! forward-auth decisions, revocation propagation, resume, reset, the race
//! rule, single flight, staleness, rate limits and usage reports.

use std::collections::HashMap;
use std::time::Duration;

use envoy::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3 as envoy;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{
    Backend, TestControlPlane, TestSidecar, both_backends, eventually_within, ext_authz_request as check_request,
    random_org, start_or_skip,
};
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;

both_backends!(
    ext_authz_allow_and_deny,
    forward_auth_with_each_proxy_convention,
    revocation_and_updates_reach_three_sidecars,
    changes_while_disconnected_are_applied_on_reconnect,
    reset_after_compaction_flushes_the_cache,
    answers_that_race_a_revocation_are_never_allowed,
    one_verify_per_token_and_none_for_garbage,
    staleness_fails_closed_and_recovers,
    rate_limits_usage_and_environments,
);

// Replicas share one Postgres (ARCHITECTURE.md, "A revocation"); SQLite is the single-process
// embedded default, so this runs on Postgres only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revocations_through_two_replicas_postgres() {
    concurrent_revocations_through_two_replicas(Backend::Postgres).await
}

/// Other replicas' commits wake a replica's tailer through Postgres
/// LISTEN/NOTIFY: with polling every 30 s, a revocation through one replica
/// still reaches a sidecar of another at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_replicas_commits_arrive_without_polling_postgres() {
    let slow_polls = |config: &mut keyplane_control_plane::Config| {
        config.event_poll_interval = Duration::from_secs(30);
        config.heartbeat_interval = Duration::from_secs(60);
    };
    let Some(plane) = TestControlPlane::start_with(Backend::Postgres, slow_polls).await else { return };
    let replica = plane.replica().await;
    let sidecar = TestSidecar::start(&replica, |config| config.max_staleness = Duration::from_secs(120)).await;
    let org = random_org();
    let (key, token) = plane.create_key(&org, &[]).await;
    assert_eq!(sidecar.check_status(&token).await, 200);
    let revoke = pb::RevokeApiKeyRequest { org_id: org.clone(), id: key.id.clone(), reason: String::new() };
    plane.keys(&plane.root_token).await.revoke_api_key(revoke).await.expect("revoke through the first replica");
    eventually_within(Duration::from_secs(5), || sidecar.check_status(&token), |status| *status == 401).await;
    sidecar.stop().await;
    replica.stop().await;
    plane.stop().await;
}

async fn ext_authz_allow_and_deny(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let org = random_org();
    let (key, token) = plane.create_key(&org, &["orders:read"]).await;
    let bearer = format!("Bearer {token}");
    let mut client = AuthorizationClient::connect(format!("http://{}", sidecar.grpc_addr)).await.unwrap();

    let allowed = client
        .check(check_request(
            &[("authorization", &bearer), ("x-keyplane-org-id", "spoofed")],
            &[("required_scopes", "orders:read")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(allowed.status.as_ref().unwrap().code, Code::Ok as i32);
    let Some(envoy::check_response::HttpResponse::OkResponse(ok)) = allowed.http_response else {
        panic!("expected an ok response: {allowed:?}");
    };
    let headers: HashMap<String, (String, i32)> = ok
        .headers
        .iter()
        .map(|h| {
            let header = h.header.clone().unwrap();
            (header.key, (header.value, h.append_action))
        })
        .collect();
    let overwrite = envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32;
    assert_eq!(headers["x-keyplane-key-id"], (key.id.clone(), overwrite));
    assert_eq!(headers["x-keyplane-org-id"], (org.clone(), overwrite), "overwrites the spoofed value");
    assert_eq!(headers["x-keyplane-scopes"].0, "orders:read");
    assert_eq!(headers["x-keyplane-environment"].0, "live");
    assert_eq!(headers["x-keyplane-identity"], (String::new(), overwrite), "no identity: a client's is overwritten");
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_owned()]);

    let denied = |response: envoy::CheckResponse| -> (i32, i32, HashMap<String, String>) {
        let code = response.status.unwrap().code;
        let Some(envoy::check_response::HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("expected a denied response");
        };
        let headers = denied.headers.into_iter().map(|h| h.header.unwrap()).map(|h| (h.key, h.value)).collect();
        (code, denied.status.unwrap().code, headers)
    };
    let (code, http, headers) = denied(
        client
            .check(check_request(&[("authorization", &bearer)], &[("required_scopes", "orders:write")]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!((code, http), (Code::PermissionDenied as i32, 403));
    assert!(!headers.contains_key("www-authenticate"));
    for request in [
        check_request(&[("authorization", "Bearer kp_live_garbage")], &[]),
        check_request(&[], &[]),
        check_request(&[("authorization", &format!("Basic {token}"))], &[]),
    ] {
        let (code, http, headers) = denied(client.check(request).await.unwrap().into_inner());
        assert_eq!((code, http), (Code::Unauthenticated as i32, 401));
        assert!(headers["www-authenticate"].starts_with("Bearer realm=\"keyplane\""));
    }
    let (_, test_token) = {
        let response = plane
            .keys(&plane.root_token)
            .await
            .create_api_key(pb::CreateApiKeyRequest {
                org_id: org.clone(),
                name: "test key".into(),
                environment: pb::Environment::Test as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        (response.api_key, response.token)
    };
    let (code, http, _) = denied(
        client
            .check(check_request(&[("authorization", &format!("Bearer {test_token}"))], &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!((code, http), (Code::PermissionDenied as i32, 403), "a live sidecar refuses test keys");
    sidecar.stop().await;
    plane.stop().await;
}

async fn forward_auth_with_each_proxy_convention(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |config| config.default_scopes = vec!["orders:read".into()]).await;
    let (key, token) = plane.create_key(&random_org(), &["orders:read"]).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", sidecar.http_addr);
    let bearer = format!("Bearer {token}");
    // (proxy, method, path, extra headers)
    type Convention = (&'static str, reqwest::Method, &'static str, Vec<(&'static str, &'static str)>);
    let conventions: [Convention; 4] = [
        (
            "traefik",
            reqwest::Method::GET,
            "/check",
            vec![("x-forwarded-method", "POST"), ("x-forwarded-uri", "/orders")],
        ),
        (
            "nginx",
            reqwest::Method::GET,
            "/check",
            vec![("x-original-method", "GET"), ("x-original-uri", "/orders?x=1")],
        ),
        ("caddy", reqwest::Method::GET, "/check", vec![("x-forwarded-method", "GET"), ("x-forwarded-uri", "/")]),
        ("envoy http", reqwest::Method::POST, "/check/orders/42", vec![]),
    ];
    for (proxy, method, path, extra) in conventions {
        let mut request = http.request(method.clone(), url(path)).header("authorization", &bearer);
        for (name, value) in &extra {
            request = request.header(*name, *value);
        }
        let response = request.header("x-keyplane-key-id", "spoofed").send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{proxy}: 200, never 204");
        assert_eq!(response.headers()["x-keyplane-key-id"], key.id.as_str(), "{proxy}");
        assert_eq!(response.headers()["x-envoy-auth-headers-to-remove"], "authorization");

        let mut missing = http.request(method, url(path));
        for (name, value) in &extra {
            missing = missing.header(*name, *value);
        }
        let response = missing.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{proxy}");
        assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    }
    let wrong_scope = sidecar.check(&token, Some("orders:write")).await;
    assert_eq!(wrong_scope.status().as_u16(), 403);
    assert_eq!(wrong_scope.text().await.unwrap().trim(), r#"{"error":"missing_scope"}"#);
    assert_eq!(sidecar.get("/healthz").await.0, 200);
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    assert_eq!(sidecar.get("/elsewhere").await.0, 404);
    sidecar.stop().await;
    plane.stop().await;
}

async fn revoke(plane: &TestControlPlane, org: &str, id: &str) {
    plane
        .keys(&plane.root_token)
        .await
        .revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.to_owned(), id: id.to_owned(), reason: "test".into() })
        .await
        .expect("revoke");
}

async fn revocation_and_updates_reach_three_sidecars(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecars = [
        TestSidecar::start(&plane, |_| {}).await,
        TestSidecar::start(&plane, |_| {}).await,
        TestSidecar::start(&plane, |_| {}).await,
    ];
    let org = random_org();
    let (key, token) = plane.create_key(&org, &["orders:read"]).await;
    for sidecar in &sidecars {
        assert_eq!(sidecar.check_status(&token).await, 200, "cached as valid");
        assert_eq!(sidecar.check(&token, Some("orders:write")).await.status().as_u16(), 403);
    }
    // Scope change: every sidecar applies it without waiting for its cache TTL.
    plane
        .keys(&plane.root_token)
        .await
        .update_api_key(pb::UpdateApiKeyRequest {
            org_id: org.clone(),
            id: key.id.clone(),
            update: Some(pb::ApiKeyUpdate {
                scopes: vec!["orders:read".into(), "orders:write".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["scopes".into()] }),
        })
        .await
        .unwrap();
    for sidecar in &sidecars {
        let started = std::time::Instant::now();
        while sidecar.check(&token, Some("orders:write")).await.status().as_u16() != 200 {
            assert!(started.elapsed() < Duration::from_secs(5), "update applied");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    revoke(&plane, &org, &key.id).await;
    for sidecar in &sidecars {
        let took = sidecar.wait_for_status(&token, 401).await;
        assert!(took < Duration::from_secs(2), "revocation took {took:?}");
        assert_eq!(sidecar.metric("keyplane_sidecar_checks_total", "reason=\"revoked\"").await, 1.0);
    }
    // Deletion too.
    let (other, other_token) = plane.create_key(&org, &[]).await;
    assert_eq!(sidecars[0].check_status(&other_token).await, 200);
    plane
        .keys(&plane.root_token)
        .await
        .delete_api_key(pb::DeleteApiKeyRequest { org_id: org.clone(), id: other.id })
        .await
        .unwrap();
    sidecars[0].wait_for_status(&other_token, 401).await;
    for sidecar in sidecars {
        sidecar.stop().await;
    }
    plane.stop().await;
}

/// A sidecar that has cached a valid key, then loses its control plane;
/// changes are made meanwhile through a replica on the same database.
struct CutOff {
    plane: TestControlPlane,
    replica: TestControlPlane,
    sidecar: TestSidecar,
    org: String,
    key: pb::ApiKey,
    token: String,
}

async fn cached_then_cut_off(backend: Backend) -> Option<CutOff> {
    let mut plane = TestControlPlane::start(backend).await?;
    let sidecar = TestSidecar::start(&plane, |config| config.max_staleness = Duration::from_secs(30)).await;
    let org = random_org();
    let (key, token) = plane.create_key(&org, &[]).await;
    assert_eq!(sidecar.check_status(&token).await, 200);
    plane.stop_for_now().await;
    let replica = plane.replica().await;
    Some(CutOff { plane, replica, sidecar, org, key, token })
}

async fn changes_while_disconnected_are_applied_on_reconnect(backend: Backend) {
    let Some(CutOff { mut plane, replica, sidecar, org, key, token }) = cached_then_cut_off(backend).await else {
        return;
    };
    revoke(&replica, &org, &key.id).await;
    replica.stop().await;
    assert_eq!(sidecar.check_status(&token).await, 200, "still cached: the sidecar has not heard yet");
    plane.start_again().await;
    let took = sidecar.wait_for_status(&token, 401).await;
    assert!(took < Duration::from_secs(8), "applied after reconnecting ({took:?})");
    assert!(sidecar.metric("keyplane_sidecar_stream_reconnects_total", "").await >= 1.0);

    // A restarted sidecar starts clean and sees the revocation too.
    sidecar.stop().await;
    let restarted = TestSidecar::start(&plane, |_| {}).await;
    assert_eq!(restarted.check_status(&token).await, 401);
    restarted.stop().await;
    plane.stop().await;
}

async fn reset_after_compaction_flushes_the_cache(backend: Backend) {
    let Some(CutOff { mut plane, replica, sidecar, org, key, token }) = cached_then_cut_off(backend).await else {
        return;
    };
    // While the sidecar is cut off: changes happen and the log is compacted
    // past its position, as retention would do.
    let (filler, _) = replica.create_key(&org, &[]).await;
    revoke(&replica, &org, &filler.id).await;
    revoke(&replica, &org, &key.id).await;
    let db = replica.database().await;
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        "DELETE FROM key_events WHERE seq < (SELECT MAX(seq) FROM key_events)",
    ))
    .await
    .unwrap();
    replica.stop().await;
    plane.start_again().await;
    let started = std::time::Instant::now();
    while sidecar.metric("keyplane_sidecar_stream_resets_total", "").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(8), "Reset received");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sidecar.check_status(&token).await, 401, "the flushed cache re-verifies");
    sidecar.stop().await;
    plane.stop().await;
}

async fn answers_that_race_a_revocation_are_never_allowed(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let org = random_org();
    let db = plane.database().await;
    let mut late_allows = 0;
    let client = plane.keys(&plane.root_token).await;
    let keys: Vec<_> = (0..500)
        .map(|_| {
            let (mut client, org) = (client.clone(), org.clone());
            async move {
                let response = client
                    .create_api_key(pb::CreateApiKeyRequest { org_id: org, name: "race".into(), ..Default::default() })
                    .await
                    .expect("create")
                    .into_inner();
                (response.api_key.expect("key"), response.token)
            }
        })
        .collect();
    let keys = futures_join_all(keys).await;
    for (trial, (key, token)) in keys.into_iter().enumerate() {
        // A check that misses the cache (Verify in flight) racing the revocation.
        let racing = {
            let (client, url, token) =
                (sidecar.http.clone(), format!("http://{}/check", sidecar.http_addr), token.clone());
            tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()) })
        };
        revoke(&plane, &org, &key.id).await;
        let seq: i64 = db
            .query_one_raw(Statement::from_string(db.get_database_backend(), "SELECT MAX(seq) AS seq FROM key_events"))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "seq")
            .unwrap();
        let _ = racing.await.unwrap();
        // Once the sidecar has applied the revocation, no answer may allow the key.
        let started = std::time::Instant::now();
        while (sidecar.metric("keyplane_sidecar_applied_seq", "").await as i64) < seq {
            assert!(started.elapsed() < Duration::from_secs(5), "trial {trial}: event applied");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..3 {
            if sidecar.check_status(&token).await == 200 {
                late_allows += 1;
            }
        }
    }
    assert_eq!(late_allows, 0, "allowed after the revocation was applied");
    sidecar.stop().await;
    plane.stop().await;
}

async fn one_verify_per_token_and_none_for_garbage(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let (_, token) = plane.create_key(&random_org(), &[]).await;
    let before = plane.metric("keyplane_verifications_total", "purpose=\"check\"").await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/check", sidecar.http_addr);
    let checks: Vec<_> = (0..1000)
        .map(|_| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for check in checks {
        assert_eq!(check.await.unwrap().unwrap(), 200);
    }
    let after = plane.metric("keyplane_verifications_total", "purpose=\"check\"").await;
    assert_eq!(after - before, 1.0, "1000 concurrent checks of one new token: one Verify");
    assert_eq!(sidecar.metric("keyplane_sidecar_verify_calls_total", "").await, 1.0);

    for garbage in ["kp_live_nope", "not a token", &format!("{token}x"), &token[..token.len() - 1]] {
        assert_eq!(sidecar.check_status(garbage).await, 401);
    }
    let forged = keyplane_tests::forge_secret(&token);
    for _ in 0..50 {
        assert_eq!(sidecar.check_status(&forged).await, 401);
    }
    assert_eq!(
        plane.metric("keyplane_verifications_total", "purpose=\"check\"").await - after,
        1.0,
        "garbage never reaches the control plane; a forged secret is verified once then cached"
    );
    sidecar.stop().await;
    plane.stop().await;
}

async fn staleness_fails_closed_and_recovers(backend: Backend) {
    let mut plane = start_or_skip!(backend);
    let closed = TestSidecar::start(&plane, |config| config.max_staleness = Duration::from_millis(800)).await;
    let open = TestSidecar::start(&plane, |config| {
        config.max_staleness = Duration::from_millis(800);
        config.fail_open = true;
    })
    .await;
    let (_, token) = plane.create_key(&random_org(), &[]).await;
    assert_eq!(closed.check_status(&token).await, 200);
    assert_eq!(open.check_status(&token).await, 200);
    plane.stop_for_now().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let stale = closed.check(&token, None).await;
    assert_eq!(stale.status().as_u16(), 503);
    assert_eq!(stale.text().await.unwrap().trim(), r#"{"error":"stale"}"#);
    assert_eq!(closed.get("/readyz").await.0, 503);
    assert_eq!(closed.get("/healthz").await.0, 200, "alive, just not ready");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", closed.grpc_addr)).unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.connect().await.unwrap());
    let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);
    assert_eq!(open.check_status(&token).await, 200, "fail-open keeps allowing from cache");

    plane.start_again().await;
    closed.wait_ready().await;
    assert_eq!(closed.check_status(&token).await, 200, "recovers by itself");
    closed.stop().await;
    open.stop().await;
    plane.stop().await;
}

async fn rate_limits_usage_and_environments(backend: Backend) {
    let plane = start_or_skip!(backend);
    let live = TestSidecar::start(&plane, |_| {}).await;
    let test = TestSidecar::start(&plane, |config| config.environment = keyplane_proto::token::Environment::Test).await;
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let created = keys
        .create_api_key(pb::CreateApiKeyRequest {
            org_id: org.clone(),
            name: "limited".into(),
            rate_limit: Some(pb::RateLimit {
                requests: 3,
                window: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let token = created.token;
    for _ in 0..3 {
        assert_eq!(live.check_status(&token).await, 200);
    }
    let limited = live.check(&token, None).await;
    assert_eq!(limited.status().as_u16(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(test.check_status(&token).await, 403, "a test sidecar refuses live keys");

    // Allowed checks are reported in batches and land in usage_count.
    let id = created.api_key.unwrap().id;
    let started = std::time::Instant::now();
    loop {
        let key = keys
            .get_api_key(pb::GetApiKeyRequest { org_id: org.clone(), id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .api_key
            .unwrap();
        if key.usage_count == 3 {
            assert!(key.last_used_at.is_some());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "usage reported: {}", key.usage_count);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    live.stop().await;
    test.stop().await;
    plane.stop().await;
}

async fn concurrent_revocations_through_two_replicas(backend: Backend) {
    let plane = start_or_skip!(backend);
    let replica = plane.replica().await;
    let sidecars = [TestSidecar::start(&plane, |_| {}).await, TestSidecar::start(&replica, |_| {}).await];
    let org = random_org();
    let mut tokens = Vec::new();
    for _ in 0..40 {
        tokens.push(plane.create_key(&org, &[]).await);
    }
    for sidecar in &sidecars {
        for (_, token) in &tokens {
            assert_eq!(sidecar.check_status(token).await, 200);
        }
    }
    let revocations: Vec<_> = tokens
        .iter()
        .enumerate()
        .map(|(i, (key, _))| {
            let target = if i % 2 == 0 { plane.addr } else { replica.addr };
            let (org, id, root) = (org.clone(), key.id.clone(), plane.root_token.clone());
            tokio::spawn(async move {
                let channel = tonic::transport::Channel::from_shared(format!("http://{target}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = pb::api_key_service_client::ApiKeyServiceClient::new(channel);
                let mut request =
                    tonic::Request::new(pb::RevokeApiKeyRequest { org_id: org, id, reason: String::new() });
                request.metadata_mut().insert("authorization", format!("Bearer {root}").parse().unwrap());
                client.revoke_api_key(request).await.map(drop)
            })
        })
        .collect();
    for revocation in revocations {
        revocation.await.unwrap().expect("revoke");
    }
    for sidecar in &sidecars {
        for (_, token) in &tokens {
            sidecar.wait_for_status(token, 401).await;
        }
    }
    for sidecar in sidecars {
        sidecar.stop().await;
    }
    replica.stop().await;
    plane.stop().await;
}

/// Runs futures concurrently, 16 at a time, keeping their order.
async fn futures_join_all<T: Send + 'static>(
    futures: Vec<impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let tasks: Vec<_> = futures
        .into_iter()
        .map(|future| {
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire().await;
                future.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}
