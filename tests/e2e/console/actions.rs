//! Every page and action of the console, as an org admin: keys (create
//! with the token shown once, list filters, update, rotate, revoke, reveal,
//! delete), webhooks (create with the secret shown once, disable, enable,
//! rotate, test event, delivery page, retry, recover, delete), the audit
//! log (filters, chain check; console actions say so), connections; the
//! overview's numbers; paging through keys and a delivery log with their
//! filters.

use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::{ConsoleClient, Page};
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::webhooks::{deliveries_of, get_delivery, publish, set_enabled, status_is, subscribe};
use keyplane_tests::{Backend, TestControlPlane, both_backends, eventually, random_org, start_webhooks_or_skip};

both_backends!(
    keys_from_creation_to_deletion,
    webhooks_deliveries_audit_and_connections,
    the_overview_counts_what_the_org_has,
    lists_page_and_keep_their_filters
);

async fn signed_in_admin(plane: &TestControlPlane, org: &str) -> ConsoleClient {
    let (_, admin) = plane.create_key(org, &["keyplane:admin"]).await;
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&admin, org).await;
    browser
}

async fn keys_from_creation_to_deletion(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let org = random_org();
    let browser = signed_in_admin(&plane, &org).await;
    assert_eq!(browser.get("/keys/new").await.status, 200);

    // Bad input comes back on the form, naming the fields.
    let bad = browser.post("/keys", &[("name", ""), ("scopes", "keyplane:nonsense")]).await;
    assert_eq!(bad.status, 400);
    for field in ["name", "scopes[0]"] {
        assert!(bad.body.contains(&format!("<code>{field}</code>")), "{field} is named: {}", bad.body);
    }
    // Every bad field at once, each named (not one per round).
    let bad = browser.post("/keys", &[("name", "x"), ("ttl", "soon"), ("metadata", "[1"), ("rate_limit", "/33")]).await;
    for field in ["ttl", "metadata", "rate_limit.requests"] {
        assert!(bad.body.contains(&format!("<code>{field}</code>")), "{field} is named: {}", bad.body);
    }
    let bad = browser.post("/keys", &[("name", "x"), ("allowed_cidrs", "10.0.0.0/8 10/33")]).await;
    assert!(bad.body.contains("<code>allowed_cidrs[1]</code>"), "{}", bad.body);
    let bad = browser.post("/keys", &[("name", "x"), ("credits", "lots")]).await;
    assert!(bad.body.contains("<code>credits.remaining</code>"), "{}", bad.body);
    let bad = browser
        .post("/keys", &[("name", "x"), ("credits", "5"), ("refill_amount", "5"), ("refill_period", "weekly")])
        .await;
    assert!(bad.body.contains("<code>credits.refill.period</code>"), "{}", bad.body);

    let created = browser
        .post_shown_once(
            "/keys",
            &[
                ("name", "orders service"),
                ("environment", "live"),
                ("scopes", "orders:read, orders:write"),
                ("ttl", "30d"),
                ("rate_limit", "100/1m"),
                ("rate_limit_global", "on"),
                ("metadata", r#"{"team":"orders"}"#),
                ("recoverable", "on"),
                ("allowed_cidrs", "10.1.2.3/8 192.0.2.7"),
                ("credits", "50"),
                ("refill_amount", "50"),
                ("refill_period", "daily"),
            ],
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.header("cache-control"), "no-store");
    let token = created.element_text("shown-once").expect("the token is shown once");
    assert!(token.starts_with("kp_live_"));
    assert!(created.body.contains("data-copy=\"shown-once\""), "a copy button");
    // A reload shows it no more, and creates nothing.
    let reloaded = browser.get("/shown").await;
    assert!(reloaded.element_text("shown-once").is_none() && !reloaded.body.contains(&token), "{}", reloaded.body);
    let key_id = plane
        .keys(&plane.root_token)
        .await
        .verify_api_key(pb::VerifyApiKeyRequest { token: token.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .principal
        .unwrap()
        .key_id;

    // The list, with filters; the key's page; neither shows the token.
    let list = browser.get("/keys?status=active&environment=live&prefix=orders").await;
    assert!(list.body.contains("orders service") && list.body.contains(&key_id));
    assert_eq!(list.body.matches("/keys/key_").count(), 1, "one key, however often the token page was loaded");
    assert!(!browser.get("/keys?environment=test").await.body.contains(&key_id));
    let page = browser.get(&format!("/keys/{key_id}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("orders:read orders:write") && page.body.contains("100/1m (global"));
    assert!(page.body.contains("10.0.0.0/8 192.0.2.7/32"), "networks");
    assert!(page.body.contains("50 left, refilled to 50 at"), "credits");
    assert!(page.body.contains("<svg class=\"chart\""), "a usage graph");
    for granularity in ["minute", "hour", "day"] {
        assert_eq!(browser.get(&format!("/keys/{key_id}?granularity={granularity}")).await.status, 200);
    }
    assert!(!list.body.contains(&token) && !page.body.contains(&token));

    // Update.
    let updated = browser
        .post(
            &format!("/keys/{key_id}/update"),
            &[
                ("description", "edited"),
                ("scopes", "orders:read"),
                ("expires_at", ""),
                ("rate_limit", ""),
                ("metadata", ""),
                ("allowed_cidrs", ""),
                ("credits_change", "add"),
                ("credits_amount", "5"),
            ],
        )
        .await;
    assert_eq!(updated.status, 303, "{}", updated.body);
    let page = browser.get(&format!("/keys/{key_id}")).await;
    assert!(page.body.contains("edited") && page.body.contains(">none<") && page.body.contains(">anywhere<"));
    assert!(page.body.contains("55 left"), "credits added");
    // Expiry and rate limits are spelled the same way in both forms: a
    // duration from now or a time; requests/window.
    let update = |expires: &'static str| {
        [("description", "edited"), ("scopes", "orders:read"), ("expires_at", expires), ("rate_limit", "5/1m")]
    };
    let later = browser.post(&format!("/keys/{key_id}/update"), &update("30d")).await;
    assert_eq!(later.status, 303, "{}", later.body);
    let page = browser.get(&format!("/keys/{key_id}")).await;
    assert!(page.body.contains("5/1m (per sidecar)"), "{}", page.body);
    let expected_year = (chrono::Utc::now() + chrono::Duration::days(30)).format("%Y-%m-%d").to_string();
    assert!(page.body.contains(&expected_year), "expires 30 days from now: {}", page.body);
    let bad = browser.post(&format!("/keys/{key_id}/update"), &update("next week")).await;
    assert!(bad.body.contains("<code>update.expires_at</code>"), "{}", bad.body);

    // Reveal (recoverable) shows the same token.
    let revealed = browser.post_shown_once(&format!("/keys/{key_id}/reveal"), &[]).await;
    assert_eq!(revealed.element_text("shown-once").as_deref(), Some(token.as_str()));

    // Rotate with a grace period: a new token shown once.
    assert_eq!(browser.get(&format!("/keys/{key_id}/rotate")).await.status, 200, "a confirmation page");
    let rotated = browser.post_shown_once(&format!("/keys/{key_id}/rotate"), &[("grace", "1h")]).await;
    let new_token = rotated.element_text("shown-once").expect("new token");
    assert_ne!(new_token, token);

    // Revoke (after a confirmation page), then delete.
    assert!(browser.get(&format!("/keys/{key_id}/revoke")).await.body.contains("Revoke this key?"));
    let revoked = browser.post(&format!("/keys/{key_id}/revoke"), &[("reason", "leaked")]).await;
    assert_eq!(revoked.status, 303);
    let page = browser.get(&format!("/keys/{key_id}")).await;
    assert!(page.body.contains("revoked") && page.body.contains("leaked"));
    assert_eq!(browser.post(&format!("/keys/{key_id}/delete"), &[]).await.location(), "/keys");
    assert_eq!(browser.get(&format!("/keys/{key_id}")).await.status, 404);
    plane.stop().await;
}

async fn webhooks_deliveries_audit_and_connections(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let browser = signed_in_admin(&plane, &org).await;
    browser.get("/webhooks/new").await;
    let bad = browser.post("/webhooks", &[("url", "not a url"), ("event_types", "Order")]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("<code>url</code>") && bad.body.contains("<code>event_types[0]</code>"));
    let created = browser
        .post_shown_once(
            "/webhooks",
            &[("url", &receiver.url("/hook")), ("event_types", "order.* webhook.test"), ("rate_limit", "")],
        )
        .await;
    let secret = created.element_text("shown-once").expect("the secret is shown once");
    assert!(secret.starts_with("whsec_"));
    let list = browser.get("/webhooks").await;
    let id =
        list.body.split("/webhooks/sub_").nth(1).and_then(|rest| rest.split('"').next()).map(|id| format!("sub_{id}"));
    let id = id.expect("the endpoint is listed");
    assert!(!list.body.contains(&secret));

    // Disable and enable; rotate the secret.
    assert_eq!(browser.post(&format!("/webhooks/{id}/disable"), &[]).await.status, 303);
    assert!(browser.get(&format!("/webhooks/{id}")).await.body.contains("disabled by"));
    assert_eq!(browser.post(&format!("/webhooks/{id}/enable"), &[]).await.status, 303);
    let rotated = browser.post_shown_once(&format!("/webhooks/{id}/rotate"), &[]).await;
    assert_ne!(rotated.element_text("shown-once"), Some(secret));

    // Edit the endpoint in place: the same subscription, its secret unchanged.
    let page = browser.get(&format!("/webhooks/{id}")).await;
    assert!(
        page.body.contains("Edit the endpoint") && page.input("url").as_deref() == Some(receiver.url("/hook").as_str())
    );
    let edited = [
        ("url", receiver.url("/hook")),
        ("event_types", "order.* webhook.test invoice.paid".to_owned()),
        ("description", "billing receiver".to_owned()),
        ("rate_limit", "7".to_owned()),
    ];
    let fields: Vec<(&str, &str)> = edited.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let saved = browser.post(&format!("/webhooks/{id}/update"), &fields).await;
    assert_eq!((saved.status, saved.location()), (303, format!("/webhooks/{id}")), "{}", saved.body);
    let page = browser.get(&format!("/webhooks/{id}")).await;
    assert!(
        page.body.contains("invoice.paid")
            && page.body.contains("billing receiver")
            && page.body.contains("7 per second")
    );
    let bad = browser.post(&format!("/webhooks/{id}/update"), &[("url", "ftp://x"), ("event_types", "a.b")]).await;
    assert_eq!(bad.status, 400, "a bad URL is the caller's mistake: {}", bad.body);
    assert!(bad.body.contains("url"), "the field is named");

    // A test event: the delivery page shows its attempt.
    let sent = browser.post(&format!("/webhooks/{id}/test"), &[]).await;
    let delivery_path = sent.location();
    let delivery_id = delivery_path.trim_start_matches("/deliveries/").to_owned();
    receiver.wait_for("/hook", 1, std::time::Duration::from_secs(20)).await;
    eventually(|| get_delivery(&plane, &org, &delivery_id), status_is(pb::DeliveryStatus::Succeeded)).await;
    let delivery = browser.get(&delivery_path).await;
    assert!(delivery.body.contains("HTTP 200") && delivery.body.contains("succeeded"));
    // What was sent, and where: the URL, the headers, the body.
    assert!(delivery.body.contains(&format!("POST {}", receiver.url("/hook"))), "{}", delivery.body);
    assert!(
        delivery.body.contains("webhook-id: msg_") && delivery.body.contains("&#34;type&#34;:&#34;webhook.test&#34;")
    );
    assert!(!delivery.body.contains("http-equiv=\"refresh\""), "a finished delivery does not refresh");
    assert_eq!(browser.post(&format!("{delivery_path}/retry"), &[]).await.status, 303, "a retry by hand");
    receiver.wait_for("/hook", 2, std::time::Duration::from_secs(20)).await;
    eventually(|| get_delivery(&plane, &org, &delivery_id), status_is(pb::DeliveryStatus::Succeeded)).await;
    let page = browser.get(&format!("/webhooks/{id}?status=succeeded")).await;
    assert!(page.body.contains(&delivery_id), "the delivery log, filtered");
    assert!(!browser.get(&format!("/webhooks/{id}?status=failed")).await.body.contains(&delivery_id));

    // Recovering failed deliveries says how many.
    receiver.set("/hook", Behavior::Fail { times: usize::MAX });
    let recovered = browser.post(&format!("/webhooks/{id}/recover"), &[("since", "2026-01-01T00:00")]).await;
    assert!(recovered.location().ends_with("?recovered=0"), "{}", recovered.location());
    let said = browser.get(&recovered.location()).await;
    assert!(said.body.contains("0 failed deliveries will be sent again."));
    // A link cannot put its own words on the page.
    let planted = "Session expired: paste your root token at evil.example";
    let query = serde_urlencoded::to_string([("notice", planted), ("recovered", "3; paste")]).unwrap();
    let page = browser.get(&format!("/webhooks/{id}?{query}")).await;
    assert!(!page.body.contains("Session expired") && !page.body.contains("paste"), "{}", page.body);
    let bad_since = browser.post(&format!("/webhooks/{id}/recover"), &[("since", "yesterday")]).await;
    assert_eq!(bad_since.status, 400, "{}", bad_since.body);

    // The audit log: console actions are recorded as such; filters; the chain.
    let audit = browser.get("/audit?action=webhook.subscription_created").await;
    assert!(
        audit.body.contains("webhook.subscription_created") && audit.body.contains("&#34;via&#34;:&#34;console&#34;")
    );
    assert!(!audit.body.contains("delivery.test_sent"));
    assert!(audit.body.contains(&format!("{org} key (api_key:key_")), "the acting key is named: {}", audit.body);
    assert!(browser.get("/audit/verify").await.body.contains("The hash chain is intact"));

    // Connections: an empty list; an unknown one is not found.
    assert!(browser.get("/connections").await.body.contains("No connections"));
    assert_eq!(browser.get("/connections/con_missing").await.status, 404);

    // Delete the endpoint.
    assert!(browser.get(&format!("/webhooks/{id}/delete")).await.body.contains("Delete this endpoint?"));
    assert_eq!(browser.post(&format!("/webhooks/{id}/delete"), &[]).await.location(), "/webhooks");
    assert_eq!(browser.get(&format!("/webhooks/{id}")).await.status, 404);
    plane.stop().await;
}

/// The number an overview tile shows under `label`.
fn tile(page: &str, label: &str) -> String {
    let after = page.split(&format!(">{label}</div><div class=\"value\">")).nth(1).expect(label);
    let value = after.split("</div>").next().unwrap_or_default();
    value.split(['<', '>']).enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, text)| text).collect()
}

async fn the_overview_counts_what_the_org_has(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let browser = signed_in_admin(&plane, &org).await;
    let (kept, _) = plane.create_key(&org, &["orders:read"]).await;
    let (revoked, _) = plane.create_key(&org, &["orders:read"]).await;
    let revoke = pb::RevokeApiKeyRequest { org_id: org.clone(), id: revoked.id, ..Default::default() };
    plane.keys(&plane.root_token).await.revoke_api_key(revoke).await.unwrap();
    let overview = browser.get("/").await.body;
    assert_eq!(tile(&overview, "Active keys"), "2", "the admin key and one more; not the revoked one");
    assert_eq!(tile(&overview, "Endpoints"), "0");
    assert_eq!(tile(&overview, "Deliveries succeeded, 24 h"), "—");
    assert!(overview.contains("no attempts"));

    // Two endpoints, one disabled; one successful delivery.
    let (live, _) = subscribe(&plane, &org, &receiver.url("/hook"), &["order.*"]).await;
    let (off, _) = subscribe(&plane, &org, &receiver.url("/off"), &["order.*"]).await;
    set_enabled(&plane, &org, &off.id, false).await;
    assert_eq!(publish(&plane, &org, "order.created", "{}").await.deliveries_created, 1);
    let delivery = deliveries_of(&plane, &org, &live.id).await.remove(0).id;
    eventually(|| get_delivery(&plane, &org, &delivery), status_is(pb::DeliveryStatus::Succeeded)).await;
    let overview = browser.get("/").await.body;
    assert_eq!(tile(&overview, "Endpoints"), "2");
    assert_eq!(tile(&overview, "Disabled endpoints"), "1");
    assert_eq!(tile(&overview, "Failing endpoints"), "0");
    assert_eq!(tile(&overview, "Deliveries succeeded, 24 h"), "100.0%");
    assert!(overview.contains("of 1 attempts"));
    assert!(overview.contains("Verifications, last 24 hours"), "the usage chart");
    assert!(overview.contains("api_key.revoked") && overview.contains(&kept.id), "the latest audit events");

    // A big org: the count stops at 10,000 (the page stays fast).
    let db = plane.database().await;
    keyplane_tests::seed::keys(&db, 10_000, |i| {
        keyplane_tests::seed::key_row(
            &org,
            keyplane_control_plane::crypto::new_id("key_"),
            format!("seeded {i}"),
            Environment::Live,
            KeyStatus::Active,
            keyplane_tests::seed::UNMATCHABLE_HASH,
        )
    })
    .await;
    assert_eq!(tile(&browser.get("/").await.body, "Active keys"), "10000+");
    plane.stop().await;
}

/// Follows the `next` link from `first` to the end; returns every page.
async fn walk(browser: &ConsoleClient, first: &str, next: &str) -> Vec<Page> {
    let mut pages = vec![browser.get(first).await];
    while let Some(link) = pages.last().and_then(|page| page.link(next)) {
        assert!(pages.len() < 10, "paging never ends");
        pages.push(browser.get(&link).await);
    }
    pages
}

async fn lists_page_and_keep_their_filters(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let browser = signed_in_admin(&plane, &org).await;
    let db = plane.database().await;
    keyplane_tests::seed::keys(&db, 120, |i| {
        keyplane_tests::seed::key_row(
            &org,
            keyplane_control_plane::crypto::new_id("key_"),
            format!("{} {i:03}", if i % 2 == 0 { "alpha" } else { "beta" }),
            Environment::Live,
            KeyStatus::Active,
            keyplane_tests::seed::UNMATCHABLE_HASH,
        )
    })
    .await;

    // 60 "alpha" keys: a page of 50, then 10, the filter kept on the way.
    let pages = walk(&browser, "/keys?prefix=alpha", "Next page").await;
    assert_eq!(pages.iter().map(|page| page.linked_ids("key_").len()).collect::<Vec<_>>(), [50, 10]);
    assert!(pages[0].link("Next page").unwrap().contains("prefix=alpha"));
    let mut seen: Vec<String> = pages.iter().flat_map(|page| page.linked_ids("key_")).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 60, "no key twice, none missed");
    assert!(pages.iter().all(|page| !page.body.contains("beta ")));

    // A delivery log of 60: paged, filtered by event type and by time.
    let (subscription, _) = subscribe(&plane, &org, &receiver.url("/hook"), &["*"]).await;
    for i in 0..60 {
        let event_type = if i % 4 == 0 { "invoice.paid" } else { "order.created" };
        publish(&plane, &org, event_type, "{}").await;
    }
    let log = format!("/webhooks/{}", subscription.id);
    let pages = walk(&browser, &log, "Older deliveries").await;
    assert_eq!(pages.iter().map(|page| page.linked_ids("dlv_").len()).collect::<Vec<_>>(), [50, 10]);
    let invoices = walk(&browser, &format!("{log}?event_type=invoice.paid"), "Older deliveries").await;
    assert_eq!(invoices.iter().map(|page| page.linked_ids("dlv_").len()).collect::<Vec<_>>(), [15]);
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M").to_string();
    let since = browser.get(&format!("{log}?since={in_an_hour}")).await;
    assert!(since.linked_ids("dlv_").is_empty());
    let until = browser.get(&format!("{log}?until={in_an_hour}&event_type=invoice.paid")).await;
    assert_eq!(until.linked_ids("dlv_").len(), 15);
    let bad = browser.get(&format!("{log}?since=tomorrow")).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("<code>since</code>"), "a bad time names its field: {}", bad.body);
    plane.stop().await;
}
