//! OAuth connections in the console against a fake provider on loopback:
//! the list and a connection's page (never a token), deletion after a
//! confirmation, saying whether the provider confirmed the revocation.

use keyplane_tests::connections::{CLIENT_SECRET, connect, start};
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::oauth_provider::{ClientAuth, Failure, FakeProvider};
use keyplane_tests::{Backend, both_backends, random_org};

both_backends!(connections_are_listed_shown_and_deleted);

async fn connections_are_listed_shown_and_deleted(backend: Backend) {
    let provider = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let Some(plane) = start(backend, &[("acme", &provider, "client_secret_basic")]).await else { return };
    let org = random_org();
    let confirmed = connect(&plane, &org, &provider).await;
    let refused = connect(&plane, &org, &provider).await;
    let (_, admin) = plane.create_key(&org, &["keyplane:admin"]).await;
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&admin, &org).await;

    let list = browser.get("/connections").await;
    assert!(list.body.contains(&confirmed.id) && list.body.contains(&refused.id) && list.body.contains("acme"));
    let page = browser.get(&format!("/connections/{}", confirmed.id)).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("zones:read"), "{}", page.body);
    for token in provider.issued_tokens() {
        assert!(!list.body.contains(&token) && !page.body.contains(&token), "a token on a page");
    }

    // Delete after a confirmation; the provider revokes the grant.
    let confirm = browser.get(&format!("/connections/{}/delete", confirmed.id)).await;
    assert!(confirm.body.contains("Delete this connection?"));
    let deleted = browser.post(&format!("/connections/{}/delete", confirmed.id), &[]).await;
    assert_eq!(deleted.status, 200);
    assert!(deleted.body.contains("the provider confirmed the revocation"), "{}", deleted.body);
    assert_eq!(provider.revoked().len(), 1);
    assert_eq!(browser.get(&format!("/connections/{}", confirmed.id)).await.status, 404);

    // The provider refuses the revocation: deleted here, and the page says so.
    provider.fail_next(Failure::ServerError);
    let deleted = browser.post(&format!("/connections/{}/delete", refused.id), &[]).await;
    assert!(deleted.body.contains("revocation failed"), "{}", deleted.body);
    assert!(deleted.body.contains("500"), "the provider's answer is named: {}", deleted.body);
    assert_eq!(provider.revoked().len(), 1);
    assert!(browser.get("/connections").await.body.contains("No connections"));
    let deletions = plane.audit_events(&org, "connection.deleted").await;
    assert_eq!(deletions.len(), 2);
    assert!(deletions.iter().all(|event| event.metadata.as_ref().is_some_and(|m| m.fields.contains_key("via"))));
    plane.stop().await;
}
