//! Identities: the IdentityService (input rules, isolation, deletion with
//! keys), keys filtered by identity, and the limits an identity shares
//! across its keys — enforced by sidecars without a round trip per check
//! (credits, local and global rate limits, allow-lists, the identity
//! passed upstream) and by VerifyApiKey.

use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync;
use keyplane_tests::{
    Authed, Backend, TestControlPlane, TestSidecar, assert_invalid_field, both_backends, eventually, random_org,
};
use tonic::Code;

both_backends!(
    identity_lifecycle_and_isolation,
    sidecars_enforce_an_identitys_limits_across_its_keys,
    verify_api_key_and_leases_use_both_budgets
);

type Identities = pb::identity_service_client::IdentityServiceClient<Authed>;
type Keys = pb::api_key_service_client::ApiKeyServiceClient<Authed>;

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
}

fn minute_limit(requests: u32, scope: pb::RateLimitScope) -> pb::RateLimit {
    pb::RateLimit { requests, window: Some(prost_types::Duration { seconds: 60, nanos: 0 }), scope: scope.into() }
}

async fn create_identity(identities: &mut Identities, request: pb::CreateIdentityRequest) -> pb::Identity {
    identities.create_identity(request).await.expect("create identity").into_inner().identity.expect("identity")
}

async fn get_identity(identities: &mut Identities, org: &str, id: &str) -> pb::Identity {
    let request = pb::GetIdentityRequest { org_id: org.to_owned(), id: id.to_owned(), ..Default::default() };
    identities.get_identity(request).await.expect("get identity").into_inner().identity.expect("identity")
}

/// A key of `identity` (with `credits`, if any): (id, token).
async fn key_of(keys: &mut Keys, org: &str, identity: &str, credits: Option<u64>) -> (String, String) {
    let request = pb::CreateApiKeyRequest {
        org_id: org.to_owned(),
        name: "customer key".into(),
        identity_id: identity.to_owned(),
        credits: credits.map(|remaining| pb::Credits { remaining, refill: None, low_alert: None }),
        ..Default::default()
    };
    let created = keys.create_api_key(request).await.expect("create key").into_inner();
    (created.api_key.expect("key").id, created.token)
}

async fn key_credits(keys: &mut Keys, org: &str, id: &str) -> u64 {
    let request = pb::GetApiKeyRequest { org_id: org.to_owned(), id: id.to_owned() };
    keys.get_api_key(request).await.expect("get").into_inner().api_key.expect("key").credits.expect("credits").remaining
}

async fn identity_lifecycle_and_isolation(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let (org, other_org) = (random_org(), random_org());
    let mut identities = plane.identities(&plane.root_token).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let new = |external_id: &str| pb::CreateIdentityRequest {
        org_id: org.clone(),
        external_id: external_id.to_owned(),
        ..Default::default()
    };
    let acme = create_identity(
        &mut identities,
        pb::CreateIdentityRequest {
            metadata: keyplane_control_plane::grpc::convert::json_to_struct(&serde_json::json!({"plan": "pro"})),
            rate_limit: Some(minute_limit(100, pb::RateLimitScope::Global)),
            allowed_cidrs: vec!["10.1.2.3/8".into()],
            credits: Some(pb::Credits { remaining: 500, refill: None, low_alert: None }),
            ..new("cust_acme")
        },
    )
    .await;
    assert!(acme.id.starts_with("idn_"), "{}", acme.id);
    assert_eq!(acme.allowed_cidrs, vec!["10.0.0.0/8"], "stored canonical");
    assert_eq!(acme.credits.as_ref().map(|c| c.remaining), Some(500));
    let globex = create_identity(&mut identities, new("cust_globex")).await;

    // Bad input names its field; an external id is unique in its org only.
    let refused = identities.create_identity(new("")).await.expect_err("empty external id");
    assert_invalid_field(&refused, "external_id");
    let bad = pb::CreateIdentityRequest { allowed_cidrs: vec!["10.0.0.0/33".into()], ..new("x") };
    assert_invalid_field(&identities.create_identity(bad).await.expect_err("bad cidr"), "allowed_cidrs[0]");
    let bad = pb::CreateIdentityRequest { rate_limit: Some(minute_limit(0, pb::RateLimitScope::Local)), ..new("x") };
    assert_invalid_field(&identities.create_identity(bad).await.expect_err("zero"), "rate_limit.requests");
    let taken = identities.create_identity(new("cust_acme")).await.expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let elsewhere = pb::CreateIdentityRequest { org_id: other_org.clone(), ..new("cust_acme") };
    let foreign = create_identity(&mut identities, elsewhere).await;

    // Get by id or by external id; list with a prefix, page by page.
    assert_eq!(get_identity(&mut identities, &org, &acme.id).await, acme);
    let by_external =
        pb::GetIdentityRequest { org_id: org.clone(), external_id: "cust_acme".into(), ..Default::default() };
    let found = identities.get_identity(by_external).await.expect("by external id").into_inner().identity;
    assert_eq!(found.map(|i| i.id), Some(acme.id.clone()));
    let neither = pb::GetIdentityRequest { org_id: org.clone(), ..Default::default() };
    assert_invalid_field(&identities.get_identity(neither).await.expect_err("neither"), "id");
    let list = |page_token: String| pb::ListIdentitiesRequest {
        org_id: org.clone(),
        page_size: 1,
        page_token,
        external_id_prefix: "cust_".into(),
    };
    let first = identities.list_identities(list(String::new())).await.expect("list").into_inner();
    let second = identities.list_identities(list(first.next_page_token.clone())).await.expect("list").into_inner();
    let listed: Vec<_> = first.identities.iter().chain(&second.identities).map(|i| i.id.clone()).collect();
    assert_eq!(listed, vec![acme.id.clone(), globex.id.clone()]);

    // Keys belong to an identity of their own org, and are listed by it.
    let (acme_key, _) = key_of(&mut keys, &org, &acme.id, None).await;
    let (_, _) = key_of(&mut keys, &org, &globex.id, None).await;
    let foreign_identity = pb::CreateApiKeyRequest {
        org_id: org.clone(),
        name: "k".into(),
        identity_id: foreign.id.clone(),
        ..Default::default()
    };
    assert_invalid_field(&keys.create_api_key(foreign_identity).await.expect_err("foreign"), "identity_id");
    let of_acme = pb::ListApiKeysRequest { org_id: org.clone(), identity_id: acme.id.clone(), ..Default::default() };
    let listed = keys.list_api_keys(of_acme.clone()).await.expect("list").into_inner().api_keys;
    assert_eq!(
        listed.iter().map(|k| (k.id.as_str(), k.identity_id.as_str())).collect::<Vec<_>>(),
        [(acme_key.as_str(), acme.id.as_str())]
    );
    let move_key = |identity: &str| pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: acme_key.clone(),
        update: Some(pb::ApiKeyUpdate { identity_id: identity.to_owned(), ..Default::default() }),
        update_mask: mask(&["identity_id"]),
    };
    let refused = keys.update_api_key(move_key(&foreign.id)).await.expect_err("foreign");
    assert_invalid_field(&refused, "update.identity_id");
    let detached = keys.update_api_key(move_key("")).await.expect("detach").into_inner().api_key.expect("key");
    assert_eq!(detached.identity_id, "");
    keys.update_api_key(move_key(&acme.id)).await.expect("attach again");

    // Updates: named fields only, audited; a taken external id is refused.
    let update = |update: pb::IdentityUpdate, paths: &[&str]| pb::UpdateIdentityRequest {
        org_id: org.clone(),
        id: acme.id.clone(),
        update: Some(update),
        update_mask: mask(paths),
    };
    let changed = identities
        .update_identity(update(
            pb::IdentityUpdate {
                external_id: "cust_acme_inc".into(),
                credits: Some(pb::CreditsChange { change: Some(pb::credits_change::Change::Subtract(100)) }),
                ..Default::default()
            },
            &["external_id", "credits", "allowed_cidrs"],
        ))
        .await
        .expect("update")
        .into_inner()
        .identity
        .expect("identity");
    assert_eq!(changed.external_id, "cust_acme_inc");
    assert_eq!(changed.credits.map(|c| c.remaining), Some(400));
    assert!(changed.allowed_cidrs.is_empty(), "named and unset: cleared");
    assert_eq!(changed.rate_limit, acme.rate_limit, "not named: kept");
    let taken =
        update(pb::IdentityUpdate { external_id: "cust_globex".into(), ..Default::default() }, &["external_id"]);
    assert_eq!(identities.update_identity(taken).await.expect_err("taken").code(), Code::AlreadyExists);
    let nothing = update(pb::IdentityUpdate::default(), &[]);
    assert_invalid_field(&identities.update_identity(nothing).await.expect_err("no field"), "update_mask");
    let unknown = update(pb::IdentityUpdate::default(), &["org_id"]);
    assert_invalid_field(&identities.update_identity(unknown).await.expect_err("unknown field"), "update_mask");

    // Another org sees none of it: not found, as for keys.
    let (_, outsider) = plane.create_key(&other_org, &["keyplane:keys:write", "keyplane:keys:read"]).await;
    let mut outsider = plane.identities(&outsider).await;
    let peek = pb::GetIdentityRequest { org_id: String::new(), id: acme.id.clone(), ..Default::default() };
    assert_eq!(outsider.get_identity(peek).await.expect_err("foreign").code(), Code::NotFound);
    let listed = outsider.list_identities(pb::ListIdentitiesRequest::default()).await.expect("list").into_inner();
    assert_eq!(listed.identities.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), vec![foreign.id.clone()]);
    let poke = pb::UpdateIdentityRequest {
        id: acme.id.clone(),
        update: Some(pb::IdentityUpdate { external_id: "mine".into(), ..Default::default() }),
        update_mask: mask(&["external_id"]),
        ..Default::default()
    };
    assert_eq!(outsider.update_identity(poke).await.expect_err("foreign").code(), Code::NotFound);
    let delete =
        |id: &str, revoke_keys| pb::DeleteIdentityRequest { org_id: String::new(), id: id.to_owned(), revoke_keys };
    let refused = outsider.delete_identity(delete(&acme.id, true)).await.expect_err("foreign");
    assert_eq!(refused.code(), Code::NotFound);
    let (_, reader) = plane.create_key(&org, &["keyplane:keys:read"]).await;
    let create = plane.identities(&reader).await.create_identity(new("by_reader")).await;
    assert_eq!(create.expect_err("read only").code(), Code::PermissionDenied);

    // Deletion is refused while the identity has active keys, unless they go with it.
    let delete = |revoke_keys| pb::DeleteIdentityRequest { org_id: org.clone(), id: acme.id.clone(), revoke_keys };
    let refused = identities.delete_identity(delete(false)).await.expect_err("has keys");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let deleted = identities.delete_identity(delete(true)).await.expect("delete").into_inner();
    assert_eq!(deleted.revoked_key_ids, vec![acme_key.clone()]);
    let key = keys
        .get_api_key(pb::GetApiKeyRequest { org_id: org.clone(), id: acme_key.clone() })
        .await
        .expect("get")
        .into_inner()
        .api_key
        .expect("key");
    assert_eq!((key.status(), key.identity_id.as_str()), (pb::ApiKeyStatus::Revoked, ""), "revoked and detached");
    let gone = pb::GetIdentityRequest { org_id: org.clone(), id: acme.id.clone(), ..Default::default() };
    assert_eq!(identities.get_identity(gone).await.expect_err("deleted").code(), Code::NotFound);
    for action in ["identity.created", "identity.updated", "identity.deleted"] {
        let events = plane.audit_events(&org, action).await;
        assert!(events.iter().any(|e| e.target_id == acme.id), "{action} audited");
    }
    plane.stop().await;
}

/// One forward-auth check with `token` from loopback: (status, the
/// identity passed upstream when allowed, else the reason refused).
async fn check(sidecar: &TestSidecar, token: &str) -> (u16, String) {
    let url = format!("http://{}/check", sidecar.http_addr);
    let response = sidecar.http.get(url).bearer_auth(token).send().await.expect("check");
    let status = response.status().as_u16();
    if status == 200 {
        let identity = response.headers().get("x-keyplane-identity").and_then(|v| v.to_str().ok());
        return (status, identity.unwrap_or_default().to_owned());
    }
    let body: serde_json::Value = response.json().await.expect("json denial");
    (status, body["error"].as_str().unwrap_or_default().to_owned())
}

async fn sidecars_enforce_an_identitys_limits_across_its_keys(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let replica = plane.replica().await;
    let org = random_org();
    let mut identities = plane.identities(&plane.root_token).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let sidecars = [TestSidecar::start(&plane, |_| {}).await, TestSidecar::start(&replica, |_| {}).await];

    // Credits shared by two keys, spent through two sidecars on two replicas.
    let new = |external_id: &str| pb::CreateIdentityRequest {
        org_id: org.clone(),
        external_id: external_id.to_owned(),
        ..Default::default()
    };
    let shared = pb::CreateIdentityRequest {
        credits: Some(pb::Credits { remaining: 60, refill: None, low_alert: None }),
        ..new("metered")
    };
    let metered = create_identity(&mut identities, shared).await;
    let (_, first) = key_of(&mut keys, &org, &metered.id, None).await;
    let (_, second) = key_of(&mut keys, &org, &metered.id, None).await;
    let mut allowed = 0;
    for round in 0..50 {
        for (sidecar, token) in [(&sidecars[0], &first), (&sidecars[1], &second)] {
            let (status, detail) = check(sidecar, token).await;
            match status {
                200 => {
                    allowed += 1;
                    assert_eq!(detail, "metered", "the identity is passed upstream");
                }
                429 => assert_eq!(detail, "credits_exhausted", "round {round}"),
                other => panic!("status {other}: {detail}"),
            }
        }
    }
    assert!((1..=60).contains(&allowed), "{allowed} allowed of 60 shared credits");

    // A rate limit shared by the keys: local (per sidecar), then global.
    let limited =
        pb::CreateIdentityRequest { rate_limit: Some(minute_limit(5, pb::RateLimitScope::Local)), ..new("limited") };
    let limited = create_identity(&mut identities, limited).await;
    let (_, one) = key_of(&mut keys, &org, &limited.id, None).await;
    let (_, two) = key_of(&mut keys, &org, &limited.id, None).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        for token in [&one, &two] {
            statuses.push(check(&sidecars[0], token).await.0);
        }
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(check(&sidecars[0], &one).await, (429, "rate_limited".into()));
    let global = pb::UpdateIdentityRequest {
        org_id: org.clone(),
        id: limited.id.clone(),
        update: Some(pb::IdentityUpdate {
            rate_limit: Some(minute_limit(8, pb::RateLimitScope::Global)),
            ..Default::default()
        }),
        update_mask: mask(&["rate_limit"]),
    };
    identities.update_identity(global).await.expect("global");
    // The update reaches both sidecars through the key-event stream; then
    // the budget is shared: at most 8 per window over both (the window may
    // turn over once during the loop, so at most 16).
    let mut allowed = 0;
    eventually(|| check(&sidecars[1], &two), |(status, _)| *status == 200).await;
    for _ in 0..20 {
        for (sidecar, token) in [(&sidecars[0], &one), (&sidecars[1], &two)] {
            allowed += u32::from(check(sidecar, token).await.0 == 200);
        }
    }
    assert!(allowed <= 16, "{allowed} allowed with a global limit of 8 per minute");

    // The identity's allow-list applies to all its keys, as soon as it changes.
    let fence = |cidrs: &[&str]| pb::UpdateIdentityRequest {
        org_id: org.clone(),
        id: metered.id.clone(),
        update: Some(pb::IdentityUpdate {
            allowed_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
            credits: Some(pb::CreditsChange { change: Some(pb::credits_change::Change::Set(1000)) }),
            ..Default::default()
        }),
        update_mask: mask(&["allowed_cidrs", "credits"]),
    };
    identities.update_identity(fence(&["10.0.0.0/8"])).await.expect("fence");
    for (sidecar, token) in [(&sidecars[0], &first), (&sidecars[1], &second)] {
        eventually(|| check(sidecar, token), |answer| *answer == (403, "ip_not_allowed".into())).await;
    }
    identities.update_identity(fence(&["127.0.0.0/8", "::1/128"])).await.expect("open");
    for (sidecar, token) in [(&sidecars[0], &first), (&sidecars[1], &second)] {
        eventually(|| check(sidecar, token), |(status, _)| *status == 200).await;
    }

    // A key with credits of its own under an identity with fewer: the
    // identity refuses first, and the key's credits spent for those
    // refused checks are put back.
    let scarce = pb::CreateIdentityRequest {
        credits: Some(pb::Credits { remaining: 5, refill: None, low_alert: None }),
        ..new("scarce")
    };
    let scarce = create_identity(&mut identities, scarce).await;
    let (rich, rich_token) = key_of(&mut keys, &org, &scarce.id, Some(100)).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(check(&sidecars[0], &rich_token).await.0);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    let [first_sidecar, second_sidecar] = sidecars;
    first_sidecar.stop().await;
    second_sidecar.stop().await;
    assert_eq!(key_credits(&mut keys, &org, &rich).await, 95, "the key paid for allowed checks only");
    let scarce = get_identity(&mut identities, &org, &scarce.id).await;
    assert_eq!(scarce.credits.map(|c| c.remaining), Some(0));
    replica.stop().await;
    plane.stop().await;
}

async fn verify_api_key_and_leases_use_both_budgets(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let org = random_org();
    let mut identities = plane.identities(&plane.root_token).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let identity = create_identity(
        &mut identities,
        pb::CreateIdentityRequest {
            org_id: org.clone(),
            external_id: "user_42".into(),
            credits: Some(pb::Credits { remaining: 2, refill: None, low_alert: None }),
            allowed_cidrs: vec!["192.0.2.0/24".into()],
            rate_limit: Some(minute_limit(10, pb::RateLimitScope::Global)),
            ..Default::default()
        },
    )
    .await;
    let (id, token) = key_of(&mut keys, &org, &identity.id, Some(10)).await;
    let verify = |client: &str| pb::VerifyApiKeyRequest {
        token: token.clone(),
        client_address: client.to_owned(),
        ..Default::default()
    };

    // The identity's allow-list, then both budgets: all or nothing.
    let outside = keys.verify_api_key(verify("198.51.100.1")).await.expect("verify").into_inner();
    assert_eq!(outside.failure(), pb::VerifyFailure::IpNotAllowed);
    let allowed = keys.verify_api_key(verify("192.0.2.7")).await.expect("verify").into_inner();
    assert!(allowed.valid, "{allowed:?}");
    let principal = allowed.principal.expect("principal");
    let named = principal.identity.expect("identity");
    assert_eq!(
        (named.id.as_str(), named.external_id.as_str(), named.has_credits),
        (identity.id.as_str(), "user_42", true)
    );
    assert!(keys.verify_api_key(verify("192.0.2.7")).await.expect("verify").into_inner().valid);
    let exhausted = keys.verify_api_key(verify("192.0.2.7")).await.expect("verify").into_inner();
    assert_eq!(exhausted.failure(), pb::VerifyFailure::CreditsExhausted);
    assert_eq!(key_credits(&mut keys, &org, &id).await, 8, "nothing spent from the key when the identity refused");

    // An identity's refill restores service to its keys (audited as the system).
    let refill = pb::UpdateIdentityRequest {
        org_id: org.clone(),
        id: identity.id.clone(),
        update: Some(pb::IdentityUpdate {
            credit_refill: Some(pb::CreditRefill {
                amount: 1,
                period: Some(pb::credit_refill::Period::Every(prost_types::Duration { seconds: 1, nanos: 0 })),
                next_refill_at: None,
            }),
            ..Default::default()
        }),
        update_mask: mask(&["credit_refill"]),
    };
    identities.update_identity(refill).await.expect("refill");
    let verified = || async { keys.clone().verify_api_key(verify("192.0.2.7")).await.expect("verify").into_inner() };
    eventually(verified, |answer| answer.valid).await;
    let refilled = plane.audit_events(&org, "identity.credits_refilled").await;
    assert!(refilled.iter().any(|e| e.target_id == identity.id && e.actor_type == "system"), "{refilled:?}");
    let no_refill = pb::UpdateIdentityRequest {
        org_id: org.clone(),
        id: identity.id.clone(),
        update: Some(pb::IdentityUpdate {
            credits: Some(pb::CreditsChange { change: Some(pb::credits_change::Change::Set(0)) }),
            ..Default::default()
        }),
        update_mask: mask(&["credit_refill", "credits"]),
    };
    identities.update_identity(no_refill).await.expect("no refill");

    // Sidecars lease an identity's budgets under its id.
    let (_, sidecar) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let mut sync = plane.key_sync(&sidecar).await;
    let add = pb::UpdateIdentityRequest {
        org_id: org.clone(),
        id: identity.id.clone(),
        update: Some(pb::IdentityUpdate {
            credits: Some(pb::CreditsChange { change: Some(pb::credits_change::Change::Add(40)) }),
            ..Default::default()
        }),
        update_mask: mask(&["credits"]),
    };
    identities.update_identity(add).await.expect("add");
    let lease = sync::LeaseCreditsRequest { key_id: identity.id.clone(), requested: 100, at_least: 1 };
    let granted = sync.lease_credits(lease).await.expect("lease").into_inner();
    assert_eq!(granted.granted, 10, "a quarter of 40");
    let remaining = get_identity(&mut identities, &org, &identity.id).await.credits.map(|c| c.remaining);
    assert_eq!(remaining, Some(30));
    let returned = sync::ReturnCreditsRequest { lease_id: granted.lease_id, unused: 10 };
    assert_eq!(sync.return_credits(returned).await.expect("return").into_inner().returned, 10);
    let requests = sync::LeaseRequestsRequest { key_id: identity.id.clone(), requested: 100 };
    assert_eq!(sync.lease_requests(requests).await.expect("lease requests").into_inner().granted, 3);
    let absent = sync::LeaseCreditsRequest { key_id: "idn_absent".into(), requested: 1, at_least: 1 };
    assert_eq!(sync.lease_credits(absent).await.expect_err("absent").code(), Code::NotFound);
    plane.stop().await;
}
