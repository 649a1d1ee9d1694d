//! What ends a console session besides idling and its key going: the root
//! token changing, the key that made a portal link losing its power, and a
//! key session's cookie used from outside the key's allowed networks.

use std::net::Ipv4Addr;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::{Backend, TestControlPlane, both_backends, random_org, start_or_skip};

both_backends!(
    changing_the_root_token_ends_its_sessions,
    portal_sessions_end_with_their_creators_power,
    key_sessions_stay_inside_the_keys_networks
);

/// GET `path` with only this session cookie, from `local`; the status and `Location`.
async fn get_with_cookie(plane: &TestControlPlane, local: Ipv4Addr, session: &str, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::V4(local))
        .build()
        .unwrap();
    let url = format!("http://{}{path}", plane.console_addr);
    let answer = client.get(url).header("cookie", format!("kp_session={session}")).send().await.unwrap();
    let location = answer.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (answer.status().as_u16(), location)
}

async fn changing_the_root_token_ends_its_sessions(backend: Backend) {
    let mut plane = start_or_skip!(backend);
    let browser = ConsoleClient::new(plane.console_addr);
    browser.sign_in_to(&plane.root_token, &random_org()).await;
    let session = browser.session_cookie().expect("signed in");
    let local = Ipv4Addr::LOCALHOST;
    assert_eq!(get_with_cookie(&plane, local, &session, "/keys").await.0, 200);

    // The operator replaces the root token and restarts.
    plane.stop_for_now().await;
    let path = plane.config.root_token_path().expect("root token file");
    let replaced = format!("{}x", plane.root_token);
    std::fs::write(&path, &replaced).unwrap();
    plane.start_again().await;
    let ended = get_with_cookie(&plane, local, &session, "/keys").await;
    assert_eq!(ended, (303, "/login?ended=1&next=%2Fkeys".to_owned()), "a session of the old root token");
    let fresh = ConsoleClient::new(plane.console_addr);
    fresh.sign_in_to(&replaced, &random_org()).await;
    assert_eq!(fresh.get("/keys").await.status, 200, "the new token signs in");
    plane.stop().await;
}

async fn portal_sessions_end_with_their_creators_power(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (writer, writer_token) = plane.create_key(&org, &["keyplane:webhooks:write"]).await;
    let mut as_writer = plane.webhooks(&writer_token).await;
    let open = |url: String| {
        let plane = &plane;
        async move {
            let customer = ConsoleClient::new(plane.console_addr);
            let path = url.trim_start_matches(&format!("http://{}", plane.console_addr)).to_owned();
            assert_eq!(customer.open_portal(&path).await.status, 303);
            assert_eq!(customer.get("/webhooks").await.status, 200);
            customer
        }
    };
    let request = pb::CreatePortalLinkRequest::default();
    let first = open(as_writer.create_portal_link(request.clone()).await.expect("link").into_inner().url).await;
    let second = open(as_writer.create_portal_link(request).await.expect("link").into_inner().url).await;

    // The creator loses the power to make links: its portal sessions end.
    let mut root = plane.keys(&plane.root_token).await;
    let narrowed = pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: writer.id.clone(),
        update: Some(pb::ApiKeyUpdate { scopes: vec!["keyplane:webhooks:read".into()], ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["scopes".into()] }),
    };
    root.update_api_key(narrowed).await.expect("narrow");
    assert_eq!(first.get("/webhooks").await.location(), "/login?ended=1&next=%2Fwebhooks", "the creator was narrowed");

    // Revoked: the same.
    let restored = pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: writer.id.clone(),
        update: Some(pb::ApiKeyUpdate { scopes: vec!["keyplane:webhooks:write".into()], ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["scopes".into()] }),
    };
    root.update_api_key(restored).await.expect("restore");
    assert_eq!(second.get("/webhooks").await.status, 200, "still the creator's power");
    let revoke = pb::RevokeApiKeyRequest { org_id: org.clone(), id: writer.id.clone(), reason: "left".into() };
    root.revoke_api_key(revoke).await.expect("revoke");
    assert_eq!(second.get("/webhooks").await.location(), "/login?ended=1&next=%2Fwebhooks", "the creator was revoked");
    plane.stop().await;
}

async fn key_sessions_stay_inside_the_keys_networks(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let request = pb::CreateApiKeyRequest {
        org_id: org.clone(),
        name: "office only".into(),
        scopes: vec!["keyplane:keys:read".into()],
        allowed_cidrs: vec!["127.0.0.2/32".into()],
        ..Default::default()
    };
    let token = plane.keys(&plane.root_token).await.create_api_key(request).await.expect("create").into_inner().token;
    let office = Ipv4Addr::new(127, 0, 0, 2);
    let browser = ConsoleClient::from(plane.console_addr, office.into());
    browser.sign_in_to(&token, &org).await;
    let session = browser.session_cookie().expect("signed in");
    assert_eq!(get_with_cookie(&plane, office, &session, "/keys").await.0, 200);
    let elsewhere = get_with_cookie(&plane, Ipv4Addr::new(127, 0, 0, 3), &session, "/keys").await;
    assert_eq!(
        elsewhere,
        (303, "/login?ended=1&next=%2Fkeys".to_owned()),
        "the cookie used outside the key's networks"
    );
    plane.stop().await;
}
