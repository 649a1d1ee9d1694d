//! Signing in and out: the root token (with its banner), API keys, what
//! a refused credential is told, throttling, cookie attributes, org choice,
//! and sessions that end: idle, signed out, key revoked or deleted.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::{Backend, TestControlPlane, both_backends, random_org, start_or_skip};

both_backends!(
    root_and_api_keys_sign_in_and_out,
    refused_credentials_learn_nothing_and_are_throttled,
    sessions_end_when_idle_or_when_their_key_goes,
);

async fn root_and_api_keys_sign_in_and_out(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let browser = ConsoleClient::new(plane.console_addr);
    assert_eq!(browser.get("/").await.location(), "/login", "signed out: to the sign-in page");

    // The root token: a platform credential picks its org; a break-glass banner.
    let signed_in = browser.sign_in(&plane.root_token).await;
    assert_eq!((signed_in.status, signed_in.location().as_str()), (303, "/org"));
    let cookie = signed_in.header("set-cookie");
    for attribute in ["kp_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP on loopback: no Secure attribute");
    let session = browser.session_cookie().unwrap();
    let db = plane.database().await;
    let stored = sea_orm::ConnectionTrait::query_all_raw(
        &db,
        sea_orm::Statement::from_string(db.get_database_backend(), "SELECT id_hash FROM console_sessions"),
    )
    .await
    .unwrap();
    let hashes: Vec<String> = stored.iter().map(|row| row.try_get("", "id_hash").unwrap()).collect();
    assert!(!hashes.contains(&session), "only a hash of the session id is stored");
    let picker = browser.get("/org").await;
    assert!(picker.body.contains("Create an org"), "a platform admin may create orgs: {}", picker.body);
    let typo = browser.post("/org", &[("org", &org)]).await;
    assert_eq!(typo.status, 404, "an id that is not an org is not found, not an empty org: {}", typo.body);
    let created = browser.post("/orgs", &[("org_id", &org), ("display_name", "Acme Rockets")]).await;
    assert_eq!(created.location(), "/", "created and opened: {}", created.body);
    let listed = browser.get(&format!("/org?search={}", &org[..org.len() - 2])).await;
    assert!(listed.body.contains("Acme Rockets") && listed.body.contains(&org), "{}", listed.body);
    let overview = browser.get("/").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("break-glass"), "root banner");
    assert!(overview.body.contains(&org));

    // Signing out ends the session: the old cookie no longer opens a page.
    let out = browser.post("/logout", &[]).await;
    assert_eq!(out.location(), "/login");
    let replay = ConsoleClient::new(plane.console_addr);
    replay.get("/login").await;
    let reused = plane_get_with_cookie(&plane, &session, "/").await;
    assert_eq!(reused, 303, "a signed-out session does not open pages");

    // An org key acts in its own org only, with no banner and no org switch.
    let (_, org_admin) = plane.create_key(&org, &["keyplane:admin"]).await;
    let browser = ConsoleClient::new(plane.console_addr);
    assert_eq!(browser.sign_in(&org_admin).await.location(), "/");
    let overview = browser.get("/").await;
    assert!(!overview.body.contains("break-glass") && !overview.body.contains("switch org"));
    assert!(overview.body.contains(&org));
    let other = browser.post("/org", &[("org", "someone-else")]).await;
    assert_eq!(other.status, 403);

    // Sign-ins and sign-outs are audited.
    let audit = plane.audit_events(&org, "console.signed_in").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].actor_type, "api_key");
    plane.stop().await;
}

/// GET `path` with only this session cookie; the status.
async fn plane_get_with_cookie(plane: &TestControlPlane, session: &str, path: &str) -> u16 {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = format!("http://{}{path}", plane.console_addr);
    client.get(url).header("cookie", format!("kp_session={session}")).send().await.unwrap().status().as_u16()
}

async fn refused_credentials_learn_nothing_and_are_throttled(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (_, no_keyplane_scopes) = plane.create_key(&org, &["orders:read"]).await;
    let (revoked, revoked_token) = plane.create_key(&org, &["keyplane:admin"]).await;
    plane
        .keys(&plane.root_token)
        .await
        .revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: revoked.id, reason: String::new() })
        .await
        .unwrap();
    let browser = ConsoleClient::new(plane.console_addr);
    let mut bodies = Vec::new();
    for credential in ["nonsense", &no_keyplane_scopes, &revoked_token, &keyplane_tests::forge_secret(&revoked_token)] {
        let refused = browser.sign_in(credential).await;
        assert_eq!(refused.status, 401, "{credential}");
        assert!(refused.body.contains("invalid credential"));
        assert!(!refused.body.contains(credential), "the credential is not echoed");
        bodies.push(refused.body.replace(&refused.input("nonce").unwrap_or_default(), ""));
    }
    assert!(bodies.windows(2).all(|pair| pair[0] == pair[1]), "every refusal reads the same");
    // A sign-in form without its nonce cookie is refused.
    let stranger = ConsoleClient::new(plane.console_addr);
    let forged = stranger.post_raw("/login", &[("credential", &plane.root_token), ("nonce", "x")]).await;
    assert_eq!(forged.status, 403);

    // Ten attempts a minute per address; then even a good credential waits.
    let mut throttled = None;
    for attempt in 0..12 {
        let answer = browser.sign_in("still nonsense").await;
        if answer.status == 429 {
            throttled = Some(attempt);
            break;
        }
    }
    assert!(throttled.is_some(), "sign-in attempts are throttled");
    assert_eq!(browser.sign_in(&plane.root_token).await.status, 429);
    plane.stop().await;
}

async fn sessions_end_when_idle_or_when_their_key_goes(backend: Backend) {
    let plane = start_or_skip!(backend, |config| config.console.session_idle = Duration::from_secs(2));
    let org = random_org();
    let (key, token) = plane.create_key(&org, &["keyplane:keys:read"]).await;
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in(&token).await;
    assert_eq!(browser.get("/keys").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ended = browser.get("/keys?status=active").await.location();
    assert_eq!(ended, "/login?ended=1&next=%2Fkeys%3Fstatus%3Dactive", "idle session ended");
    // The sign-in page says why, and leads back to where the person was.
    let again = browser.get(&ended).await;
    assert!(again.body.contains("Your session ended"), "{}", again.body);
    let (nonce, next) = (again.input("nonce").unwrap(), again.input("next").unwrap());
    assert_eq!(next, "/keys?status=active");
    let back = browser.post_raw("/login", &[("credential", &token), ("nonce", &nonce), ("next", &next)]).await;
    assert_eq!((back.status, back.location()), (303, next.clone()), "back where it was");
    // Only to this console's own pages.
    let stranger = ConsoleClient::new(plane.console_addr).get("/login?next=%2F%2Fevil.example").await;
    assert_eq!(stranger.input("next").as_deref(), Some("/"));

    // Revoking the key ends its session at the next request.
    assert_eq!(browser.get("/keys").await.status, 200);
    plane
        .keys(&plane.root_token)
        .await
        .revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: key.id.clone(), reason: "gone".into() })
        .await
        .unwrap();
    assert_eq!(browser.get("/keys").await.location(), "/login?ended=1&next=%2Fkeys", "revoked key: session ended");

    // So does deleting it.
    let (key, token) = plane.create_key(&org, &["keyplane:keys:read"]).await;
    browser.sign_in(&token).await;
    assert_eq!(browser.get("/keys").await.status, 200);
    plane
        .keys(&plane.root_token)
        .await
        .delete_api_key(pb::DeleteApiKeyRequest { org_id: org.clone(), id: key.id })
        .await
        .unwrap();
    assert_eq!(browser.get("/keys").await.location(), "/login?ended=1&next=%2Fkeys", "deleted key: session ended");
    plane.stop().await;
}
