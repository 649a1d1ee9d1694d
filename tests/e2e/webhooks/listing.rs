//! Listing deliveries (filters, keyset pages) and purging succeeded ones after retention.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::webhooks::{WAIT, deliveries_of, get_delivery, publish, status_is, subscribe};
use keyplane_tests::{Backend, assert_invalid_field, both_backends, eventually, random_org, start_webhooks_or_skip};
use tonic::Code;

both_backends!(deliveries_list_filters_and_pages, succeeded_deliveries_are_purged_after_retention,);

async fn deliveries_list_filters_and_pages(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/down", Behavior::Fail { times: usize::MAX });
    // Not `*`: the failing endpoint's `webhook.endpoint_failing` notice
    // would be one more delivery.
    let (ok, _) = subscribe(&plane, &org, &receiver.url("/ok"), &["order.*", "user.*"]).await;
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
        eventually(|| get_delivery(&plane, &org, &id), status_is(pb::DeliveryStatus::Succeeded)).await;
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

async fn succeeded_deliveries_are_purged_after_retention(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
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
    eventually(|| get_delivery(&plane, &org, &succeeded.id), status_is(pb::DeliveryStatus::Succeeded)).await;
    eventually(|| get_delivery(&plane, &org, &failed.id), status_is(pb::DeliveryStatus::Failed)).await;

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
