//! Credits: exact across sidecars and replicas without a round trip per
//! check; a sidecar killed with a lease strands at most that lease (counted
//! as spent when it ends); refills restore service; checks may cost more
//! than one; VerifyApiKey spends and says when they are gone.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync;
use keyplane_tests::{
    Authed, Backend, TestControlPlane, TestSidecar, assert_invalid_field, both_backends, eventually, random_org,
};
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;

both_backends!(
    credits_are_exact_across_sidecars_and_replicas,
    a_killed_sidecar_strands_at_most_its_lease,
    refills_costs_and_verify_api_key,
    credit_calls_are_checked
);

type Keys = pb::api_key_service_client::ApiKeyServiceClient<Authed>;

async fn key_with_credits(keys: &mut Keys, org: &str, credits: pb::Credits) -> (String, String) {
    let request = pb::CreateApiKeyRequest {
        org_id: org.to_owned(),
        name: "metered".into(),
        credits: Some(credits),
        ..Default::default()
    };
    let created = keys.create_api_key(request).await.expect("create").into_inner();
    (created.api_key.expect("key").id, created.token)
}

async fn remaining(keys: &mut Keys, org: &str, id: &str) -> u64 {
    let request = pb::GetApiKeyRequest { org_id: org.to_owned(), id: id.to_owned() };
    let key = keys.get_api_key(request).await.expect("get").into_inner().api_key.expect("key");
    key.credits.expect("credits").remaining
}

/// `count` forward-auth checks against `sidecar` from 32 concurrent
/// clients: (allowed, refused with 429).
async fn checks(sidecar: &TestSidecar, token: &str, count: usize) -> (u64, u64) {
    const CLIENTS: usize = 32;
    let url = format!("http://{}/check", sidecar.http_addr);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (http, url, token) = (sidecar.http.clone(), url.clone(), token.to_owned());
        let share = count / CLIENTS + usize::from(client < count % CLIENTS);
        clients.spawn(async move {
            let mut statuses = Vec::with_capacity(share);
            for _ in 0..share {
                statuses.push(http.get(&url).bearer_auth(&token).send().await.expect("check").status().as_u16());
            }
            statuses
        });
    }
    let statuses: Vec<u16> = clients.join_all().await.concat();
    let allowed = statuses.iter().filter(|s| **s == 200).count() as u64;
    let exhausted = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(allowed + exhausted, count as u64, "only 200 and 429: {statuses:?}");
    (allowed, exhausted)
}

async fn credits_are_exact_across_sidecars_and_replicas(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let replica = plane.replica().await;
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let (id, token) =
        key_with_credits(&mut keys, &org, pb::Credits { remaining: 1000, refill: None, low_alert: None }).await;
    let sidecars = [
        TestSidecar::start(&plane, |_| {}).await,
        TestSidecar::start(&plane, |_| {}).await,
        TestSidecar::start(&replica, |_| {}).await,
    ];

    // 5,000 checks, unevenly spread, all at once.
    let (a, b, c) = tokio::join!(
        checks(&sidecars[0], &token, 3000),
        checks(&sidecars[1], &token, 1500),
        checks(&sidecars[2], &token, 500)
    );
    let allowed = a.0 + b.0 + c.0;
    assert!(allowed <= 1000, "{allowed} allowed with 1000 credits");
    let (mut leases, mut exhausted) = (0.0, 0.0);
    for sidecar in &sidecars {
        leases += sidecar.metric("keyplane_sidecar_credit_leases_total", "").await;
        exhausted += sidecar.metric("keyplane_sidecar_checks_total", "reason=\"credits_exhausted\"").await;
    }
    assert_eq!(exhausted, (a.1 + b.1 + c.1) as f64, "every 429 says credits_exhausted");
    assert!(leases < 200.0, "{leases} lease round trips for {allowed} allowed checks");

    // Stopping gracefully gives the unspent leases back: nothing is lost.
    for sidecar in sidecars {
        sidecar.stop().await;
    }
    assert_eq!(remaining(&mut keys, &org, &id).await + allowed, 1000);
    replica.stop().await;
    plane.stop().await;
}

async fn a_killed_sidecar_strands_at_most_its_lease(backend: Backend) {
    let lease_ttl = Duration::from_secs(2);
    let Some(plane) = TestControlPlane::start_with(backend, |config| config.credit_lease_ttl = lease_ttl).await else {
        return;
    };
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let (id, token) =
        key_with_credits(&mut keys, &org, pb::Credits { remaining: 1000, refill: None, low_alert: None }).await;
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let doomed = keyplane_tests::process::SidecarProcess::start(&plane, &credential).await;
    let http = reqwest::Client::new();
    let mut allowed = 0;
    for _ in 0..25 {
        let check = http.get(doomed.check_url()).bearer_auth(&token).send().await.expect("check");
        allowed += u64::from(check.status() == 200);
    }
    assert_eq!(allowed, 25);
    let db = plane.database().await;
    let leased = outstanding(&db).await;
    assert!(leased > 0, "the sidecar holds a lease");
    doomed.kill().await;

    let stranded = 1000 - remaining(&mut keys, &org, &id).await - allowed;
    assert!(stranded <= leased, "stranded {stranded} > leased {leased}");
    // Once the lease ends it is forgotten and its credits stay spent.
    eventually(|| outstanding(&db), |granted| *granted == 0).await;
    assert_eq!(1000 - remaining(&mut keys, &org, &id).await - allowed, stranded);
    plane.stop().await;
}

/// Credits in leases that have not been given back or forgotten.
async fn outstanding(db: &sea_orm::DatabaseConnection) -> u64 {
    let sql = "SELECT CAST(COALESCE(SUM(granted), 0) AS BIGINT) AS granted FROM credit_leases";
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.expect("query");
    row.expect("row").try_get::<i64>("", "granted").expect("granted") as u64
}

async fn refills_costs_and_verify_api_key(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let refill = pb::CreditRefill {
        amount: 4,
        period: Some(pb::credit_refill::Period::Every(prost_types::Duration { seconds: 2, nanos: 0 })),
        next_refill_at: None,
    };
    let (id, token) =
        key_with_credits(&mut keys, &org, pb::Credits { remaining: 4, refill: Some(refill), low_alert: None }).await;

    // A check costing 3, then one costing 2 with 1 left: 429 with Retry-After up to the refill.
    let costly = |cost: &'static str| {
        sidecar
            .http
            .get(format!("http://{}/check", sidecar.http_addr))
            .bearer_auth(&token)
            .header("x-keyplane-cost", cost)
            .send()
    };
    assert_eq!(costly("3").await.expect("check").status(), 200);
    let refused = costly("2").await.expect("check");
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "retry after {retry_after}s");
    assert_eq!(costly("0").await.expect("check").status(), 400, "a cost is 1 to 1000");
    assert_eq!(costly("1001").await.expect("check").status(), 400);

    // The refill restores service at the boundary, through the key-event stream.
    eventually(|| async { costly("2").await.expect("check").status().as_u16() }, |status| *status == 200).await;
    let audited = plane.audit_events(&org, "api_key.credits_refilled").await;
    assert!(!audited.is_empty() && audited[0].actor_type == "system");
    sidecar.stop().await;

    // VerifyApiKey spends directly and says when they are gone.
    let set = |n| pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: id.clone(),
        update: Some(pb::ApiKeyUpdate {
            credits: Some(pb::CreditsChange { change: Some(pb::credits_change::Change::Set(n)) }),
            ..Default::default()
        }),
        // No refill from here: it would reset the count under the test.
        update_mask: Some(prost_types::FieldMask { paths: vec!["credits".into(), "credit_refill".into()] }),
    };
    keys.update_api_key(set(5)).await.expect("set credits");
    let verify = |cost| pb::VerifyApiKeyRequest { token: token.clone(), cost, ..Default::default() };
    assert!(keys.verify_api_key(verify(5)).await.expect("verify").into_inner().valid);
    let refused = keys.verify_api_key(verify(1)).await.expect("verify").into_inner();
    assert_eq!(refused.failure(), pb::VerifyFailure::CreditsExhausted);
    let audited = plane.audit_events(&org, "api_key.updated").await;
    assert!(audited.iter().any(|event| format!("{:?}", event.metadata).contains("set(5)")), "{audited:?}");
    plane.stop().await;
}

async fn credit_calls_are_checked(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let (id, _) = key_with_credits(&mut keys, &org, pb::Credits { remaining: 10, refill: None, low_alert: None }).await;
    let (unlimited, _) = plane.create_key(&org, &[]).await;
    let lease =
        |key_id: &str, requested| sync::LeaseCreditsRequest { key_id: key_id.to_owned(), requested, at_least: 1 };

    // Only platform credentials lease (org keyplane): not an org's key, whatever its scopes.
    let (_, org_sidecar) = plane.create_key(&org, &["keyplane:sidecar"]).await;
    let (_, org_admin) = plane.create_key(&org, &["keyplane:admin"]).await;
    for token in [&org_sidecar, &org_admin] {
        let refused = plane.key_sync(token).await.lease_credits(lease(&id, 5)).await.expect_err("not a sidecar");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        let returned = plane.key_sync(token).await.return_credits(sync::ReturnCreditsRequest::default()).await;
        assert_eq!(returned.expect_err("not a sidecar").code(), Code::PermissionDenied);
        let requests = sync::LeaseRequestsRequest { key_id: id.clone(), requested: 1 };
        let refused = plane.key_sync(token).await.lease_requests(requests).await.expect_err("not a sidecar");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let (_, sidecar) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let mut sync = plane.key_sync(&sidecar).await;
    assert_invalid_field(&sync.lease_credits(lease(&id, 0)).await.expect_err("zero"), "requested");
    assert_eq!(sync.lease_credits(lease("key_absent", 1)).await.expect_err("absent").code(), Code::NotFound);
    let unlimited = sync.lease_credits(lease(&unlimited.id, 1)).await.expect_err("no credits");
    assert_eq!(unlimited.code(), Code::FailedPrecondition);
    let requests = |requested| sync::LeaseRequestsRequest { key_id: id.clone(), requested };
    assert_invalid_field(&sync.lease_requests(requests(0)).await.expect_err("zero"), "requested");
    let local = sync.lease_requests(requests(1)).await.expect_err("no global rate limit");
    assert_eq!(local.code(), Code::FailedPrecondition);

    // A lease is given back once, however often it is returned.
    let granted = sync.lease_credits(lease(&id, 5)).await.expect("lease").into_inner();
    assert_eq!(granted.granted, 3, "at most a quarter of 10, rounded up");
    assert_eq!(remaining(&mut keys, &org, &id).await, 7);
    let give_back = sync::ReturnCreditsRequest { lease_id: granted.lease_id, unused: 99 };
    assert_eq!(sync.return_credits(give_back.clone()).await.expect("return").into_inner().returned, 3);
    assert_eq!(sync.return_credits(give_back).await.expect("return again").into_inner().returned, 0);
    assert_eq!(remaining(&mut keys, &org, &id).await, 10);

    // Setting a new count voids what leases hold: their return gives nothing back.
    let granted = sync.lease_credits(lease(&id, 5)).await.expect("lease").into_inner();
    assert_eq!(granted.granted, 3);
    let set_to = |n| pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: id.clone(),
        update: Some(pb::ApiKeyUpdate {
            credits: Some(pb::CreditsChange { change: Some(pb::credits_change::Change::Set(n)) }),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["credits".into()] }),
    };
    keys.update_api_key(set_to(20)).await.expect("set");
    let give_back = sync::ReturnCreditsRequest { lease_id: granted.lease_id, unused: 3 };
    assert_eq!(sync.return_credits(give_back).await.expect("return").into_inner().returned, 0);
    assert_eq!(remaining(&mut keys, &org, &id).await, 20);

    // Bad credits name their field.
    let refill = |amount, period| pb::CreditRefill { amount, period: Some(period), next_refill_at: None };
    let half_second = pb::credit_refill::Period::Every(prost_types::Duration { seconds: 0, nanos: 500_000_000 });
    let create = |refill| pb::CreateApiKeyRequest {
        org_id: org.clone(),
        name: "bad".into(),
        credits: Some(pb::Credits { remaining: 1, refill: Some(refill), low_alert: None }),
        ..Default::default()
    };
    let refused = keys.create_api_key(create(refill(0, half_second))).await.expect_err("bad refill");
    assert_invalid_field(&refused, "credits.refill.amount");
    assert_invalid_field(&refused, "credits.refill.every");
    let day_32 = refill(1, pb::credit_refill::Period::MonthlyOnDay(32));
    assert_invalid_field(
        &keys.create_api_key(create(day_32)).await.expect_err("day 32"),
        "credits.refill.monthly_on_day",
    );
    let no_change = pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: id.clone(),
        update: Some(pb::ApiKeyUpdate::default()),
        update_mask: Some(prost_types::FieldMask { paths: vec!["credits".into()] }),
    };
    assert_invalid_field(&keys.update_api_key(no_change).await.expect_err("no change"), "update.credits");
    plane.stop().await;
}
