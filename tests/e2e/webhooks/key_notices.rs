//! Notices about keys' limits, end to end through a real sidecar and a
//! real receiver: `api_key.credits_low` (a key's alert crossed as sidecars
//! lease, an identity's as VerifyApiKey spends; once per period) and
//! `api_key.rate_limited` (from the sidecar's usage reports; once per window).

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::{Received, Receiver};
use keyplane_tests::webhooks::{WAIT, subscribe};
use keyplane_tests::{Backend, TestSidecar, assert_invalid_field, both_backends, random_org, start_webhooks_or_skip};

both_backends!(low_credits_are_announced_once_per_period, rate_limit_refusals_are_announced_once_per_window);

fn data(request: &Received) -> serde_json::Value {
    let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON body");
    body["data"].clone()
}

fn below(n: u64) -> Option<pb::LowCreditsAlert> {
    Some(pb::LowCreditsAlert { threshold: Some(pb::low_credits_alert::Threshold::Below(n)) })
}

async fn low_credits_are_announced_once_per_period(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/low"), &["api_key.credits_low"]).await;
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let mut keys = plane.keys(&plane.root_token).await;

    // A key's own credits, spent through the sidecar (which leases them).
    let request = pb::CreateApiKeyRequest {
        org_id: org.clone(),
        name: "metered".into(),
        credits: Some(pb::Credits { remaining: 40, refill: None, low_alert: below(10) }),
        ..Default::default()
    };
    let created = keys.create_api_key(request).await.unwrap().into_inner();
    let (key, token) = (created.api_key.unwrap(), created.token);
    assert_eq!(key.credits.unwrap().low_alert, below(10));
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(sidecar.check_status(&token).await);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 40, "{statuses:?}");
    let notice = data(&receiver.wait_for("/low", 1, WAIT).await[0]);
    assert_eq!(notice["key_id"], key.id.as_str());
    assert_eq!(notice["threshold"], 10);
    assert!(notice["remaining"].as_u64().unwrap() < 10, "{notice}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count("/low"), 1, "once, however often it is leased from after");

    // An identity's shared credits with a refill, spent by VerifyApiKey: a
    // percentage of the refill.
    let mut identities = plane.identities(&plane.root_token).await;
    let refill = pb::CreditRefill {
        amount: 100,
        period: Some(pb::credit_refill::Period::Every(prost_types::Duration { seconds: 3600, nanos: 0 })),
        next_refill_at: None,
    };
    let percent = Some(pb::LowCreditsAlert { threshold: Some(pb::low_credits_alert::Threshold::PercentOfRefill(50)) });
    let identity = identities
        .create_identity(pb::CreateIdentityRequest {
            org_id: org.clone(),
            external_id: "customer-1".into(),
            credits: Some(pb::Credits { remaining: 100, refill: Some(refill), low_alert: percent }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    let request = pb::CreateApiKeyRequest {
        org_id: org.clone(),
        name: "shared".into(),
        identity_id: identity.id.clone(),
        ..Default::default()
    };
    let shared_token = keys.create_api_key(request).await.unwrap().into_inner().token;
    for _ in 0..2 {
        let verify = pb::VerifyApiKeyRequest { token: shared_token.clone(), cost: 30, ..Default::default() };
        assert!(keys.verify_api_key(verify).await.unwrap().into_inner().valid);
    }
    let notice = data(&receiver.wait_for("/low", 2, WAIT).await[1]);
    assert_eq!(notice["identity_id"], identity.id.as_str());
    assert_eq!((notice["remaining"].as_u64(), notice["threshold"].as_u64()), (Some(40), Some(50)));

    // A percentage needs a refill.
    let refused = keys
        .create_api_key(pb::CreateApiKeyRequest {
            org_id: org.clone(),
            name: "bad".into(),
            credits: Some(pb::Credits { remaining: 5, refill: None, low_alert: percent }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&refused, "credits.low_alert.percent_of_refill");
    let update = pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: key.id.clone(),
        update: Some(pb::ApiKeyUpdate { credits_low_alert: percent, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["credits_low_alert".into()] }),
    };
    let refused = keys.update_api_key(update).await.unwrap_err();
    assert_invalid_field(&refused, "update.credits_low_alert");
}

async fn rate_limit_refusals_are_announced_once_per_window(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/limited"), &["api_key.rate_limited"]).await;
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let create = |name: &str, rate_limit: Option<pb::RateLimit>, credits: Option<pb::Credits>| {
        pb::CreateApiKeyRequest { org_id: org.clone(), name: name.into(), rate_limit, credits, ..Default::default() }
    };
    let limit = pb::RateLimit {
        requests: 2,
        window: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        ..Default::default()
    };
    let limited = keys.create_api_key(create("limited", Some(limit), None)).await.unwrap().into_inner();
    let spent = pb::Credits { remaining: 1, refill: None, low_alert: None };
    let out_of_credits = keys.create_api_key(create("spent", None, Some(spent))).await.unwrap().into_inner();

    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(sidecar.check_status(&limited.token).await);
        statuses.push(sidecar.check_status(&out_of_credits.token).await);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 9, "{statuses:?}");
    let notice = data(&receiver.wait_for("/limited", 1, WAIT).await[0]);
    let key_id = limited.api_key.unwrap().id;
    assert_eq!(notice["key_id"], key_id.as_str());
    assert_eq!(notice["limited_by"], "key");
    assert_eq!(notice["window_seconds"], 3600);
    assert!(notice["refused"].as_u64().unwrap() >= 1, "{notice}");

    // More refusals in the same hour-long window, reported later: no more
    // notices; and the key that ran out of credits was never rate-limited.
    for _ in 0..3 {
        assert_eq!(sidecar.check_status(&limited.token).await, 429);
    }
    // (The sidecar reports every 200 ms in tests.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.count("/limited"), 1, "{:?}", receiver.received("/limited"));
}
