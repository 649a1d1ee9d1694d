//! SSRF: webhook destinations are checked when a subscription is saved (IP
//! literals in every spelling, `localhost`) and again on the addresses
//! actually connected to. Without an allow-list every internal destination
//! is refused at creation, and one saved while the policy allowed it is
//! refused at delivery (recorded as an attempt error, nothing is sent);
//! with an allow-list, loopback destinations are reached. Only loopback is
//! ever contacted: the allowed-private-range decisions are covered by
//! `egress` unit tests.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::{Backend, TestControlPlane, assert_invalid_field, both_backends, random_org};

use keyplane_tests::webhooks::{publish, subscribe};

both_backends!(internal_destinations_are_refused_unless_allow_listed);

/// Polls until every delivery of `org` is finished; returns them with their attempts.
async fn finished_deliveries(plane: &TestControlPlane, org: &str, count: usize) -> Vec<pb::GetDeliveryResponse> {
    let mut client = plane.deliveries(&plane.root_token).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = client
            .list_deliveries(pb::ListDeliveriesRequest { org_id: org.to_owned(), page_size: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if listed.len() == count && listed.iter().all(|d| d.status != pb::DeliveryStatus::Pending as i32) {
            let mut full = Vec::new();
            for delivery in listed {
                let request = pb::GetDeliveryRequest { org_id: org.to_owned(), id: delivery.id };
                full.push(client.get_delivery(request).await.unwrap().into_inner());
            }
            return full;
        }
        assert!(tokio::time::Instant::now() < deadline, "deliveries never finished: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn internal_destinations_are_refused_unless_allow_listed(backend: Backend) {
    let v4 = Receiver::start().await;
    let v6 = Receiver::start_on("[::1]:0").await;
    v4.set("/redirect", Behavior::Redirect(v4.url("/target")));
    let port = v4.addr.port();
    let loopback = [
        ("loopback", v4.url("/v4")),
        ("loopback", v6.url("/v6")),
        ("loopback", format!("http://localhost:{port}/by-name")),
        ("loopback", v4.url("/redirect")),
    ];
    let internal = [
        ("private", "http://10.0.0.1/hook".to_owned()),
        ("link-local (cloud metadata)", "http://169.254.169.254/latest/meta-data/".to_owned()),
        ("CGNAT", "http://100.64.0.1/hook".to_owned()),
        ("private", "http://[::ffff:10.0.0.1]/hook".to_owned()),
    ];

    // Closed: http allowed (to test addresses alone), no allow-list. Every
    // internal destination is refused when saved, in every spelling.
    let Some(mut closed) = TestControlPlane::start_with(backend, |config| {
        config.egress.allow_http = true;
        config.webhooks.retry_schedule = keyplane_tests::webhooks::schedule("0s");
    })
    .await
    else {
        return;
    };
    let org = random_org();
    let spellings = [
        "http://169.254.169.254/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://[::ffff:0:127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b:1::7f00:1]/",
        "http://[2002:7f00:1::1]/",
        "http://[fec0::1]/",
        "http://127.1/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://localhost/",
    ];
    let mut webhooks = closed.webhooks(&closed.root_token).await;
    for url in loopback.iter().chain(&internal).map(|(_, url)| url.as_str()).chain(spellings) {
        let request = pb::CreateSubscriptionRequest {
            org_id: org.clone(),
            url: url.to_owned(),
            event_types: vec!["probe.sent".into()],
            ..Default::default()
        };
        let err = webhooks.create_subscription(request).await.expect_err(url);
        assert_invalid_field(&err, "url");
        assert!(err.message().contains("--egress-allow-cidr"), "{url}: {}", err.message());
    }

    // Saved while the policy allowed them, they are still refused when sent.
    closed.stop_for_now().await;
    let closed_policy = closed.config.egress.clone();
    closed.config.egress.allow_cidr = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10"]
        .iter()
        .map(|net| net.parse().unwrap())
        .collect();
    closed.start_again().await;
    for (_, url) in loopback.iter().chain(&internal) {
        subscribe(&closed, &org, url, &["probe.sent"]).await;
    }
    closed.stop_for_now().await;
    closed.config.egress = closed_policy;
    closed.start_again().await;
    assert_eq!(publish(&closed, &org, "probe.sent", "{}").await.deliveries_created, 8);
    for delivery in finished_deliveries(&closed, &org, 8).await {
        let attempt = &delivery.attempts[0];
        assert_eq!(delivery.delivery.as_ref().unwrap().status, pb::DeliveryStatus::Failed as i32);
        assert_eq!(attempt.status_code, 0);
        // Callers (portal customers too) learn the category; the addresses go to the log only.
        assert_eq!(attempt.error, "destination not allowed", "refused by policy: {attempt:?}");
    }
    let logs = keyplane_tests::logs::captured();
    for (kind, _) in loopback.iter().chain(&internal) {
        let kind = kind.split(' ').next().unwrap();
        assert!(logs.contains(kind), "no logged refusal names {kind}");
    }
    assert!(logs.contains("localhost: destination"), "the name's refusal is logged");
    for path in ["/v4", "/by-name", "/redirect", "/target"] {
        assert!(v4.received(path).is_empty(), "{path} was contacted");
    }
    assert!(v6.received("/v6").is_empty());

    // https is required unless the operator allows http.
    let err = closed
        .webhooks(&closed.root_token)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.clone(),
            url: "ftp://example.com/".into(),
            event_types: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "url");
    closed.stop().await;

    // Open: loopback allow-listed.
    let Some(open) = keyplane_tests::webhooks::start(backend, |config| {
        config.webhooks.retry_schedule = keyplane_tests::webhooks::schedule("0s");
    })
    .await
    else {
        return;
    };
    let org = random_org();
    for (_, url) in &loopback {
        subscribe(&open, &org, url, &["probe.sent"]).await;
    }
    publish(&open, &org, "probe.sent", "{}").await;
    for delivery in finished_deliveries(&open, &org, 4).await {
        let attempt = &delivery.attempts[0];
        assert_ne!(attempt.error, "destination not allowed", "allowed: {attempt:?}");
        if attempt.status_code == 307 {
            assert!(attempt.error.contains("redirects are not followed"), "{attempt:?}");
        } else {
            assert_eq!(attempt.status_code, 200, "{attempt:?}");
        }
    }
    for path in ["/v4", "/by-name", "/redirect"] {
        assert_eq!(v4.received(path).len(), 1, "{path}");
    }
    assert_eq!(v6.received("/v6").len(), 1);
    assert!(v4.received("/target").is_empty(), "the redirect was not followed");

    // Without --egress-allow-http, an http:// endpoint is refused at creation.
    let Some(https_only) = TestControlPlane::start(backend).await else { return };
    let err = https_only
        .webhooks(&https_only.root_token)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org,
            url: v4.url("/v4"),
            event_types: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "url");
    assert!(err.message().contains("https://"), "{}", err.message());
}
