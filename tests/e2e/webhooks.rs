//! Webhooks end to end: a real receiver on loopback, real gRPC, both databases.

use std::time::Duration;

use keyplane_control_plane::crypto::signing::WebhookSecret;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::{Behavior, Received, Receiver};
use keyplane_tests::{Backend, TestControlPlane, assert_invalid_field, both_backends, random_org};
use tonic::Code;

both_backends!(
    delivery_is_signed_and_carries_the_exact_payload,
    wildcards_pick_subscriptions_and_idempotency_keys_dedupe,
    failures_retry_then_dead_letter_then_retry_and_recover_by_hand,
    a_hanging_endpoint_times_out_without_delaying_others,
    retry_after_is_honoured,
    gone_disables_the_endpoint_and_announces_it,
    an_endpoint_failing_too_long_is_disabled,
    the_rate_limit_spaces_deliveries,
    rotated_secrets_sign_during_the_grace_period_only,
    keyplane_publishes_its_own_key_events,
    succeeded_deliveries_are_purged_after_retention,
    deliveries_list_filters_and_pages,
    subscription_rules_and_bad_input,
    webhooks_respect_orgs_and_scopes,
    standard_webhooks_library_verifies_deliveries,
);

/// Test schedule: immediately, then 200 ms twice (3 attempts).
const SHORT_SCHEDULE: &str = "0s,200ms,200ms";
const WAIT: Duration = Duration::from_secs(20);

/// A control plane that may deliver to loopback over http, with a short
/// retry schedule and timeout; `adjust` changes more.
pub async fn start(
    backend: Backend,
    adjust: impl FnOnce(&mut keyplane_control_plane::Config),
) -> Option<TestControlPlane> {
    TestControlPlane::start_with(backend, |config| {
        config.egress.allow_cidr = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        config.egress.allow_http = true;
        config.webhooks.timeout = Duration::from_secs(1);
        config.webhooks.lease = Duration::from_secs(3);
        config.webhooks.retry_schedule = schedule(SHORT_SCHEDULE);
        adjust(config);
    })
    .await
}

/// A retry schedule from its command-line form.
pub fn schedule(text: &str) -> keyplane_control_plane::config::RetrySchedule {
    text.parse().expect("retry schedule")
}

macro_rules! start_or_skip_with {
    ($backend:expr, $adjust:expr) => {
        match start($backend, $adjust).await {
            Some(plane) => plane,
            None => return,
        }
    };
    ($backend:expr) => {
        start_or_skip_with!($backend, |_| {})
    };
}

/// Creates a subscription with the root token; returns it and its secret.
pub async fn subscribe(plane: &TestControlPlane, org: &str, url: &str, types: &[&str]) -> (pb::Subscription, String) {
    let created = plane
        .webhooks(&plane.root_token)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.to_owned(),
            url: url.to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("create subscription")
        .into_inner();
    (created.subscription.expect("subscription"), created.secret)
}

/// Publishes an event with the root token; returns the response.
pub async fn publish(plane: &TestControlPlane, org: &str, event_type: &str, payload: &str) -> pb::PublishEventResponse {
    plane
        .events(&plane.root_token)
        .await
        .publish_event(pb::PublishEventRequest {
            org_id: org.to_owned(),
            event_type: event_type.to_owned(),
            payload_json: payload.to_owned(),
            idempotency_key: String::new(),
        })
        .await
        .expect("publish")
        .into_inner()
}

/// Enables or disables a subscription with the root token; returns it.
async fn set_enabled(plane: &TestControlPlane, org: &str, id: &str, enabled: bool) -> pb::Subscription {
    let request = pb::UpdateSubscriptionRequest {
        org_id: org.to_owned(),
        id: id.to_owned(),
        update: Some(pb::SubscriptionUpdate { enabled, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
    };
    let updated = plane.webhooks(&plane.root_token).await.update_subscription(request).await.expect("update");
    updated.into_inner().subscription.expect("subscription")
}

/// Rotates a subscription's secret with the root token (grace in seconds;
/// `None` for the default); returns the new secret.
pub async fn rotate_secret(plane: &TestControlPlane, org: &str, id: &str, grace_seconds: Option<i64>) -> String {
    let request = pb::RotateSubscriptionSecretRequest {
        org_id: org.to_owned(),
        id: id.to_owned(),
        grace_period: grace_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    };
    plane
        .webhooks(&plane.root_token)
        .await
        .rotate_subscription_secret(request)
        .await
        .expect("rotate")
        .into_inner()
        .secret
}

/// The deliveries of a subscription, newest first.
async fn deliveries_of(plane: &TestControlPlane, org: &str, subscription: &str) -> Vec<pb::Delivery> {
    plane
        .deliveries(&plane.root_token)
        .await
        .list_deliveries(pb::ListDeliveriesRequest {
            org_id: org.to_owned(),
            subscription_id: subscription.to_owned(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
}

/// Calls `fetch` every 50 ms until `done` holds for its result (at most [`WAIT`]).
async fn poll_until<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    mut fetch: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = fetch().await;
        if done(&value) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached the expected state: {value:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a delivery until `done` holds; returns it with its attempts.
async fn wait_delivery(
    plane: &TestControlPlane,
    org: &str,
    id: &str,
    done: impl Fn(&pb::Delivery) -> bool,
) -> pb::GetDeliveryResponse {
    let client = plane.deliveries(&plane.root_token).await;
    let request = pb::GetDeliveryRequest { org_id: org.to_owned(), id: id.to_owned() };
    poll_until(
        || {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.get_delivery(request).await.expect("get delivery").into_inner() }
        },
        |response| done(response.delivery.as_ref().expect("delivery")),
    )
    .await
}

fn status_is(status: pb::DeliveryStatus) -> impl Fn(&pb::Delivery) -> bool {
    move |d| d.status == status as i32
}

/// Polls a subscription until `done` holds.
async fn wait_subscription(
    plane: &TestControlPlane,
    org: &str,
    id: &str,
    done: impl Fn(&pb::Subscription) -> bool,
) -> pb::Subscription {
    let client = plane.webhooks(&plane.root_token).await;
    let request = pb::GetSubscriptionRequest { org_id: org.to_owned(), id: id.to_owned() };
    poll_until(
        || {
            let (mut client, request) = (client.clone(), request.clone());
            async move {
                client
                    .get_subscription(request)
                    .await
                    .expect("get subscription")
                    .into_inner()
                    .subscription
                    .expect("subscription")
            }
        },
        done,
    )
    .await
}

/// The `v1,` signatures of a received request that `secret` produced.
fn verifies_with(secret: &str, request: &Received) -> bool {
    let secret = WebhookSecret::parse(secret).expect("secret");
    let timestamp: i64 = request.header("webhook-timestamp").parse().expect("timestamp");
    let expected = secret.sign(&request.header("webhook-id"), timestamp, &request.body);
    request.header("webhook-signature").split(' ').any(|s| s == expected)
}

async fn delivery_is_signed_and_carries_the_exact_payload(backend: Backend) {
    let plane = start_or_skip_with!(backend);
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

    let delivered = wait_delivery(
        &plane,
        &org,
        &deliveries_of(&plane, &org, &subscription.id).await[0].id,
        status_is(pb::DeliveryStatus::Succeeded),
    )
    .await;
    assert_eq!(delivered.attempts.len(), 1);
    assert_eq!(delivered.attempts[0].status_code, 200);
    assert_eq!(delivered.attempts[0].response_excerpt, "ok");
    assert!(plane.metric("keyplane_webhook_attempts_total", "succeeded").await >= 1.0);

    // SendTestEvent pings the endpoint whatever its event types.
    let test = plane
        .deliveries(&plane.root_token)
        .await
        .send_test_event(pb::SendTestEventRequest { org_id: org.clone(), subscription_id: subscription.id.clone() })
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
    let plane = start_or_skip_with!(backend);
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

async fn failures_retry_then_dead_letter_then_retry_and_recover_by_hand(backend: Backend) {
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/flaky", Behavior::Fail { times: 2 });
    receiver.set("/down", Behavior::Fail { times: usize::MAX });
    let (flaky, _) = subscribe(&plane, &org, &receiver.url("/flaky"), &["job.done"]).await;
    let (down, _) = subscribe(&plane, &org, &receiver.url("/down"), &["job.failed"]).await;
    let since = keyplane_tests::timestamp_in(chrono::Duration::seconds(-1));

    // Two failures, then success on the third attempt, 200 ms ± 20% apart.
    publish(&plane, &org, "job.done", "{}").await;
    let delivery = deliveries_of(&plane, &org, &flaky.id).await.remove(0);
    let done = wait_delivery(&plane, &org, &delivery.id, status_is(pb::DeliveryStatus::Succeeded)).await;
    let codes: Vec<u32> = done.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [500, 500, 200]);
    assert_eq!(done.attempts[0].response_excerpt, "receiver failure");
    assert_eq!(done.attempts[0].error, "HTTP 500");
    let arrivals = receiver.received("/flaky");
    let ids: Vec<String> = arrivals.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "webhook-id is stable across retries");
    for pair in arrivals.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(150), "retry came after {gap:?}, before the scheduled 200 ms - 20%");
    }

    // Response excerpts keep at most 4 KiB.
    receiver.set("/verbose", Behavior::LargeError(10_000));
    let (verbose, _) = subscribe(&plane, &org, &receiver.url("/verbose"), &["job.verbose"]).await;
    publish(&plane, &org, "job.verbose", "{}").await;
    let delivery = deliveries_of(&plane, &org, &verbose.id).await.remove(0);
    let attempted = wait_delivery(&plane, &org, &delivery.id, |d| d.attempt_count >= 1).await;
    assert_eq!(attempted.attempts[0].status_code, 503);
    assert_eq!(attempted.attempts[0].response_excerpt, "x".repeat(4096));

    // Three failed attempts: dead-lettered.
    publish(&plane, &org, "job.failed", "{}").await;
    let first = deliveries_of(&plane, &org, &down.id).await.remove(0);
    let failed = wait_delivery(&plane, &org, &first.id, status_is(pb::DeliveryStatus::Failed)).await;
    assert_eq!(failed.attempts.len(), 3);
    assert_eq!(failed.delivery.as_ref().unwrap().last_status_code, 500);
    assert!(failed.delivery.as_ref().unwrap().finished_at.is_some());

    // A second dead letter, then a retry by hand of the first: one more attempt (4th failure).
    publish(&plane, &org, "job.failed", "{}").await;
    let second = deliveries_of(&plane, &org, &down.id).await.remove(0);
    assert_ne!(second.id, first.id);
    wait_delivery(&plane, &org, &second.id, status_is(pb::DeliveryStatus::Failed)).await;
    let mut deliveries = plane.deliveries(&plane.root_token).await;
    let err = deliveries
        .retry_delivery(pb::RetryDeliveryRequest { org_id: org.clone(), id: "dlv_missing".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    receiver.set("/down", Behavior::Succeed);
    let retried = deliveries
        .retry_delivery(pb::RetryDeliveryRequest { org_id: org.clone(), id: first.id.clone() })
        .await
        .unwrap();
    assert_eq!(retried.into_inner().delivery.unwrap().status, pb::DeliveryStatus::Pending as i32);
    let done = wait_delivery(&plane, &org, &first.id, status_is(pb::DeliveryStatus::Succeeded)).await;
    assert_eq!(done.attempts.len(), 4);

    // RecoverFailed resends every failed delivery of the subscription since a time.
    let recovered = deliveries
        .recover_failed(pb::RecoverFailedRequest {
            org_id: org.clone(),
            subscription_id: down.id.clone(),
            since: Some(since),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recovered.recovered, 1);
    wait_delivery(&plane, &org, &second.id, status_is(pb::DeliveryStatus::Succeeded)).await;
    let err = deliveries
        .recover_failed(pb::RecoverFailedRequest { org_id: org.clone(), subscription_id: down.id, since: None })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "since");
}

async fn a_hanging_endpoint_times_out_without_delaying_others(backend: Backend) {
    let plane = start_or_skip_with!(backend, |config| {
        config.webhooks.retry_schedule = schedule("0s,5s");
        // Few workers, so a hanging endpoint could take them all without the per-endpoint cap.
        config.webhooks.concurrency = 8;
        config.webhooks.endpoint_concurrency = 4;
        // A 3 s timeout leaves a wide margin between "not delayed" and
        // "waited behind at least one hanging request".
        config.webhooks.timeout = Duration::from_secs(3);
        config.webhooks.lease = Duration::from_secs(6);
    });
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/slow", Behavior::Hang(Duration::from_secs(30)));
    let (slow, _) = subscribe(&plane, &org, &receiver.url("/slow"), &["slow.thing"]).await;
    subscribe(&plane, &org, &receiver.url("/fast"), &["fast.thing"]).await;

    for _ in 0..20 {
        publish(&plane, &org, "slow.thing", "{}").await;
    }
    let started = std::time::Instant::now();
    for _ in 0..20 {
        publish(&plane, &org, "fast.thing", "{}").await;
    }
    receiver.wait_for("/fast", 20, WAIT).await;
    let took = started.elapsed();
    // 20 slow deliveries are queued first and each hangs for the 3 s timeout;
    // the fast endpoint must not wait behind them.
    assert!(took < Duration::from_millis(2500), "fast deliveries waited {took:?} behind a hanging endpoint");

    let first = deliveries_of(&plane, &org, &slow.id).await.pop().unwrap();
    let attempted = wait_delivery(&plane, &org, &first.id, |d| d.attempt_count >= 1).await;
    assert_eq!(attempted.attempts[0].status_code, 0);
    assert!(attempted.attempts[0].error.contains("timed out"), "{:?}", attempted.attempts[0]);
    let latency = attempted.attempts[0].latency.unwrap();
    assert!(
        latency.seconds >= 3 || (latency.seconds == 2 && latency.nanos >= 900_000_000),
        "gave up after the timeout: {latency:?}"
    );
}

async fn retry_after_is_honoured(backend: Backend) {
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/busy", Behavior::TooManyRequests { retry_after: "2".into(), times: 1 });
    let (subscription, _) = subscribe(&plane, &org, &receiver.url("/busy"), &["busy.event"]).await;
    publish(&plane, &org, "busy.event", "{}").await;
    let arrivals = receiver.wait_for("/busy", 2, WAIT).await;
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?} despite Retry-After: 2");
    let delivery = deliveries_of(&plane, &org, &subscription.id).await.remove(0);
    let done = wait_delivery(&plane, &org, &delivery.id, status_is(pb::DeliveryStatus::Succeeded)).await;
    assert_eq!(done.attempts[0].status_code, 429);
}

async fn gone_disables_the_endpoint_and_announces_it(backend: Backend) {
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/gone", Behavior::Gone);
    let (gone, _) = subscribe(&plane, &org, &receiver.url("/gone"), &["thing.happened"]).await;
    let (watcher, secret) = subscribe(&plane, &org, &receiver.url("/watcher"), &["webhook.*"]).await;
    publish(&plane, &org, "thing.happened", "{}").await;

    let disabled =
        wait_subscription(&plane, &org, &gone.id, |s| s.status == pb::SubscriptionStatus::Disabled as i32).await;
    assert!(disabled.disabled_reason.contains("410"), "{disabled:?}");
    let delivery = deliveries_of(&plane, &org, &gone.id).await.remove(0);
    let failed = wait_delivery(&plane, &org, &delivery.id, status_is(pb::DeliveryStatus::Failed)).await;
    assert_eq!(failed.attempts.len(), 1, "410 is not retried");
    let err = plane
        .deliveries(&plane.root_token)
        .await
        .retry_delivery(pb::RetryDeliveryRequest { org_id: org.clone(), id: delivery.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "retrying to a disabled endpoint: {err:?}");

    let announcement = receiver.wait_for("/watcher", 1, WAIT).await.remove(0);
    assert!(verifies_with(&secret, &announcement));
    let body: serde_json::Value = serde_json::from_slice(&announcement.body).unwrap();
    assert_eq!(body["type"], "webhook.endpoint_disabled");
    assert_eq!(body["data"]["subscription_id"], gone.id);
    assert!(deliveries_of(&plane, &org, &watcher.id).await.len() == 1);

    // Later events are not sent to the disabled endpoint.
    publish(&plane, &org, "thing.happened", "{}").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received("/gone").len(), 1);
    let audit = plane
        .audit(&plane.root_token)
        .await
        .list_audit_events(pb::ListAuditEventsRequest {
            org_id: org.clone(),
            action: "webhook.endpoint_disabled".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor_type, "system");
}

async fn an_endpoint_failing_too_long_is_disabled(backend: Backend) {
    let plane = start_or_skip_with!(backend, |config| {
        config.webhooks.retry_schedule =
            schedule("0s,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms");
        config.webhooks.disable_after = Duration::from_secs(2);
    });
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/broken", Behavior::Fail { times: usize::MAX });
    let (broken, _) = subscribe(&plane, &org, &receiver.url("/broken"), &["thing.happened"]).await;
    subscribe(&plane, &org, &receiver.url("/watcher"), &["webhook.endpoint_disabled"]).await;
    publish(&plane, &org, "thing.happened", "{}").await;
    let failing = wait_subscription(&plane, &org, &broken.id, |s| s.failing_since.is_some()).await;
    assert_eq!(failing.status, pb::SubscriptionStatus::Active as i32, "not yet: failing for less than 2 s");
    let disabled =
        wait_subscription(&plane, &org, &broken.id, |s| s.status == pb::SubscriptionStatus::Disabled as i32).await;
    assert!(disabled.disabled_reason.contains("failed since"), "{disabled:?}");
    receiver.wait_for("/watcher", 1, WAIT).await;

    // Enabling it again clears the failure run.
    let enabled = set_enabled(&plane, &org, &broken.id, true).await;
    assert_eq!(enabled.status, pb::SubscriptionStatus::Active as i32);
    assert!(enabled.failing_since.is_none() && enabled.disabled_reason.is_empty());
}

async fn the_rate_limit_spaces_deliveries(backend: Backend) {
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let created = plane
        .webhooks(&plane.root_token)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.clone(),
            url: receiver.url("/limited"),
            event_types: vec!["tick.tock".into()],
            rate_limit_per_second: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.subscription.unwrap().rate_limit_per_second, 5);
    for _ in 0..15 {
        publish(&plane, &org, "tick.tock", "{}").await;
    }
    let arrivals = receiver.wait_for("/limited", 15, WAIT).await;
    let span = arrivals[14].at - arrivals[0].at;
    // A burst of 5, then 10 more at 5/s: at least 2 s (less a little slack).
    assert!(span >= Duration::from_millis(1800), "15 deliveries at 5/s took only {span:?}");
    let in_first_second = arrivals.iter().filter(|r| r.at - arrivals[0].at < Duration::from_millis(990)).count();
    assert!(in_first_second <= 10, "{in_first_second} deliveries in the first second at 5/s");
}

async fn rotated_secrets_sign_during_the_grace_period_only(backend: Backend) {
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let (subscription, old_secret) = subscribe(&plane, &org, &receiver.url("/hook"), &["a.b"]).await;
    let new_secret = rotate_secret(&plane, &org, &subscription.id, Some(2)).await;
    assert_ne!(new_secret, old_secret);

    publish(&plane, &org, "a.b", "{}").await;
    let during = receiver.wait_for("/hook", 1, WAIT).await.remove(0);
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(verifies_with(&old_secret, &during) && verifies_with(&new_secret, &during));

    tokio::time::sleep(Duration::from_millis(2200)).await;
    publish(&plane, &org, "a.b", "{}").await;
    let after = receiver.wait_for("/hook", 2, WAIT).await.remove(1);
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(verifies_with(&new_secret, &after) && !verifies_with(&old_secret, &after));

    // A zero grace drops the old secret at once.
    let newest = rotate_secret(&plane, &org, &subscription.id, Some(0)).await;
    publish(&plane, &org, "a.b", "{}").await;
    let last = receiver.wait_for("/hook", 3, WAIT).await.remove(2);
    assert!(verifies_with(&newest, &last) && !verifies_with(&new_secret, &last));
}

async fn keyplane_publishes_its_own_key_events(backend: Backend) {
    let plane = start_or_skip_with!(backend);
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

async fn succeeded_deliveries_are_purged_after_retention(backend: Backend) {
    let plane = start_or_skip_with!(backend, |config| {
        config.webhooks.delivery_retention = Duration::from_secs(1);
    });
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/down", Behavior::Fail { times: usize::MAX });
    let (ok, _) = subscribe(&plane, &org, &receiver.url("/ok"), &["a.b"]).await;
    let (down, _) = subscribe(&plane, &org, &receiver.url("/down"), &["a.b"]).await;
    publish(&plane, &org, "a.b", "{}").await;
    let succeeded = deliveries_of(&plane, &org, &ok.id).await.remove(0);
    let failed = deliveries_of(&plane, &org, &down.id).await.remove(0);
    wait_delivery(&plane, &org, &succeeded.id, status_is(pb::DeliveryStatus::Succeeded)).await;
    wait_delivery(&plane, &org, &failed.id, status_is(pb::DeliveryStatus::Failed)).await;

    let mut deliveries = plane.deliveries(&plane.root_token).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found =
            deliveries.get_delivery(pb::GetDeliveryRequest { org_id: org.clone(), id: succeeded.id.clone() }).await;
        if found.as_ref().is_err_and(|e| e.code() == Code::NotFound) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "succeeded delivery never purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kept = deliveries.get_delivery(pb::GetDeliveryRequest { org_id: org.clone(), id: failed.id.clone() }).await;
    assert_eq!(kept.unwrap().into_inner().attempts.len(), 3, "failed deliveries and their attempts are kept");
}

async fn deliveries_list_filters_and_pages(backend: Backend) {
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/down", Behavior::Fail { times: usize::MAX });
    let (ok, _) = subscribe(&plane, &org, &receiver.url("/ok"), &["*"]).await;
    let (down, _) = subscribe(&plane, &org, &receiver.url("/down"), &["order.*"]).await;
    for i in 0..5 {
        publish(&plane, &org, if i % 2 == 0 { "order.created" } else { "user.created" }, "{}").await;
    }
    receiver.wait_for("/ok", 5, WAIT).await;
    let mut client = plane.deliveries(&plane.root_token).await;
    let list = |request: pb::ListDeliveriesRequest| {
        let mut client = client.clone();
        async move { client.list_deliveries(request).await.unwrap().into_inner() }
    };
    let everything = list(pb::ListDeliveriesRequest { org_id: org.clone(), ..Default::default() }).await;
    assert_eq!(everything.deliveries.len(), 8);
    let ids: Vec<&str> = everything.deliveries.iter().map(|d| d.id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");

    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListDeliveriesRequest {
            org_id: org.clone(),
            page_size: 3,
            page_token: token.clone(),
            ..Default::default()
        })
        .await;
        paged.extend(page.deliveries.into_iter().map(|d| d.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, ids);

    let of_ok =
        list(pb::ListDeliveriesRequest { org_id: org.clone(), subscription_id: ok.id.clone(), ..Default::default() })
            .await;
    assert_eq!(of_ok.deliveries.len(), 5);
    let users = list(pb::ListDeliveriesRequest {
        org_id: org.clone(),
        event_type: "user.created".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(users.deliveries.len(), 2);
    for id in of_ok.deliveries.iter().map(|d| d.id.clone()) {
        wait_delivery(&plane, &org, &id, status_is(pb::DeliveryStatus::Succeeded)).await;
    }
    let succeeded = list(pb::ListDeliveriesRequest {
        org_id: org.clone(),
        status: pb::DeliveryStatus::Succeeded as i32,
        ..Default::default()
    })
    .await;
    assert_eq!(succeeded.deliveries.len(), 5);
    assert!(succeeded.deliveries.iter().all(|d| d.subscription_id == ok.id));
    let future = list(pb::ListDeliveriesRequest {
        org_id: org.clone(),
        created_after: Some(keyplane_tests::timestamp_in(chrono::Duration::hours(1))),
        ..Default::default()
    })
    .await;
    assert!(future.deliveries.is_empty());
    let past = list(pb::ListDeliveriesRequest {
        org_id: org.clone(),
        subscription_id: down.id.clone(),
        created_before: Some(keyplane_tests::timestamp_in(chrono::Duration::hours(1))),
        ..Default::default()
    })
    .await;
    assert_eq!(past.deliveries.len(), 3);

    let err = client
        .list_deliveries(pb::ListDeliveriesRequest {
            org_id: org.clone(),
            page_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "page_token");
    let err = client
        .list_deliveries(pb::ListDeliveriesRequest { org_id: org.clone(), status: 42, ..Default::default() })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "status");
}

async fn subscription_rules_and_bad_input(backend: Backend) {
    let plane = start_or_skip_with!(backend, |config| {
        config.webhooks.max_subscriptions = 3;
        config.webhooks.max_payload_bytes = 1024;
        config.webhooks.allowed_hosts = vec!["localhost".into()];
    });
    let org = random_org();
    let mut webhooks = plane.webhooks(&plane.root_token).await;
    let create = |url: &str, types: &[&str]| pb::CreateSubscriptionRequest {
        org_id: org.clone(),
        url: url.to_owned(),
        event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    };
    for (request, field) in [
        (create("not a url", &["a.b"]), "url"),
        (create("ftp://localhost/x", &["a.b"]), "url"),
        (create("http://user:pw@localhost/x", &["a.b"]), "url"),
        (create("http://localhost/x", &[]), "event_types"),
        (create("http://localhost/x", &["Order.Created"]), "event_types[0]"),
        (create("http://localhost/x", &["a.b", "order"]), "event_types[1]"),
        (create("http://localhost/x", &["order.cre*"]), "event_types[0]"),
    ] {
        let err = webhooks.create_subscription(request).await.unwrap_err();
        assert_invalid_field(&err, field);
        assert!(!err.message().contains("pw"), "credentials not echoed: {}", err.message());
    }

    // Hosts outside --webhook-allowed-host wait for approval by keyplane:admin.
    let pending = webhooks.create_subscription(create("http://127.0.0.1:9/x", &["a.b"])).await.unwrap().into_inner();
    let pending = pending.subscription.unwrap();
    assert_eq!(pending.status, pb::SubscriptionStatus::PendingApproval as i32);
    assert_eq!(publish(&plane, &org, "a.b", "{}").await.deliveries_created, 0, "not active yet");
    let (_, writer) = plane.create_key(&org, &["keyplane:webhooks:write", "keyplane:webhooks:read"]).await;
    let err = plane
        .webhooks(&writer)
        .await
        .approve_subscription(pb::ApproveSubscriptionRequest { org_id: String::new(), id: pending.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let approved = webhooks
        .approve_subscription(pb::ApproveSubscriptionRequest { org_id: org.clone(), id: pending.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(approved.status, pb::SubscriptionStatus::Active as i32);
    let allowed = webhooks.create_subscription(create("http://localhost:9/x", &["a.b"])).await.unwrap().into_inner();
    assert_eq!(allowed.subscription.unwrap().status, pb::SubscriptionStatus::Active as i32);

    // Per-org maximum.
    webhooks.create_subscription(create("http://localhost:9/y", &["a.b"])).await.unwrap();
    let err = webhooks.create_subscription(create("http://localhost:9/z", &["a.b"])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Updates.
    let update = |paths: &[&str], update: pb::SubscriptionUpdate| pb::UpdateSubscriptionRequest {
        org_id: org.clone(),
        id: approved.id.clone(),
        update: Some(update),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }),
    };
    let err = webhooks.update_subscription(update(&["secret"], Default::default())).await.unwrap_err();
    assert_invalid_field(&err, "update_mask");
    let err = webhooks
        .update_subscription(update(&["url"], pb::SubscriptionUpdate { url: "nope".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_invalid_field(&err, "update.url");
    let err = webhooks
        .update_subscription(update(
            &["rate_limit_per_second"],
            pb::SubscriptionUpdate { rate_limit_per_second: 1_000_000, ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_invalid_field(&err, "update.rate_limit_per_second");
    let moved = webhooks
        .update_subscription(update(
            &["url", "description", "event_types"],
            pb::SubscriptionUpdate {
                url: "http://localhost:9/moved".into(),
                description: "moved".into(),
                event_types: vec!["c.d".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!((moved.url.as_str(), moved.description.as_str()), ("http://localhost:9/moved", "moved"));
    assert_eq!(moved.event_types, ["c.d"]);
    let back = webhooks
        .update_subscription(update(
            &["url"],
            pb::SubscriptionUpdate { url: "http://127.0.0.1:9/x".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(back.status, pb::SubscriptionStatus::PendingApproval as i32, "a new unlisted host needs approval again");

    // Events.
    let mut events = plane.events(&plane.root_token).await;
    let event = |event_type: &str, payload: &str| pb::PublishEventRequest {
        org_id: org.clone(),
        event_type: event_type.to_owned(),
        payload_json: payload.to_owned(),
        idempotency_key: String::new(),
    };
    for (request, field) in [
        (event("order.*", "{}"), "event_type"),
        (event("order", "{}"), "event_type"),
        (event("a.b", "not json"), "payload_json"),
        (event("a.b", "[1,2]"), "payload_json"),
        (event("a.b", &format!(r#"{{"big":"{}"}}"#, "x".repeat(2000))), "payload_json"),
    ] {
        assert_invalid_field(&events.publish_event(request).await.unwrap_err(), field);
    }

    // Deleting: gone for good; unknown ids are NOT_FOUND.
    webhooks
        .delete_subscription(pb::DeleteSubscriptionRequest { org_id: org.clone(), id: approved.id.clone() })
        .await
        .unwrap();
    let err = webhooks
        .get_subscription(pb::GetSubscriptionRequest { org_id: org.clone(), id: approved.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = webhooks
        .delete_subscription(pb::DeleteSubscriptionRequest { org_id: org.clone(), id: approved.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let listed = webhooks
        .list_subscriptions(pb::ListSubscriptionsRequest {
            org_id: org.clone(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.subscriptions.len(), 1);
    assert!(!listed.next_page_token.is_empty());
}

async fn webhooks_respect_orgs_and_scopes(backend: Backend) {
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let (org_a, org_b) = (random_org(), random_org());
    let (b_subscription, _) = subscribe(&plane, &org_b, &receiver.url("/b"), &["*"]).await;
    let published = publish(&plane, &org_b, "b.thing", "{}").await;
    assert_eq!(published.deliveries_created, 1);
    let b_delivery = deliveries_of(&plane, &org_b, &b_subscription.id).await.remove(0);

    let (_, a_admin) = plane.create_key(&org_a, &["keyplane:admin"]).await;
    let mut webhooks = plane.webhooks(&a_admin).await;
    let mut deliveries = plane.deliveries(&a_admin).await;
    let not_found = [
        webhooks
            .get_subscription(pb::GetSubscriptionRequest { org_id: String::new(), id: b_subscription.id.clone() })
            .await
            .unwrap_err()
            .code(),
        webhooks
            .delete_subscription(pb::DeleteSubscriptionRequest { org_id: String::new(), id: b_subscription.id.clone() })
            .await
            .unwrap_err()
            .code(),
        webhooks
            .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
                org_id: String::new(),
                id: b_subscription.id.clone(),
                grace_period: None,
            })
            .await
            .unwrap_err()
            .code(),
        deliveries
            .get_delivery(pb::GetDeliveryRequest { org_id: String::new(), id: b_delivery.id.clone() })
            .await
            .unwrap_err()
            .code(),
        deliveries
            .retry_delivery(pb::RetryDeliveryRequest { org_id: String::new(), id: b_delivery.id.clone() })
            .await
            .unwrap_err()
            .code(),
        deliveries
            .send_test_event(pb::SendTestEventRequest {
                org_id: String::new(),
                subscription_id: b_subscription.id.clone(),
            })
            .await
            .unwrap_err()
            .code(),
    ];
    assert!(not_found.iter().all(|c| *c == Code::NotFound), "{not_found:?}");
    let err = webhooks
        .list_subscriptions(pb::ListSubscriptionsRequest { org_id: org_b.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let listed = webhooks.list_subscriptions(pb::ListSubscriptionsRequest::default()).await.unwrap().into_inner();
    assert!(listed.subscriptions.is_empty());

    // Each RPC needs its scope.
    let (_, reader) = plane.create_key(&org_a, &["keyplane:webhooks:read", "keyplane:deliveries:read"]).await;
    let err = plane
        .webhooks(&reader)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            url: receiver.url("/a"),
            event_types: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = plane
        .events(&reader)
        .await
        .publish_event(pb::PublishEventRequest {
            event_type: "a.b".into(),
            payload_json: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("keyplane:events:publish"));
    let err = plane
        .deliveries(&reader)
        .await
        .retry_delivery(pb::RetryDeliveryRequest { org_id: String::new(), id: b_delivery.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let (_, publisher) = plane.create_key(&org_a, &["keyplane:events:publish"]).await;
    let ok = plane
        .events(&publisher)
        .await
        .publish_event(pb::PublishEventRequest {
            event_type: "a.b".into(),
            payload_json: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.event.unwrap().org_id, org_a);
}

async fn standard_webhooks_library_verifies_deliveries(backend: Backend) {
    if !keyplane_tests::tool_available("python3", &["-c", "import standardwebhooks"], "pip install standardwebhooks") {
        return;
    }
    let plane = start_or_skip_with!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let (subscription, old_secret) = subscribe(&plane, &org, &receiver.url("/hook"), &["order.*"]).await;
    publish(&plane, &org, "order.created", r#"{"id": 1, "total": 12.50, "note": "ünïcode ✓"}"#).await;
    // Signed before the rotation: only the old secret verifies it.
    receiver.wait_for("/hook", 1, WAIT).await;
    let new_secret = rotate_secret(&plane, &org, &subscription.id, None).await;
    publish(&plane, &org, "order.paid", r#"{"id": 1}"#).await;
    let received = receiver.wait_for("/hook", 2, WAIT).await;

    // The official library must accept each delivery with the secret the
    // subscriber holds (both secrets during the rotation), and reject a tampered body.
    let cases = serde_json::json!([
        case(&old_secret, &received[0], true),
        case(&old_secret, &received[1], true),
        case(&new_secret, &received[1], true),
        case(&new_secret, &received[0], false),
        { "secret": old_secret, "headers": headers(&received[0]), "body": "{\"tampered\":true}", "valid": false },
    ]);
    let script = r#"
import json, sys
from standardwebhooks import Webhook
for case in json.load(sys.stdin):
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        ok = True
    except Exception as error:
        ok = False
    if ok != case["valid"]:
        sys.exit(f"library said {ok} for a case expected {case['valid']}: {case['headers']}")
print("verified")
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(cases.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "standardwebhooks rejected: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn headers(request: &Received) -> serde_json::Value {
    serde_json::json!({
        "webhook-id": request.header("webhook-id"),
        "webhook-timestamp": request.header("webhook-timestamp"),
        "webhook-signature": request.header("webhook-signature"),
    })
}

fn case(secret: &str, request: &Received, valid: bool) -> serde_json::Value {
    serde_json::json!({
        "secret": secret,
        "headers": headers(request),
        "body": String::from_utf8(request.body.to_vec()).unwrap(),
        "valid": valid,
    })
}

// Two control planes on one SQLite file are not supported (one writer); on
// Postgres several processes share the deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_share_the_work_postgres() {
    let plane = start_or_skip_with!(Backend::Postgres);
    let replica = plane.replica().await;
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/hook"), &["*"]).await;
    let mut published = Vec::new();
    for i in 0..300 {
        let via = if i % 2 == 0 { &plane } else { &replica };
        published.push(publish(via, &org, "work.item", "{}").await.event.unwrap().id);
    }
    receiver.wait_for("/hook", 300, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = receiver.received("/hook").iter().map(|r| r.header("webhook-id")).collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct, published.iter().collect(), "every event arrived");
    assert_eq!(ids.len(), 300, "no event was sent twice (SKIP LOCKED claims)");
    let (mine, theirs) = (
        plane.metric("keyplane_webhook_attempts_total", "succeeded").await,
        replica.metric("keyplane_webhook_attempts_total", "succeeded").await,
    );
    assert_eq!(mine + theirs, 300.0);
    assert!(mine > 0.0 && theirs > 0.0, "both processes sent: {mine} and {theirs}");
}
