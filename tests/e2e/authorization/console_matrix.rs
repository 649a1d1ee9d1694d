//! Every state-changing console route (read from the router's source, so a
//! new one without a row fails) × every credential signed in to the
//! console, and a portal session: posted with the session's CSRF token and
//! nothing else, a refusal must be a 403 before any other check.

use std::collections::BTreeMap;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::{Backend, both_backends, random_org, start_or_skip};

use super::credentials::every_credential;
use super::table;

both_backends!(every_console_action_asks_the_one_decision);

/// Routes that are not actions of a session: signing in, opening a portal
/// link, signing out.
const NOT_ACTIONS: [&str; 3] = ["/login", "/portal/{token}", "/logout"];

/// The POST routes of `control-plane/src/console/mod.rs`.
fn post_routes() -> Vec<String> {
    let source = include_str!("../../../control-plane/src/console/mod.rs");
    let routes: Vec<String> = source
        .lines()
        .filter(|line| line.contains(".route(\"") && line.contains("post("))
        .filter_map(|line| line.split('"').nth(1).map(str::to_owned))
        .filter(|path| !NOT_ACTIONS.contains(&path.as_str()))
        .collect();
    assert!(routes.len() >= 18, "found {} console actions", routes.len());
    routes
}

async fn every_console_action_asks_the_one_decision(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let mut sessions = Vec::new();
    let mut columns = Vec::new();
    for (i, credential) in every_credential(&plane, &org, &random_org()).await.into_iter().enumerate() {
        // One person each, from their own address (sign-ins are throttled per address).
        let browser = ConsoleClient::from(plane.console_addr, std::net::Ipv4Addr::new(127, 0, 3, i as u8 + 1).into());
        browser.sign_in_to(&credential.token, &org).await;
        columns.push(credential.name);
        sessions.push(browser);
    }
    let mut webhooks = plane.webhooks(&plane.root_token).await;
    let request = pb::CreatePortalLinkRequest { org_id: org.clone(), ..Default::default() };
    let link = webhooks.create_portal_link(request).await.expect("portal link").into_inner().url;
    let portal = ConsoleClient::new(plane.console_addr);
    let opened = portal.open_portal(link.trim_start_matches(&format!("http://{}", plane.console_addr))).await;
    assert_eq!(opened.status, 303);
    columns.push("portal".into());
    sessions.push(portal);

    let mut seen = BTreeMap::new();
    for route in post_routes() {
        let path = route.replace("{id}", "none_such");
        let mut row = Vec::new();
        for (browser, name) in sessions.iter().zip(&columns) {
            // A page with the session's CSRF token (the portal's home is its webhooks).
            let home = if name == "portal" { "/webhooks" } else { "/org" };
            assert_eq!(browser.get(home).await.status, 200, "{name} is signed in");
            let answer = browser.post(&path, &[]).await;
            assert!(answer.status != 303 || !answer.location().starts_with("/login"), "{route} as {name}: signed out");
            row.push(answer.status != 403);
        }
        seen.insert(format!("POST {route}"), row);
    }
    table::assert_matches("Console", &columns, &seen);
    plane.stop().await;
}
