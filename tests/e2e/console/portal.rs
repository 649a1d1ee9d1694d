//! The webhook portal: a one-time link (CreatePortalLink) opens a session
//! that reaches one org's webhooks and nothing else, framable only by the
//! origins the link names; creation and use are audited.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::webhooks::subscribe;
use keyplane_tests::{
    Backend, TestControlPlane, assert_invalid_field, both_backends, random_org, start_webhooks_or_skip,
};
use tonic::Code;

both_backends!(a_portal_link_opens_one_orgs_webhooks_once);

async fn create_link(
    plane: &TestControlPlane,
    token: &str,
    org: &str,
    ancestors: &[&str],
) -> Result<pb::CreatePortalLinkResponse, tonic::Status> {
    let request = pb::CreatePortalLinkRequest {
        org_id: org.to_owned(),
        ttl: None,
        frame_ancestors: ancestors.iter().map(|a| (*a).to_owned()).collect(),
    };
    plane.webhooks(token).await.create_portal_link(request).await.map(tonic::Response::into_inner)
}

async fn a_portal_link_opens_one_orgs_webhooks_once(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let (org, other) = (random_org(), random_org());
    let (mine, _) = subscribe(&plane, &org, "https://hooks.example.com/mine", &["*"]).await;
    let (theirs, _) = subscribe(&plane, &other, "https://hooks.example.com/theirs", &["*"]).await;
    let (_, writer) = plane.create_key(&org, &["keyplane:webhooks:write"]).await;
    let (_, reader) = plane.create_key(&org, &["keyplane:webhooks:read"]).await;

    // Who may create links, and what a link may say.
    assert_eq!(create_link(&plane, &reader, "", &[]).await.unwrap_err().code(), Code::PermissionDenied);
    let too_long = pb::CreatePortalLinkRequest {
        ttl: Some(prost_types::Duration { seconds: 25 * 3600, nanos: 0 }),
        ..Default::default()
    };
    assert_invalid_field(&plane.webhooks(&writer).await.create_portal_link(too_long).await.unwrap_err(), "ttl");
    assert_invalid_field(
        &create_link(&plane, &writer, "", &["http://evil.example.com/x"]).await.unwrap_err(),
        "frame_ancestors[0]",
    );

    let link = create_link(&plane, &writer, "", &["https://app.example.com"]).await.unwrap();
    assert!(link.url.starts_with(&format!("http://{}/portal/", plane.console_addr)), "{}", link.url);
    let path = link.url.trim_start_matches(&format!("http://{}", plane.console_addr)).to_owned();

    // Opening it: a session limited to this org's webhooks.
    let customer = ConsoleClient::new(plane.console_addr);
    let previewed = ConsoleClient::new(plane.console_addr);
    assert_eq!(previewed.get(&path).await.status, 200, "a link preview sees the confirmation only");
    assert_eq!(previewed.post_raw(&path, &[("nonce", "forged")]).await.status, 403, "a forged confirmation");
    let opened = customer.open_portal(&path).await;
    assert_eq!((opened.status, opened.location().as_str()), (303, "/webhooks"));
    let webhooks = customer.get("/webhooks").await;
    assert_eq!(webhooks.status, 200);
    assert!(webhooks.body.contains(&mine.id) && !webhooks.body.contains(&theirs.id));
    assert!(webhooks.body.contains("Webhook portal for"));
    assert!(!webhooks.body.contains("href=\"/keys\"") && !webhooks.body.contains("Create a portal link"));
    let csp = webhooks.header("content-security-policy");
    assert!(csp.contains("frame-ancestors https://app.example.com"), "{csp}");
    assert!(webhooks.header("x-frame-options").is_empty(), "framable by the listed origin");
    for closed in ["/", "/keys", "/audit", "/connections", "/org"] {
        assert_eq!(customer.get(closed).await.status, 403, "{closed}");
    }
    assert_eq!(customer.post("/webhooks/portal-link", &[]).await.status, 403);
    assert_eq!(customer.get(&format!("/webhooks/{}", theirs.id)).await.status, 404);

    // What the portal may do: add an endpoint, rotate, disable.
    customer.get("/webhooks/new").await;
    let added = customer
        .post_shown_once("/webhooks", &[("url", "https://hooks.example.com/new"), ("event_types", "order.*")])
        .await;
    assert!(added.element_text("shown-once").is_some_and(|s| s.starts_with("whsec_")));
    customer.get(&format!("/webhooks/{}", mine.id)).await;
    let rotated = customer.post_shown_once(&format!("/webhooks/{}/rotate", mine.id), &[]).await;
    assert!(rotated.element_text("shown-once").is_some());
    customer.get(&format!("/webhooks/{}", mine.id)).await;
    assert_eq!(customer.post(&format!("/webhooks/{}/disable", mine.id), &[]).await.status, 303);

    // An endpoint still on a legacy signature shows it, and the switch.
    let legacy = pb::HmacHeaderScheme { header: "X-Webhook-Signature".into(), ..Default::default() };
    let request = pb::CreateSubscriptionRequest {
        org_id: org.clone(),
        url: "https://hooks.example.com/legacy".into(),
        event_types: vec!["*".into()],
        signature_scheme: Some(pb::SignatureScheme { scheme: Some(pb::signature_scheme::Scheme::HmacHeader(legacy)) }),
        ..Default::default()
    };
    let created = plane.webhooks(&writer).await.create_subscription(request).await.expect("create").into_inner();
    let legacy_id = created.subscription.expect("subscription").id;
    let page = customer.get(&format!("/webhooks/{legacy_id}")).await;
    assert!(page.body.contains("x-webhook-signature: &#60;hex HMAC-SHA256 of body&#62;"), "{}", page.body);
    let switch = format!("/webhooks/{legacy_id}/standard-signatures");
    assert!(page.body.contains(&switch));
    assert_eq!(customer.post(&switch, &[]).await.status, 303);
    let page = customer.get(&format!("/webhooks/{legacy_id}")).await;
    assert!(!page.body.contains("x-webhook-signature") && !page.body.contains(&switch));

    // A link opens once.
    let again = ConsoleClient::new(plane.console_addr);
    assert_eq!(again.open_portal(&path).await.status, 404);

    // A link without frame ancestors cannot be framed.
    let plain = create_link(&plane, &writer, "", &[]).await.unwrap();
    let framed = ConsoleClient::new(plane.console_addr);
    framed.open_portal(plain.url.trim_start_matches(&format!("http://{}", plane.console_addr))).await;
    let page = framed.get("/webhooks").await;
    assert!(page.header("content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(page.header("x-frame-options"), "DENY");

    // Creation and use are audited, as is the portal's own change.
    let audit = plane.audit_events(&org, "").await;
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for action in [
        "webhook.portal_link_created",
        "webhook.portal_opened",
        "webhook.subscription_created",
        "webhook.secret_rotated",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let by_portal = audit.iter().find(|e| e.action == "webhook.secret_rotated").unwrap();
    assert_eq!((by_portal.actor_type.as_str(), by_portal.actor_id.as_str()), ("portal", link.id.as_str()));
    plane.stop().await;
}
