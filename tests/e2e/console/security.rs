//! The console's guards: headers on every response, CSRF on every change,
//! escaping, what a read-only key sees and may do, tenant isolation by URL,
//! and secrets that appear only on the page that shows them once.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::webhooks::{publish, subscribe};
use keyplane_tests::{Backend, TestControlPlane, both_backends, random_org, start_webhooks_or_skip};

both_backends!(
    every_response_carries_the_security_headers,
    changes_need_the_session_csrf_token,
    names_are_escaped_and_secrets_are_shown_once,
    read_only_keys_get_read_only_pages,
    other_orgs_are_out_of_reach_by_url,
);

async fn every_response_carries_the_security_headers(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let org = random_org();
    let browser = ConsoleClient::new(plane.console_addr);
    let mut pages = vec![browser.get("/login").await, browser.get("/").await, browser.get("/static/console.css").await];
    browser.sign_in_to(&plane.root_token, &org).await;
    for path in ["/", "/keys", "/keys/new", "/webhooks", "/webhooks/new", "/audit", "/connections", "/nope"] {
        pages.push(browser.get(path).await);
    }
    for page in &pages {
        let csp = page.header("content-security-policy");
        assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"));
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(page.header("referrer-policy"), "no-referrer");
        assert_eq!(page.header("x-frame-options"), "DENY");
        assert!(!page.body.contains("<script>"), "no inline script");
    }
    assert_eq!(pages.last().unwrap().status, 404);
    assert_eq!(pages[3].header("cache-control"), "no-store");
    plane.stop().await;
}

async fn changes_need_the_session_csrf_token(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let org = random_org();
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&plane.root_token, &org).await;
    browser.get("/keys/new").await;
    let fields = [("name", "csrf test"), ("environment", "live")];
    let missing = browser.post_raw("/keys", &fields).await;
    assert_eq!(missing.status, 403);
    let wrong = browser.post_raw("/keys", &[("csrf", "0123456789abcdef0123456789abcdef"), ("name", "csrf test")]).await;
    assert_eq!(wrong.status, 403);
    // Another session's token does not fit this one.
    let other = ConsoleClient::new(plane.console_addr);
    other.sign_in_to(&plane.root_token, &org).await;
    let foreign = other.get("/keys/new").await.input("csrf").unwrap();
    assert_eq!(browser.post_raw("/keys", &[("csrf", &foreign), ("name", "csrf test")]).await.status, 403);
    // State changes only by POST.
    assert_eq!(browser.get("/keys/key_x/delete").await.status, 200, "GET shows a confirmation, nothing else");
    let keys = plane
        .keys(&plane.root_token)
        .await
        .list_api_keys(pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(keys.is_empty(), "no forged change went through");
    assert_eq!(browser.post("/keys", &fields).await.status, 303, "with the token it works");
    plane.stop().await;
}

async fn names_are_escaped_and_secrets_are_shown_once(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let org = random_org();
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&plane.root_token, &org).await;
    browser.get("/keys/new").await;
    let hostile = "<script>alert(1)</script>";
    let fields = [("name", hostile), ("description", "\"><img src=x onerror=alert(2)>")];
    let created = browser.post_shown_once("/keys", &fields).await;
    let token = created.element_text("shown-once").unwrap();
    assert!(!created.body.contains(hostile) && created.body.contains("&#60;script&#62;alert(1)"), "{}", created.body);
    let list = browser.get("/keys").await;
    assert!(!list.body.contains(hostile) && list.body.contains("&#60;script&#62;"));
    let id =
        list.body.split("/keys/key_").nth(1).and_then(|s| s.split('"').next()).map(|s| format!("key_{s}")).unwrap();
    let page = browser.get(&format!("/keys/{id}")).await;
    assert!(!page.body.contains("<img src=x") && !page.body.contains(hostile));

    // After the page that shows it once, the token is nowhere.
    let (subscription, secret) = subscribe(&plane, &org, "https://hooks.example.com/x", &["a.b"]).await;
    publish(&plane, &org, "a.b", "{}").await;
    for path in [
        "/".to_owned(),
        "/keys".into(),
        format!("/keys/{id}"),
        "/webhooks".into(),
        format!("/webhooks/{}", subscription.id),
        "/audit".into(),
    ] {
        let body = browser.get(&path).await.body;
        assert!(!body.contains(&token) && !body.contains(&secret) && !body.contains(&plane.root_token), "{path}");
        keyplane_tests::assert_no_token_in(&body);
    }
    plane.stop().await;
}

async fn read_only_keys_get_read_only_pages(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let org = random_org();
    let (target, _) = plane.create_key(&org, &[]).await;
    let (subscription, _) = subscribe(&plane, &org, "https://hooks.example.com/x", &["a.b"]).await;
    let reader_scopes =
        ["keyplane:keys:read", "keyplane:webhooks:read", "keyplane:deliveries:read", "keyplane:audit:read"];
    let (_, reader) = plane.create_key(&org, &reader_scopes).await;
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&reader, &org).await;
    let keys = browser.get("/keys").await;
    assert!(!keys.body.contains("Create a key"));
    let key = browser.get(&format!("/keys/{}", target.id)).await;
    for button in ["Rotate", "Revoke", ">Delete<", "Reveal", "/update"] {
        assert!(!key.body.contains(button), "a reader sees no {button}");
    }
    let webhook = browser.get(&format!("/webhooks/{}", subscription.id)).await;
    for button in ["Disable", "Rotate secret", "Send a test event", "Approve", "Recover failed", "Edit the endpoint"] {
        assert!(!webhook.body.contains(button), "a reader sees no {button}");
    }
    assert!(!browser.get("/").await.body.contains("href=\"/connections\""), "no section it may not read");

    // A hand-made POST is refused and changes (and audits) nothing.
    let before = audit_count(&plane, &org).await;
    let revoke = browser.post(&format!("/keys/{}/revoke", target.id), &[("reason", "x")]).await;
    assert_eq!(revoke.status, 403);
    assert_eq!(browser.post("/keys", &[("name", "sneaky")]).await.status, 403);
    assert_eq!(browser.post(&format!("/webhooks/{}/disable", subscription.id), &[]).await.status, 403);
    assert_eq!(browser.get("/connections").await.status, 403);
    assert_eq!(audit_count(&plane, &org).await, before, "nothing audited");
    plane.stop().await;
}

async fn audit_count(plane: &TestControlPlane, org: &str) -> usize {
    plane.audit_events(org, "").await.len()
}

async fn other_orgs_are_out_of_reach_by_url(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let (org_a, org_b) = (random_org(), random_org());
    let (b_key, _) = plane.create_key(&org_b, &[]).await;
    let (b_subscription, _) = subscribe(&plane, &org_b, "https://hooks.example.com/b", &["*"]).await;
    publish(&plane, &org_b, "b.thing", "{}").await;
    let b_delivery = keyplane_tests::webhooks::deliveries_of(&plane, &org_b, &b_subscription.id).await.remove(0);
    let (_, a_admin) = plane.create_key(&org_a, &["keyplane:admin"]).await;
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&a_admin, &org_a).await;
    for path in [
        format!("/keys/{}", b_key.id),
        format!("/webhooks/{}", b_subscription.id),
        format!("/deliveries/{}", b_delivery.id),
    ] {
        assert_eq!(browser.get(&path).await.status, 404, "{path}");
    }
    browser.get("/keys").await;
    assert_eq!(browser.post(&format!("/keys/{}/revoke", b_key.id), &[("reason", "x")]).await.status, 404);
    assert_eq!(browser.post(&format!("/deliveries/{}/retry", b_delivery.id), &[]).await.status, 404);
    let audit = browser.get(&format!("/audit?target={}", b_key.id)).await;
    assert!(audit.body.contains("No events match."), "another org's audit rows stay hidden");
    plane.stop().await;
}
