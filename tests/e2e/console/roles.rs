//! The console's roles: create (bad input named), list, change, give to a
//! key (whose page shows what it holds and why) and to an identity (whose
//! page shows its roles and own permissions), delete.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::{Backend, both_backends, random_org, start_or_skip};

both_backends!(roles_from_creation_to_deletion);

async fn roles_from_creation_to_deletion(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (_, admin) = plane.create_key(&org, &["keyplane:admin"]).await;
    let (key, _) = plane.create_key(&org, &["orders.read"]).await;
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&admin, &org).await;
    assert_eq!(browser.get("/roles").await.status, 200);

    let bad = browser.post("/roles", &[("name", "x y"), ("permissions", "keyplane:admin billing.")]).await;
    assert_eq!(bad.status, 400);
    for field in ["name", "permissions[0]", "permissions[1]"] {
        assert!(bad.body.contains(&format!("<code>{field}</code>")), "{field} is named: {}", bad.body);
    }
    let created = browser
        .post(
            "/roles",
            &[("name", "support"), ("permissions", "tickets.read, tickets.write"), ("description", "staff")],
        )
        .await;
    assert_eq!(created.status, 303, "{}", created.body);
    let role_page = created.location();
    assert!(role_page.starts_with("/roles/rol_"), "{role_page}");
    let listed = browser.get("/roles").await;
    assert!(listed.body.contains("support") && listed.body.contains("tickets.read tickets.write"), "{}", listed.body);

    let changed = browser
        .post(
            &format!("{role_page}/update"),
            &[("name", "support"), ("permissions", "tickets.*"), ("description", "staff")],
        )
        .await;
    assert_eq!(changed.status, 303, "{}", changed.body);

    // Given to a key, its page shows the role and each permission's source.
    browser.get(&format!("/keys/{}", key.id)).await;
    let given = browser.post(&format!("/keys/{}/roles", key.id), &[("roles", "support")]).await;
    assert_eq!(given.status, 303, "{}", given.body);
    let key_page = browser.get(&format!("/keys/{}", key.id)).await;
    assert!(key_page.body.contains("tickets.*") && key_page.body.contains("role:support"), "{}", key_page.body);
    assert!(key_page.body.contains("orders.read") && key_page.body.contains("scope"), "{}", key_page.body);
    let unknown = browser.post(&format!("/keys/{}/roles", key.id), &[("roles", "support nope")]).await;
    assert!(unknown.body.contains("<code>roles[1]</code>"), "{}", unknown.body);

    // An identity's page: its roles and own permissions, which its keys hold too.
    let request = pb::CreateIdentityRequest { org_id: org.clone(), external_id: "acme".into(), ..Default::default() };
    let mut identities = plane.identities(&plane.root_token).await;
    let identity =
        identities.create_identity(request).await.expect("identity").into_inner().identity.expect("identity");
    assert_eq!(browser.get(&format!("/identities/{}", identity.id)).await.status, 200);
    let path = format!("/identities/{}", identity.id);
    assert_eq!(browser.post(&format!("{path}/roles"), &[("roles", "support")]).await.status, 303);
    assert_eq!(browser.post(&format!("{path}/permissions"), &[("permissions", "reports.read")]).await.status, 303);
    let bad = browser.post(&format!("{path}/permissions"), &[("permissions", "keyplane:admin")]).await;
    assert!(bad.body.contains("<code>permissions[0]</code>"), "{}", bad.body);
    let page = browser.get(&path).await;
    assert!(page.body.contains("reports.read") && page.body.contains("role:support"), "{}", page.body);
    assert!(page.body.contains("tickets.*") && page.body.contains("identity"), "{}", page.body);

    let shown = browser.get(&role_page).await;
    assert!(shown.body.contains(&key.id), "holders listed: {}", shown.body);
    assert_eq!(browser.get(&format!("{role_page}/delete")).await.status, 200);
    let deleted = browser.post(&format!("{role_page}/delete"), &[]).await;
    assert_eq!((deleted.status, deleted.location()), (303, "/roles".into()));
    let key_page = browser.get(&format!("/keys/{}", key.id)).await;
    assert!(!key_page.body.contains("role:support"), "taken from the key");
    assert!(!plane.audit_events(&org, "role.deleted").await.is_empty());
    plane.stop().await;
}
