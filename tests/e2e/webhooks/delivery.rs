//! Delivery itself: the signed request and its exact payload, which subscriptions an event reaches, idempotency, Keyplane's own events, and several processes sharing the work.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::webhooks::{
    WAIT, deliveries_of, get_delivery, publish, set_enabled, status_is, subscribe, verifies_with,
};
use keyplane_tests::{Backend, both_backends, eventually, random_org, start_webhooks_or_skip};

both_backends!(
    delivery_is_signed_and_carries_the_exact_payload,
    wildcards_pick_subscriptions_and_idempotency_keys_dedupe,
    keyplane_publishes_its_own_key_events,
);

async fn delivery_is_signed_and_carries_the_exact_payload(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let (subscription, secret) = subscribe(&plane, &org, &receiver.url("/hook"), &["order.created"]).await;
    assert!(secret.starts_with("whsec_"));
    assert_eq!(subscription.status, pb::SubscriptionStatus::Active as i32);

    // Numbers beyond f64 and key order survive byte for byte.
    let payload = r#"{"amount": 12345678901234567890.000000000001, "z": 1, "a": [true, null]}"#;
    let published = publish(&plane, &org, "order.created", payload).await;
    assert_eq!(published.deliveries_created, 1);
    let event = published.event.expect("event");

    let request = receiver.wait_for("/hook", 1, WAIT).await.remove(0);
    assert_eq!(request.header("webhook-id"), event.id);
    assert_eq!(request.header("content-type"), "application/json");
    let now = chrono::Utc::now().timestamp();
    let timestamp: i64 = request.header("webhook-timestamp").parse().unwrap();
    assert!((now - timestamp).abs() <= 5, "timestamp {timestamp} is the attempt time");
    assert!(verifies_with(&secret, &request), "signature verifies");
    let body = String::from_utf8(request.body.to_vec()).unwrap();
    assert!(body.starts_with(r#"{"type":"order.created","timestamp":""#), "{body}");
    assert!(body.ends_with(&format!(r#","data":{payload}}}"#)), "payload copied exactly: {body}");
    let parsed: serde_json::Value = serde_json::from_str(&body).expect("body is JSON");
    assert_eq!(parsed["type"], "order.created");

    let first = deliveries_of(&plane, &org, &subscription.id).await.remove(0);
    let delivered =
        eventually(|| get_delivery(&plane, &org, &first.id), status_is(pb::DeliveryStatus::Succeeded)).await;
    assert_eq!(delivered.attempts.len(), 1);
    assert_eq!(delivered.attempts[0].status_code, 200);
    assert_eq!(delivered.attempts[0].response_excerpt, "ok");
    assert!(plane.metric("keyplane_webhook_attempts_total", "succeeded").await >= 1.0);

    // SendTestEvent pings the endpoint whatever its event types.
    let test = plane
        .deliveries(&plane.root_token)
        .await
        .send_test_event(pb::SendTestEventRequest {
            org_id: org.clone(),
            subscription_id: subscription.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(test.event_type, "webhook.test");
    let ping = receiver.wait_for("/hook", 2, WAIT).await.remove(1);
    assert!(String::from_utf8_lossy(&ping.body).contains(r#""type":"webhook.test""#));
    assert!(verifies_with(&secret, &ping));
}

async fn wildcards_pick_subscriptions_and_idempotency_keys_dedupe(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/orders"), &["order.*"]).await;
    subscribe(&plane, &org, &receiver.url("/all"), &["*"]).await;
    subscribe(&plane, &org, &receiver.url("/invoices"), &["invoice.paid"]).await;
    let (disabled, _) = subscribe(&plane, &org, &receiver.url("/disabled"), &["*"]).await;
    set_enabled(&plane, &org, &disabled.id, false).await;
    // Another org's catch-all sees nothing of this org.
    subscribe(&plane, &random_org(), &receiver.url("/other-org"), &["*"]).await;

    assert_eq!(publish(&plane, &org, "order.item.added", "{}").await.deliveries_created, 2);
    assert_eq!(publish(&plane, &org, "invoice.paid", "{}").await.deliveries_created, 2);
    assert_eq!(publish(&plane, &org, "customer.created", "{}").await.deliveries_created, 1);

    let mut events = plane.events(&plane.root_token).await;
    let request = pb::PublishEventRequest {
        org_id: org.clone(),
        event_type: "order.created".into(),
        payload_json: r#"{"n":1}"#.into(),
        idempotency_key: "order-1".into(),
        ..Default::default()
    };
    let first = events.publish_event(request.clone()).await.unwrap().into_inner();
    let again = events.publish_event(request).await.unwrap().into_inner();
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.event.as_ref().unwrap().id, again.event.as_ref().unwrap().id);
    assert_eq!(again.deliveries_created, 0);

    receiver.wait_for("/all", 4, WAIT).await;
    receiver.wait_for("/orders", 2, WAIT).await;
    receiver.wait_for("/invoices", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received("/all").len(), 4, "the idempotent repeat was not delivered");
    assert_eq!(receiver.received("/orders").len(), 2);
    assert!(receiver.received("/disabled").is_empty());
    assert!(receiver.received("/other-org").is_empty());
}

async fn keyplane_publishes_its_own_key_events(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/keys"), &["api_key.*"]).await;
    let (key, token) = plane.create_key(&org, &["orders:read"]).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let rotated = keys
        .rotate_api_key(pb::RotateApiKeyRequest { org_id: org.clone(), id: key.id.clone(), grace_period: None })
        .await
        .unwrap()
        .into_inner();
    let new_id = rotated.api_key.unwrap().id;
    keys.revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: key.id.clone(), reason: "test".into() })
        .await
        .unwrap();
    keys.delete_api_key(pb::DeleteApiKeyRequest { org_id: org.clone(), id: new_id.clone() }).await.unwrap();

    let received = receiver.wait_for("/keys", 4, WAIT).await;
    let bodies: Vec<serde_json::Value> = received.iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    let mut types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    assert_eq!(types, ["api_key.created", "api_key.deleted", "api_key.revoked", "api_key.rotated"]);
    let rotated_event = bodies.iter().find(|b| b["type"] == "api_key.rotated").unwrap();
    assert_eq!(rotated_event["data"]["key_id"], key.id);
    assert_eq!(rotated_event["data"]["new_key_id"], new_id);
    for request in &received {
        let text = String::from_utf8_lossy(&request.body);
        assert!(!text.contains(&token) && !text.contains(&rotated.token), "no token in key events");
    }
}

// Two control planes on one SQLite file are not supported (one writer); on
// Postgres several processes share the deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_share_the_work_postgres() {
    let plane = start_webhooks_or_skip!(Backend::Postgres);
    let replica = plane.replica().await;
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/hook"), &["*"]).await;
    // Eight concurrent publishers on each process, 20 events each.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let via = if i % 2 == 0 { &plane } else { &replica };
            let (addr, token, org) = (via.addr.to_string(), via.root_token.clone(), org.clone());
            tokio::spawn(async move {
                let channel = keyplane_tests::authed_channel(&addr, &token).await;
                let mut events = pb::event_service_client::EventServiceClient::new(channel);
                let mut ids = Vec::new();
                for _ in 0..20 {
                    let request = pb::PublishEventRequest {
                        org_id: org.clone(),
                        event_type: "work.item".into(),
                        payload_json: "{}".into(),
                        ..Default::default()
                    };
                    ids.push(events.publish_event(request).await.unwrap().into_inner().event.unwrap().id);
                }
                ids
            })
        })
        .collect();
    let mut published = Vec::new();
    for task in tasks {
        published.extend(task.await.unwrap());
    }
    receiver.wait_for("/hook", 320, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = receiver.received("/hook").iter().map(|r| r.header("webhook-id")).collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct, published.iter().collect(), "every event arrived");
    assert_eq!(ids.len(), 320, "no event was sent twice (SKIP LOCKED claims)");
    let (mine, theirs) = (
        plane.metric("keyplane_webhook_attempts_total", "succeeded").await,
        replica.metric("keyplane_webhook_attempts_total", "succeeded").await,
    );
    assert_eq!(mine + theirs, 320.0);
    assert!(mine > 0.0 && theirs > 0.0, "both processes sent: {mine} and {theirs}");
}
