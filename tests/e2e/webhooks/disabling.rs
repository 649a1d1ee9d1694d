//! Disabling endpoints: 410 Gone at once, a long run of failures after --webhook-disable-after, announced and audited.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::webhooks::{
    WAIT, deliveries_of, get_delivery, get_subscription, publish, schedule, set_enabled, status_is, subscribe,
    verifies_with,
};
use keyplane_tests::{Backend, both_backends, eventually, random_org, start_webhooks_or_skip};
use tonic::Code;

both_backends!(
    gone_disables_the_endpoint_and_announces_it,
    an_endpoint_failing_too_long_is_disabled,
    failure_runs_and_exhausted_deliveries_are_announced,
);

async fn gone_disables_the_endpoint_and_announces_it(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/gone", Behavior::Gone);
    let (gone, _) = subscribe(&plane, &org, &receiver.url("/gone"), &["thing.happened"]).await;
    let (watcher, secret) = subscribe(&plane, &org, &receiver.url("/watcher"), &["webhook.*"]).await;
    publish(&plane, &org, "thing.happened", "{}").await;

    let disabled = eventually(
        || get_subscription(&plane, &org, &gone.id),
        |s| s.status == pb::SubscriptionStatus::Disabled as i32,
    )
    .await;
    assert!(disabled.disabled_reason.contains("410"), "{disabled:?}");
    let delivery = deliveries_of(&plane, &org, &gone.id).await.remove(0);
    let failed = eventually(|| get_delivery(&plane, &org, &delivery.id), status_is(pb::DeliveryStatus::Failed)).await;
    assert_eq!(failed.attempts.len(), 1, "410 is not retried");
    let err = plane
        .deliveries(&plane.root_token)
        .await
        .retry_delivery(pb::RetryDeliveryRequest { org_id: org.clone(), id: delivery.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "retrying to a disabled endpoint: {err:?}");

    // The watcher of `webhook.*` hears the run begin, the delivery give up
    // and the endpoint go.
    let notices = receiver.wait_for("/watcher", 3, WAIT).await;
    assert!(notices.iter().all(|notice| verifies_with(&secret, notice)));
    let bodies: Vec<serde_json::Value> = notices.iter().map(|n| serde_json::from_slice(&n.body).unwrap()).collect();
    let of_type = |t: &str| bodies.iter().find(|b| b["type"] == t).unwrap_or_else(|| panic!("{t} in {bodies:?}"));
    assert_eq!(of_type("webhook.endpoint_disabled")["data"]["subscription_id"], gone.id);
    assert_eq!(of_type("webhook.endpoint_failing")["data"]["status_code"], 410);
    assert_eq!(of_type("webhook.delivery_exhausted")["data"]["delivery_id"], delivery.id);
    assert_eq!(deliveries_of(&plane, &org, &watcher.id).await.len(), 3);

    // Later events are not sent to the disabled endpoint.
    publish(&plane, &org, "thing.happened", "{}").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received("/gone").len(), 1);
    let audit = plane.audit_events(&org, "webhook.endpoint_disabled").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor_type, "system");
}

async fn an_endpoint_failing_too_long_is_disabled(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
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
    let failing = eventually(|| get_subscription(&plane, &org, &broken.id), |s| s.failing_since.is_some()).await;
    assert_eq!(failing.status, pb::SubscriptionStatus::Active as i32, "not yet: failing for less than 2 s");
    let disabled = eventually(
        || get_subscription(&plane, &org, &broken.id),
        |s| s.status == pb::SubscriptionStatus::Disabled as i32,
    )
    .await;
    assert!(disabled.disabled_reason.contains("failed since"), "{disabled:?}");
    receiver.wait_for("/watcher", 1, WAIT).await;

    // Enabling it again clears the failure run.
    let enabled = set_enabled(&plane, &org, &broken.id, true).await;
    assert_eq!(enabled.status, pb::SubscriptionStatus::Active as i32);
    assert!(enabled.failing_since.is_none() && enabled.disabled_reason.is_empty());
}

/// `webhook.endpoint_failing` once per run of failures, and
/// `webhook.delivery_exhausted` per delivery that gives up — but never about
/// a delivery of a notice, even to an endpoint that takes every type.
async fn failure_runs_and_exhausted_deliveries_are_announced(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
        config.webhooks.retry_schedule = schedule("0s,100ms");
    });
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/broken", Behavior::Fail { times: usize::MAX });
    let (broken, _) = subscribe(&plane, &org, &receiver.url("/broken"), &["*"]).await;
    subscribe(&plane, &org, &receiver.url("/ops"), &["webhook.*"]).await;
    let first = publish(&plane, &org, "thing.happened", r#"{"n": 1}"#).await;
    let first_delivery = deliveries_of(&plane, &org, &broken.id).await.remove(0);
    let failed = eventually(|| get_delivery(&plane, &org, &first_delivery.id), status_is(pb::DeliveryStatus::Failed));
    assert_eq!(failed.await.attempts.len(), 2);
    // One run: one failing notice; one exhausted delivery: one exhausted notice.
    let notices = receiver.wait_for("/ops", 2, WAIT).await;
    let bodies: Vec<serde_json::Value> = notices.iter().map(|n| serde_json::from_slice(&n.body).unwrap()).collect();
    let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"webhook.endpoint_failing") && types.contains(&"webhook.delivery_exhausted"), "{types:?}");
    let exhausted = bodies.iter().find(|b| b["type"] == "webhook.delivery_exhausted").unwrap();
    assert_eq!(exhausted["data"]["event_type"], "thing.happened");
    assert_eq!(exhausted["data"]["attempts"], 2);
    assert_eq!(exhausted["data"]["status_code"], 500);
    assert_eq!(first.event.unwrap().event_type, "thing.happened");
    // The broken endpoint (it takes `*`) was sent those notices too, and
    // they failed and gave up: no notice is made about them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received("/ops").len(), 2, "no notices about notices");

    // The endpoint answers again: the run ends; the next failure starts a
    // new one, announced again.
    receiver.set("/broken", Behavior::Succeed);
    publish(&plane, &org, "thing.happened", r#"{"n": 2}"#).await;
    eventually(|| get_subscription(&plane, &org, &broken.id), |s| s.failing_since.is_none()).await;
    receiver.set("/broken", Behavior::Fail { times: usize::MAX });
    publish(&plane, &org, "thing.happened", r#"{"n": 3}"#).await;
    let notices = receiver.wait_for("/ops", 4, WAIT).await;
    let failing = notices
        .iter()
        .filter(|n| serde_json::from_slice::<serde_json::Value>(&n.body).unwrap()["type"] == "webhook.endpoint_failing")
        .count();
    assert_eq!(failing, 2, "a new run, a new notice");
}
