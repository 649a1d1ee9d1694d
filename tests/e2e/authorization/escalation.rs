//! Nothing yields a token or widens a key beyond what the caller holds:
//! the findings one by one, then random sequences of key and identity
//! changes by credentials with random powers.

use std::collections::BTreeSet;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, TestControlPlane, both_backends, random_org, start_or_skip};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tonic::Code;

both_backends!(rotate_reveal_and_update_never_yield_a_stronger_key, random_changes_never_exceed_the_caller);

const DAY: i64 = 24 * 3600;

fn rotate(org: &str, id: &str, grace_seconds: i64) -> pb::RotateApiKeyRequest {
    pb::RotateApiKeyRequest {
        org_id: org.into(),
        id: id.into(),
        grace_period: Some(prost_types::Duration { seconds: grace_seconds, nanos: 0 }),
    }
}

fn reveal(org: &str, id: &str) -> pb::RevealApiKeyRequest {
    pb::RevealApiKeyRequest { org_id: org.into(), id: id.into() }
}

async fn create(plane: &TestControlPlane, org: &str, scopes: &[&str], identity: &str) -> pb::CreateApiKeyResponse {
    let request = pb::CreateApiKeyRequest {
        org_id: org.into(),
        name: "k".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        recoverable: true,
        identity_id: identity.into(),
        ..Default::default()
    };
    plane.keys(&plane.root_token).await.create_api_key(request).await.expect("create").into_inner()
}

async fn rotate_reveal_and_update_never_yield_a_stronger_key(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let admin = create(&plane, &org, &["keyplane:admin"], "").await;
    let admin_id = admin.api_key.expect("key").id;
    let writer = create(&plane, &org, &["keyplane:keys:read", "keyplane:keys:write", "keyplane:keys:reveal"], "").await;
    let mut as_writer = plane.keys(&writer.token).await;

    // Finding 1: rotating the org's admin key with a 30-day grace.
    let refused = as_writer.rotate_api_key(rotate(&org, &admin_id, 30 * DAY)).await.expect_err("rotate admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Finding 2: revealing it.
    let refused = as_writer.reveal_api_key(reveal(&org, &admin_id)).await.expect_err("reveal admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Widening it some other way: moving its expiry, lifting its allow-list.
    let update = pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: admin_id.clone(),
        update: Some(pb::ApiKeyUpdate { name: "mine now".into(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["name".into(), "allowed_cidrs".into()] }),
    };
    assert_eq!(as_writer.update_api_key(update).await.expect_err("update admin").code(), Code::PermissionDenied);
    // The writer still manages keys within its own powers.
    let plain = create(&plane, &org, &["orders:read", "keyplane:keys:read"], "").await.api_key.expect("key");
    let rotated = as_writer.rotate_api_key(rotate(&org, &plain.id, 60)).await.expect("rotate own-powered key");
    assert!(!rotated.into_inner().token.is_empty());
    // The owner of the powers may.
    let mut as_admin = plane.keys(&admin.token).await;
    as_admin.reveal_api_key(reveal(&org, &admin_id)).await.expect("an admin reveals its own kind");

    // The same across orgs: a platform key writer and the platform admin key.
    let platform_admin = create(&plane, "keyplane", &["keyplane:admin"], "").await.api_key.expect("key");
    let platform_writer = create(&plane, "keyplane", &["keyplane:keys:read", "keyplane:keys:write"], "").await;
    let mut as_platform_writer = plane.keys(&platform_writer.token).await;
    let refused = as_platform_writer.rotate_api_key(rotate("keyplane", &platform_admin.id, 30 * DAY)).await;
    assert_eq!(refused.expect_err("rotate platform admin").code(), Code::PermissionDenied);
    let refused = as_platform_writer.rotate_api_key(rotate(&org, &admin_id, 0)).await;
    assert_eq!(refused.expect_err("rotate another org's admin").code(), Code::PermissionDenied);

    // Nothing changed: no rotation, the admin key untouched.
    let mut root = plane.keys(&plane.root_token).await;
    let after = root.get_api_key(pb::GetApiKeyRequest { org_id: org.clone(), id: admin_id.clone() }).await;
    let after = after.expect("get").into_inner().api_key.expect("key");
    assert_eq!((after.name.as_str(), after.expires_at), ("k", None));
    plane.stop().await;
}

/// Keyplane scopes a caller's key may hold in the sequences.
const POWERS: [&str; 6] = [
    "keyplane:keys:read",
    "keyplane:keys:write",
    "keyplane:keys:reveal",
    "keyplane:webhooks:write",
    "keyplane:audit:read",
    "keyplane:admin",
];

fn pick(rng: &mut StdRng, from: &[&'static str], chance: f64) -> Vec<&'static str> {
    from.iter().copied().filter(|_| rng.random_bool(chance)).collect()
}

async fn random_changes_never_exceed_the_caller(backend: Backend) {
    let plane = start_or_skip!(backend);
    let seeds: Vec<u64> = match std::env::var("KEYPLANE_TEST_SEED") {
        Ok(seed) => vec![seed.parse().expect("KEYPLANE_TEST_SEED is a number")],
        Err(_) => (1..=6).collect(),
    };
    for seed in seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let org = random_org();
        // The caller: keys read/write always, the rest at random (never admin,
        // which holds everything).
        let mut held = vec!["keyplane:keys:read", "keyplane:keys:write"];
        held.extend(pick(&mut rng, &POWERS[2..5], 0.5));
        let caller = create(&plane, &org, &held, "").await;
        let held: BTreeSet<String> = held.iter().map(|s| (*s).to_owned()).collect();
        let request = pb::CreateIdentityRequest {
            org_id: org.clone(),
            external_id: "customer".into(),
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        let mut identities = plane.identities(&plane.root_token).await;
        let identity = identities.create_identity(request).await.expect("identity").into_inner().identity;
        let identity = identity.expect("identity").id;
        let mut pool = Vec::new();
        for _ in 0..6 {
            let scopes = pick(&mut rng, &POWERS, 0.35);
            let attach = if rng.random_bool(0.5) { identity.as_str() } else { "" };
            pool.push(create(&plane, &org, &scopes, attach).await.api_key.expect("key").id);
        }
        let mut keys = plane.keys(&caller.token).await;
        let mut root = plane.keys(&plane.root_token).await;
        let mut history = Vec::new();
        for _ in 0..25 {
            let id = pool.choose(&mut rng).expect("pool").clone();
            let step = rng.random_range(0..5);
            let (what, token) = match step {
                0 => {
                    let scopes: Vec<String> = pick(&mut rng, &POWERS, 0.3).into_iter().map(str::to_owned).collect();
                    let request = pb::CreateApiKeyRequest {
                        org_id: org.clone(),
                        name: "made".into(),
                        scopes: scopes.clone(),
                        ..Default::default()
                    };
                    let made = keys.create_api_key(request).await.ok().map(|r| r.into_inner());
                    if let Some(made) = &made {
                        pool.push(made.api_key.as_ref().expect("key").id.clone());
                    }
                    (format!("create {scopes:?}"), made.map(|m| m.token))
                }
                1 => {
                    let rotated = keys.rotate_api_key(rotate(&org, &id, rng.random_range(0..2) * 30 * DAY)).await;
                    let rotated = rotated.ok().map(|r| r.into_inner());
                    if let Some(rotated) = &rotated {
                        pool.push(rotated.api_key.as_ref().expect("key").id.clone());
                    }
                    (format!("rotate {id}"), rotated.map(|r| r.token))
                }
                2 => (
                    format!("reveal {id}"),
                    keys.reveal_api_key(reveal(&org, &id)).await.ok().map(|r| r.into_inner().token),
                ),
                3 => {
                    let scopes: Vec<String> = pick(&mut rng, &POWERS, 0.3).into_iter().map(str::to_owned).collect();
                    let (paths, update) = match rng.random_range(0..3) {
                        0 => (vec!["scopes"], pb::ApiKeyUpdate { scopes: scopes.clone(), ..Default::default() }),
                        1 => (vec!["allowed_cidrs", "expires_at"], pb::ApiKeyUpdate::default()),
                        _ => (vec!["identity_id"], pb::ApiKeyUpdate::default()),
                    };
                    let request = pb::UpdateApiKeyRequest {
                        org_id: org.clone(),
                        id: id.clone(),
                        update: Some(update),
                        update_mask: Some(prost_types::FieldMask {
                            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                        }),
                    };
                    let updated = keys.update_api_key(request).await.ok().and_then(|r| r.into_inner().api_key);
                    if let Some(key) = updated {
                        let scopes =
                            key.scopes.iter().filter(|s| s.starts_with("keyplane:")).cloned().collect::<BTreeSet<_>>();
                        assert!(
                            scopes.is_subset(&held),
                            "seed {seed}: update {paths:?} of {id} left it holding {scopes:?} by a caller holding {held:?}; history {history:#?}"
                        );
                    }
                    (format!("update {paths:?} of {id}"), None)
                }
                _ => {
                    let request = pb::UpdateIdentityRequest {
                        org_id: org.clone(),
                        id: identity.clone(),
                        update: Some(pb::IdentityUpdate::default()),
                        update_mask: Some(prost_types::FieldMask { paths: vec!["allowed_cidrs".into()] }),
                    };
                    if plane.identities(&caller.token).await.update_identity(request).await.is_ok() {
                        let listed =
                            root.list_api_keys(pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() });
                        for key in listed.await.expect("list").into_inner().api_keys {
                            if key.identity_id == identity && key.status == pb::ApiKeyStatus::Active as i32 {
                                let scopes = key
                                    .scopes
                                    .iter()
                                    .filter(|s| s.starts_with("keyplane:"))
                                    .cloned()
                                    .collect::<BTreeSet<_>>();
                                assert!(
                                    scopes.is_subset(&held),
                                    "seed {seed}: the identity's limits were lifted over {} holding {scopes:?} by a caller holding {held:?}; history {history:#?}",
                                    key.id
                                );
                            }
                        }
                    }
                    ("lift the identity's allow-list".to_owned(), None)
                }
            };
            history.push(what.clone());
            let Some(token) = token else { continue };
            // What the token really holds, as the control plane verifies it.
            let verified = root.verify_api_key(pb::VerifyApiKeyRequest { token, ..Default::default() }).await;
            let principal = verified.expect("verify").into_inner().principal.expect("a yielded token is valid");
            let scopes: BTreeSet<String> =
                principal.scopes.into_iter().filter(|s| s.starts_with("keyplane:")).collect();
            assert!(
                scopes.is_subset(&held),
                "seed {seed}: {what} yielded a token holding {scopes:?} to a caller holding {held:?}; history {history:#?}"
            );
        }
    }
    plane.stop().await;
}
