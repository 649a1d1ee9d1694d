//! Roles and permissions: the RoleService (input rules, isolation, deletion
//! of a role in use, audit), permission queries in VerifyApiKey over a
//! key's scopes, roles and identity, and sidecars deciding them from their
//! cache (forward-auth routes, the ext_authz context extension) and
//! following role changes through the key-event stream.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{
    Authed, Backend, TestControlPlane, TestSidecar, assert_invalid_field, both_backends, ext_authz_request, random_org,
    start_or_skip,
};
use tonic::Code;
use tonic_types::StatusExt;

both_backends!(
    roles_lifecycle_rules_and_audit,
    imported_keys_hold_the_roles_named,
    verify_api_key_evaluates_permission_queries,
    sidecars_decide_permissions_and_follow_role_changes
);

type Roles = pb::role_service_client::RoleServiceClient<Authed>;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

async fn create_role(roles: &mut Roles, org: &str, name: &str, permissions: &[&str]) -> pb::Role {
    let request = pb::CreateRoleRequest {
        org_id: org.to_owned(),
        name: name.to_owned(),
        description: format!("{name} staff"),
        permissions: strings(permissions),
    };
    roles.create_role(request).await.expect("create role").into_inner().role.expect("role")
}

async fn set_roles(roles: &mut Roles, org: &str, holder: &str, names: &[&str]) -> Vec<pb::RoleRef> {
    let request = pb::SetRolesRequest { org_id: org.to_owned(), holder_id: holder.to_owned(), roles: strings(names) };
    roles.set_roles(request).await.expect("set roles").into_inner().roles
}

async fn create_identity(plane: &TestControlPlane, org: &str) -> pb::Identity {
    let request =
        pb::CreateIdentityRequest { org_id: org.to_owned(), external_id: "acme".into(), ..Default::default() };
    let created = plane.identities(&plane.root_token).await.create_identity(request).await.expect("identity");
    created.into_inner().identity.expect("identity")
}

async fn roles_lifecycle_rules_and_audit(backend: Backend) {
    let plane = start_or_skip!(backend);
    let (org, other_org) = (random_org(), random_org());
    let mut roles = plane.roles(&plane.root_token).await;
    let support = create_role(&mut roles, &org, "support", &["tickets.write", "tickets.read", "tickets.read"]).await;
    assert!(support.id.starts_with("rol_"), "{}", support.id);
    assert_eq!(support.permissions, ["tickets.read", "tickets.write"], "sorted, without repeats");

    // Every bad field is named at once.
    let bad = pb::CreateRoleRequest {
        org_id: org.clone(),
        name: "rol_lookalike".into(),
        description: "x".repeat(501),
        permissions: strings(&["orders.read", "keyplane:admin", "billing*", "a..b"]),
    };
    let status = roles.create_role(bad).await.expect_err("bad role");
    for field in ["name", "description", "permissions[1]", "permissions[2]", "permissions[3]"] {
        assert_invalid_field(&status, field);
    }
    let empty = pb::CreateRoleRequest { org_id: org.clone(), name: "empty".into(), ..Default::default() };
    assert_invalid_field(&roles.create_role(empty).await.expect_err("no permissions"), "permissions");
    let taken = pb::CreateRoleRequest {
        org_id: org.clone(),
        name: "support".into(),
        permissions: strings(&["a"]),
        ..Default::default()
    };
    assert_eq!(roles.create_role(taken).await.expect_err("taken").code(), Code::AlreadyExists);

    // Get by name, list in name order with paging, update by mask.
    let billing = create_role(&mut roles, &org, "billing", &["billing.*"]).await;
    let by_name = pb::GetRoleRequest { org_id: org.clone(), name: "support".into(), ..Default::default() };
    assert_eq!(roles.get_role(by_name).await.expect("get").into_inner().role.expect("role").id, support.id);
    let first = roles
        .list_roles(pb::ListRolesRequest { org_id: org.clone(), page_size: 1, page_token: String::new() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.roles[0].name, "billing");
    let second = roles
        .list_roles(pb::ListRolesRequest { org_id: org.clone(), page_size: 1, page_token: first.next_page_token })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(second.roles[0].name, "support");
    let update = pb::UpdateRoleRequest {
        org_id: org.clone(),
        id: support.id.clone(),
        update: Some(pb::RoleUpdate {
            name: "support-staff".into(),
            permissions: strings(&["tickets.*"]),
            ..Default::default()
        }),
        update_mask: mask(&["name", "permissions"]),
    };
    let updated = roles.update_role(update).await.expect("update").into_inner().role.expect("role");
    assert_eq!((updated.name.as_str(), updated.permissions.clone()), ("support-staff", strings(&["tickets.*"])));
    assert_eq!(updated.description, "support staff", "fields not named stay");

    // Keys and identities hold roles; an unknown role is named.
    let (key, _) = plane.create_key(&org, &["orders.read"]).await;
    let identity = create_identity(&plane, &org).await;
    let held = set_roles(&mut roles, &org, &key.id, &["support-staff", &billing.id]).await;
    assert_eq!(held.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["billing", "support-staff"]);
    set_roles(&mut roles, &org, &identity.id, &["billing"]).await;
    let unknown =
        pb::SetRolesRequest { org_id: org.clone(), holder_id: key.id.clone(), roles: strings(&["billing", "nope"]) };
    assert_invalid_field(&roles.set_roles(unknown).await.expect_err("unknown role"), "roles[1]");

    // A role of another org is out of reach, and so are its keys.
    let (foreign_key, _) = plane.create_key(&other_org, &[]).await;
    let foreign =
        pb::SetRolesRequest { org_id: org.clone(), holder_id: foreign_key.id.clone(), roles: strings(&["billing"]) };
    assert_eq!(roles.set_roles(foreign).await.expect_err("foreign key").code(), Code::NotFound);
    let elsewhere = pb::GetRoleRequest { org_id: other_org.clone(), id: billing.id.clone(), ..Default::default() };
    assert_eq!(roles.get_role(elsewhere).await.expect_err("other org").code(), Code::NotFound);

    // A role in use is not deleted unless asked to detach it.
    let get = pb::GetRoleRequest { org_id: org.clone(), id: billing.id.clone(), ..Default::default() };
    assert_eq!(roles.get_role(get).await.expect("get").into_inner().role.expect("role").holders, 2);
    let delete = |detach| pb::DeleteRoleRequest { org_id: org.clone(), id: billing.id.clone(), detach };
    assert_eq!(roles.delete_role(delete(false)).await.expect_err("in use").code(), Code::FailedPrecondition);
    assert_eq!(roles.delete_role(delete(true)).await.expect("detach").into_inner().detached, 2);
    let effective = pb::GetEffectivePermissionsRequest { org_id: org.clone(), holder_id: key.id.clone() };
    let effective = roles.get_effective_permissions(effective).await.expect("effective").into_inner();
    assert_eq!(effective.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["support-staff"]);
    assert!(set_roles(&mut roles, &org, &key.id, &[]).await.is_empty(), "an empty list takes every role away");
    let effective = pb::GetEffectivePermissionsRequest { org_id: org.clone(), holder_id: key.id.clone() };
    let effective = roles.get_effective_permissions(effective).await.expect("effective").into_inner();
    assert!(effective.roles.is_empty() && effective.permissions.iter().all(|p| p.sources == ["scope"]));

    // Audited, with what changed and no more.
    for action in ["role.created", "role.updated", "role.deleted", "api_key.roles_set", "identity.roles_set"] {
        assert!(!plane.audit_events(&org, action).await.is_empty(), "{action} audited");
    }
    let deleted = &plane.audit_events(&org, "role.deleted").await[0];
    assert_eq!(deleted.target_id, billing.id);
    plane.stop().await;
}

async fn verify_api_key_evaluates_permission_queries(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let mut roles = plane.roles(&plane.root_token).await;
    create_role(&mut roles, &org, "billing", &["billing.*"]).await;
    create_role(&mut roles, &org, "support", &["tickets.write"]).await;
    let identity = create_identity(&plane, &org).await;
    let own = pb::SetIdentityPermissionsRequest {
        org_id: org.clone(),
        identity_id: identity.id.clone(),
        permissions: strings(&["reports.read", "reports.read"]),
    };
    assert_eq!(
        roles.set_identity_permissions(own).await.expect("permissions").into_inner().permissions,
        ["reports.read"]
    );
    let reserved = pb::SetIdentityPermissionsRequest {
        org_id: org.clone(),
        identity_id: identity.id.clone(),
        permissions: strings(&["keyplane:keys:write"]),
    };
    assert_invalid_field(&roles.set_identity_permissions(reserved).await.expect_err("reserved"), "permissions[0]");
    set_roles(&mut roles, &org, &identity.id, &["support"]).await;

    let mut keys = plane.keys(&plane.root_token).await;
    let created = keys
        .create_api_key(pb::CreateApiKeyRequest {
            org_id: org.clone(),
            name: "agent".into(),
            scopes: strings(&["orders.read"]),
            identity_id: identity.id.clone(),
            ..Default::default()
        })
        .await
        .expect("key")
        .into_inner();
    let (key, token) = (created.api_key.expect("key"), created.token);
    set_roles(&mut roles, &org, &key.id, &["billing"]).await;

    let verify = |query: &str| pb::VerifyApiKeyRequest {
        token: token.clone(),
        permission_query: query.to_owned(),
        ..Default::default()
    };
    for (query, valid) in [
        ("orders.read", true),
        ("billing.invoices.read AND orders.read", true),
        ("(orders.admin OR billing.refund) AND reports.read AND tickets.write", true),
        ("orders.admin", false),
        ("orders.read AND (reports.write OR tickets.read)", false),
        ("", true),
    ] {
        let answer = keys.verify_api_key(verify(query)).await.expect("verify").into_inner();
        assert_eq!(answer.valid, valid, "{query}");
        if !valid {
            assert_eq!(answer.failure, pb::VerifyFailure::MissingPermission as i32, "{query}");
        }
        let principal = answer.principal.expect("principal");
        assert_eq!(
            principal.permissions,
            ["billing.*", "orders.read", "reports.read", "tickets.write"],
            "every permission, sorted"
        );
        assert_eq!(principal.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["billing", "support"]);
    }
    // A rotation's new key holds the roles the old one held.
    let rotate = pb::RotateApiKeyRequest { org_id: org.clone(), id: key.id.clone(), ..Default::default() };
    let rotated = keys.rotate_api_key(rotate).await.expect("rotate").into_inner();
    let request = pb::VerifyApiKeyRequest {
        token: rotated.token,
        permission_query: "billing.refund AND tickets.write".into(),
        ..Default::default()
    };
    assert!(keys.verify_api_key(request).await.expect("verify").into_inner().valid, "the new key holds billing.*");

    // A query that does not parse says where.
    let status = keys.verify_api_key(verify("orders.read AND (billing.read")).await.expect_err("bad query");
    assert_invalid_field(&status, "permission_query");
    let details = status.get_error_details();
    let described = &details.bad_request().expect("details").field_violations[0].description;
    assert!(described.contains("position 29"), "{described}");

    let effective = pb::GetEffectivePermissionsRequest { org_id: org.clone(), holder_id: key.id.clone() };
    let effective = roles.get_effective_permissions(effective).await.expect("effective").into_inner();
    let sources: Vec<(String, Vec<String>)> = effective.permissions.into_iter().map(|p| (p.name, p.sources)).collect();
    assert_eq!(
        sources,
        [
            ("billing.*".to_owned(), strings(&["role:billing"])),
            ("orders.read".to_owned(), strings(&["scope"])),
            ("reports.read".to_owned(), strings(&["identity"])),
            ("tickets.write".to_owned(), strings(&["identity role:support"])),
        ]
    );
    plane.stop().await;
}

async fn imported_keys_hold_the_roles_named(backend: Backend) {
    use sha2::Digest;
    let plane = start_or_skip!(backend);
    let org = random_org();
    let mut roles = plane.roles(&plane.root_token).await;
    create_role(&mut roles, &org, "support", &["tickets.*"]).await;
    let token = format!("cc_live_{}", random_org());
    let digest: String = sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let record = |source: &str, names: &[&str]| pb::ImportedApiKey {
        source_id: source.to_owned(),
        hash: digest.clone(),
        hash_format: pb::ImportedHashFormat::Sha256Hex.into(),
        roles: strings(names),
        ..Default::default()
    };
    let request = pb::ImportApiKeysRequest {
        org_id: org.clone(),
        keys: vec![record("with-role", &["support"]), record("unknown-role", &["support", "nope"])],
        upgrade_on_use: false,
    };
    let mut keys = plane.keys(&plane.root_token).await;
    let answer = keys.import_api_keys(request).await.expect("import").into_inner();
    assert_eq!(answer.results[0].outcome, pb::ImportOutcome::Imported as i32);
    assert_eq!(
        (answer.results[1].outcome, answer.results[1].field.as_str()),
        (pb::ImportOutcome::Refused as i32, "keys[1].roles[1]")
    );
    let verify = pb::VerifyApiKeyRequest { token, permission_query: "tickets.write".into(), ..Default::default() };
    let verified = keys.verify_api_key(verify).await.expect("verify").into_inner();
    assert!(verified.valid, "{verified:?}");
    assert_eq!(verified.principal.expect("principal").roles[0].name, "support");
    plane.stop().await;
}

/// Polls a forward-auth check of `route` with `token` until it answers
/// `status` (bounded); how long it took.
async fn until_route_answers(sidecar: &TestSidecar, route: &str, token: &str, status: u16) -> Duration {
    let started = Instant::now();
    let client = reqwest::Client::new();
    loop {
        let answer = client
            .get(format!("http://{}/check/{route}", sidecar.http_addr))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .expect("check");
        if answer.status().as_u16() == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "/check/{route} never answered {status}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sidecars_decide_permissions_and_follow_role_changes(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |config| {
        config.route_permissions = vec![
            keyplane_sidecar::routes::parse("orders=orders.read OR orders.admin").expect("route"),
            keyplane_sidecar::routes::parse("refunds=orders.admin AND billing.refund").expect("route"),
        ];
    })
    .await;
    let org = random_org();
    let mut roles = plane.roles(&plane.root_token).await;
    let clerk = create_role(&mut roles, &org, "clerk", &["orders.read"]).await;
    let (key, token) = plane.create_key(&org, &[]).await;
    let (_, scoped) = plane.create_key(&org, &["orders.admin", "billing.*"]).await;

    // Scopes are permissions; a route without a query needs none.
    until_route_answers(&sidecar, "orders", &token, 403).await;
    until_route_answers(&sidecar, "anything-else", &token, 200).await;
    until_route_answers(&sidecar, "refunds", &scoped, 200).await;
    until_route_answers(&sidecar, "orders/42/items", &scoped, 200).await;

    // Granting a role reaches the sidecar through the stream, and so does changing the role.
    set_roles(&mut roles, &org, &key.id, &["clerk"]).await;
    until_route_answers(&sidecar, "orders", &token, 200).await;
    let update = pb::UpdateRoleRequest {
        org_id: org.clone(),
        id: clerk.id.clone(),
        update: Some(pb::RoleUpdate { permissions: strings(&["orders.list"]), ..Default::default() }),
        update_mask: mask(&["permissions"]),
    };
    roles.update_role(update).await.expect("update role");
    let took = until_route_answers(&sidecar, "orders", &token, 403).await;
    assert!(took < Duration::from_secs(5), "a role change took {took:?}");

    // ext_authz: the route's context extension, AND-ed with nothing the client sends.
    let mut envoy = AuthorizationClient::connect(format!("http://{}", sidecar.grpc_addr)).await.expect("connect");
    let bearer = format!("Bearer {scoped}");
    for (context, expected) in [
        (vec![("permissions", "orders.admin AND billing.refund")], 0),
        (vec![("permissions", "orders.admin AND tickets.read")], 7),
        (vec![("permissions", "orders.admin AND (")], 3),
        (vec![], 0),
    ] {
        let request = ext_authz_request(&[("authorization", &bearer), ("permissions", "nothing.here")], &context);
        let answer = envoy.check(request).await.expect("check").into_inner();
        assert_eq!(answer.status.expect("status").code, expected, "{context:?}");
    }

    // Taking the role away (by deleting it) is as fast.
    let update = pb::UpdateRoleRequest {
        org_id: org.clone(),
        id: clerk.id.clone(),
        update: Some(pb::RoleUpdate { permissions: strings(&["orders.read"]), ..Default::default() }),
        update_mask: mask(&["permissions"]),
    };
    roles.update_role(update).await.expect("update role");
    until_route_answers(&sidecar, "orders", &token, 200).await;
    roles
        .delete_role(pb::DeleteRoleRequest { org_id: org.clone(), id: clerk.id.clone(), detach: true })
        .await
        .expect("delete");
    until_route_answers(&sidecar, "orders", &token, 403).await;
    sidecar.stop().await;
    plane.stop().await;
}
