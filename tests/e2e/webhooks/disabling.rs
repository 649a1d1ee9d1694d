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

both_backends!(gone_disables_the_endpoint_and_announces_it, an_endpoint_failing_too_long_is_disabled,);

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
