//! What a subscription controls beyond its event types: channels, custom
//! headers (sealed, never shown), mutual TLS and a private CA (rcgen
//! certificates, an HTTPS receiver), its own timeout, and a receiver that
//! stops a delivery's retries.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::certs::TestCa;
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::webhooks::{WAIT, deliveries_of, get_delivery, get_subscription, publish, status_is, subscribe};
use keyplane_tests::{Backend, assert_invalid_field, both_backends, eventually, random_org, start_webhooks_or_skip};

both_backends!(
    channels_narrow_which_subscriptions_get_an_event,
    custom_headers_are_sent_and_never_shown,
    mutual_tls_and_a_private_ca_per_endpoint,
    a_receiver_stops_retries_and_stays_healthy,
);

const SECRET_HEADER: &str = "Bearer tenant-gateway-s3cr3t-4f9a";

async fn create(plane: &keyplane_tests::TestControlPlane, request: pb::CreateSubscriptionRequest) -> pb::Subscription {
    let created = plane.webhooks(&plane.root_token).await.create_subscription(request).await;
    created.expect("create subscription").into_inner().subscription.expect("subscription")
}

fn subscription(org: &str, url: String) -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest {
        org_id: org.to_owned(),
        url,
        event_types: vec!["order.*".into()],
        ..Default::default()
    }
}

async fn channels_narrow_which_subscriptions_get_an_event(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let listen = |path: &str, channels: &[&str]| pb::CreateSubscriptionRequest {
        channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        ..subscription(&org, receiver.url(path))
    };
    let eu = create(&plane, listen("/eu", &["eu"])).await;
    assert_eq!(eu.channels, ["eu"]);
    create(&plane, listen("/both", &["eu", "us"])).await;
    create(&plane, listen("/all", &[])).await;

    let mut events = plane.events(&plane.root_token).await;
    let mut publish_to = async |channels: &[&str]| {
        let request = pb::PublishEventRequest {
            org_id: org.clone(),
            event_type: "order.created".into(),
            payload_json: "{}".into(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        };
        events.publish_event(request).await.expect("publish").into_inner()
    };
    let to_eu = publish_to(&["eu"]).await;
    assert_eq!(to_eu.deliveries_created, 3);
    assert_eq!(to_eu.event.unwrap().channels, ["eu"]);
    assert_eq!(publish_to(&["us", "ap"]).await.deliveries_created, 2);
    assert_eq!(publish_to(&[]).await.deliveries_created, 1, "an event without channels reaches only /all");
    receiver.wait_for("/all", 3, WAIT).await;
    receiver.wait_for("/both", 2, WAIT).await;
    receiver.wait_for("/eu", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count("/eu"), 1);

    let bad = pb::PublishEventRequest {
        org_id: org.clone(),
        event_type: "order.created".into(),
        payload_json: "{}".into(),
        channels: vec!["ok".into(), "no spaces".into()],
        ..Default::default()
    };
    let refused = plane.events(&plane.root_token).await.publish_event(bad).await.unwrap_err();
    assert_invalid_field(&refused, "channels[1]");
    let refused =
        plane.webhooks(&plane.root_token).await.create_subscription(listen("/x", &["eu", "eu"])).await.unwrap_err();
    assert_invalid_field(&refused, "channels[1]");
}

async fn custom_headers_are_sent_and_never_shown(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
        config.webhooks.timeout = Duration::from_secs(5);
        config.webhooks.lease = Duration::from_secs(6);
    });
    let receiver = Receiver::start().await;
    let org = random_org();
    let headers = vec![
        pb::DeliveryHeader { name: "Authorization".into(), value: SECRET_HEADER.into() },
        pb::DeliveryHeader { name: "X-Tenant".into(), value: "t-1".into() },
    ];
    let request = pb::CreateSubscriptionRequest {
        delivery_options: Some(pb::DeliveryOptions { headers, ..Default::default() }),
        ..subscription(&org, receiver.url("/headers"))
    };
    let created = create(&plane, request).await;
    let shown = created.delivery_options.clone().expect("options");
    assert_eq!(shown.header_names, ["Authorization", "X-Tenant"]);

    publish(&plane, &org, "order.created", "{}").await;
    let got = receiver.wait_for("/headers", 1, WAIT).await.remove(0);
    assert_eq!(got.header("authorization"), SECRET_HEADER);
    assert_eq!(got.header("x-tenant"), "t-1");
    assert!(!got.header("webhook-signature").is_empty());

    // The value is in no answer and no audit entry.
    let fetched = get_subscription(&plane, &org, &created.id).await;
    let listed = plane
        .webhooks(&plane.root_token)
        .await
        .list_subscriptions(pb::ListSubscriptionsRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let audit = plane.audit_events(&org, "webhook.subscription_created").await;
    assert_eq!(audit.len(), 1);
    for shown in [format!("{created:?}"), format!("{fetched:?}"), format!("{listed:?}"), format!("{audit:?}")] {
        assert!(!shown.contains("s3cr3t"), "a header value was shown: {shown}");
    }
    assert!(format!("{audit:?}").contains("X-Tenant"), "the audit names the headers");

    // Bad options name their field; Keyplane's own headers cannot be overridden.
    let mut webhooks = plane.webhooks(&plane.root_token).await;
    for (options, field) in [
        (
            pb::DeliveryOptions {
                headers: vec![pb::DeliveryHeader { name: "webhook-signature".into(), value: "v1,x".into() }],
                ..Default::default()
            },
            "delivery_options.headers[0]",
        ),
        (
            pb::DeliveryOptions {
                headers: vec![pb::DeliveryHeader { name: "X-Bad".into(), value: "line\nbreak".into() }],
                ..Default::default()
            },
            "delivery_options.headers[0]",
        ),
        (
            pb::DeliveryOptions {
                timeout: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                ..Default::default()
            },
            "delivery_options.timeout",
        ),
        (
            pb::DeliveryOptions { client_certificate_pem: "not a certificate".into(), ..Default::default() },
            "delivery_options.client_key_pem",
        ),
    ] {
        let request =
            pb::CreateSubscriptionRequest { delivery_options: Some(options), ..subscription(&org, receiver.url("/x")) };
        let refused = webhooks.create_subscription(request).await.unwrap_err();
        assert_invalid_field(&refused, field);
    }

    // Its own timeout, shorter than the server's: a hanging receiver fails in 1 s.
    receiver.set("/slow", Behavior::Hang(Duration::from_secs(4)));
    let request = pb::CreateSubscriptionRequest {
        delivery_options: Some(pb::DeliveryOptions {
            timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
            ..Default::default()
        }),
        ..subscription(&org, receiver.url("/slow"))
    };
    let slow = create(&plane, request).await;
    assert_eq!(slow.delivery_options.unwrap().timeout.map(|t| t.seconds), Some(1));
    publish(&plane, &org, "order.created", "{}").await;
    let delivery = deliveries_of(&plane, &org, &slow.id).await.remove(0);
    let failed = eventually(|| get_delivery(&plane, &org, &delivery.id), |d| !d.attempts.is_empty()).await;
    assert_eq!(failed.attempts[0].error, "timeout");
    assert!(failed.attempts[0].latency.unwrap().seconds < 3, "{:?}", failed.attempts[0].latency);

    // Replacing the options drops the headers.
    let update = pb::UpdateSubscriptionRequest {
        org_id: org.clone(),
        id: created.id.clone(),
        update: Some(pb::SubscriptionUpdate::default()),
        update_mask: Some(prost_types::FieldMask { paths: vec!["delivery_options".into()] }),
    };
    let updated = webhooks.update_subscription(update).await.unwrap().into_inner().subscription.unwrap();
    assert!(updated.delivery_options.unwrap().header_names.is_empty());
    publish(&plane, &org, "order.created", "{}").await;
    // (The /slow publication went to /headers too.)
    let third = receiver.wait_for("/headers", 3, WAIT).await.remove(2);
    assert_eq!(third.header("authorization"), "");
}

async fn mutual_tls_and_a_private_ca_per_endpoint(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let (server_ca, client_ca) = (TestCa::new("receiver CA"), TestCa::new("client CA"));
    let receiver = Receiver::start_tls(&server_ca.server("receiver"), Some(&client_ca.pem())).await;
    let client = client_ca.client("keyplane");
    let org = random_org();
    let with = |path: &str, options: pb::DeliveryOptions| pb::CreateSubscriptionRequest {
        delivery_options: Some(options),
        ..subscription(&org, receiver.url(path))
    };
    let trusted_mtls = pb::DeliveryOptions {
        client_certificate_pem: client.cert.clone(),
        client_key_pem: client.key.clone(),
        ca_bundle_pem: server_ca.pem(),
        ..Default::default()
    };
    let both = create(&plane, with("/mtls", trusted_mtls.clone())).await;
    let view = both.delivery_options.clone().unwrap();
    assert_eq!(view.client_certificate_sha256.len(), 64, "{view:?}");
    assert_eq!(view.ca_certificates, 1);
    let ca_only = create(
        &plane,
        with("/no-client-cert", pb::DeliveryOptions { ca_bundle_pem: server_ca.pem(), ..Default::default() }),
    )
    .await;
    let public_roots = create(&plane, subscription(&org, receiver.url("/public-roots"))).await;

    publish(&plane, &org, "order.created", r#"{"n":1}"#).await;
    let got = receiver.wait_for("/mtls", 1, WAIT).await.remove(0);
    assert!(String::from_utf8_lossy(&got.body).contains(r#""n":1"#));
    for refused in [&ca_only, &public_roots] {
        let delivery = deliveries_of(&plane, &org, &refused.id).await.remove(0);
        let failed = eventually(|| get_delivery(&plane, &org, &delivery.id), |d| !d.attempts.is_empty()).await;
        assert!(
            ["TLS error", "request failed", "connection failed"].contains(&failed.attempts[0].error.as_str()),
            "{:?}",
            failed.attempts[0]
        );
    }
    assert_eq!(receiver.count("/no-client-cert") + receiver.count("/public-roots"), 0);

    // A key that is not the certificate's is refused when saved.
    let other = client_ca.client("other");
    let mismatched = pb::DeliveryOptions { client_key_pem: other.key, ..trusted_mtls };
    let refused =
        plane.webhooks(&plane.root_token).await.create_subscription(with("/x", mismatched)).await.unwrap_err();
    assert_invalid_field(&refused, "delivery_options.client_key_pem");
    let certificates = format!("{:?}", plane.audit_events(&org, "webhook.subscription_created").await);
    assert!(!certificates.contains("PRIVATE KEY"), "{certificates}");
}

async fn a_receiver_stops_retries_and_stays_healthy(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    receiver.set("/abort", Behavior::Abort);
    let org = random_org();
    let (subscription, _) = subscribe(&plane, &org, &receiver.url("/abort"), &["order.*"]).await;
    publish(&plane, &org, "order.created", "{}").await;
    let delivery = deliveries_of(&plane, &org, &subscription.id).await.remove(0);
    let failed = eventually(|| get_delivery(&plane, &org, &delivery.id), status_is(pb::DeliveryStatus::Failed)).await;
    assert_eq!(failed.attempts.len(), 1, "no retry after abort-message");
    assert_eq!(failed.attempts[0].status_code, 422);
    assert!(failed.attempts[0].error.contains("abort-message"), "{:?}", failed.attempts[0]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.count("/abort"), 1);
    let after = get_subscription(&plane, &org, &subscription.id).await;
    assert!(after.failing_since.is_none(), "an answering receiver is not failing");
    assert_eq!(after.status, pb::SubscriptionStatus::Active as i32);
}
