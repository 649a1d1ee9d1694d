//! Rules: bad input naming the field, approval of unlisted hosts, per-org limits, updates, deletes, tenant isolation and scopes.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::webhooks::{deliveries_of, publish, subscribe};
use keyplane_tests::{Backend, assert_invalid_field, both_backends, random_org, start_webhooks_or_skip};
use tonic::Code;

both_backends!(subscription_rules_and_bad_input, webhooks_respect_orgs_and_scopes,);

async fn subscription_rules_and_bad_input(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
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
        ..Default::default()
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
    let plane = start_webhooks_or_skip!(backend);
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
                ..Default::default()
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
