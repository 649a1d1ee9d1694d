//! The API-key lifecycle through every RPC.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, both_backends, random_org, start_or_skip, timestamp_in};
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;

both_backends!(full_lifecycle, rotation_grace_then_expiry, update_expiry_takes_effect, pagination_and_filters);

fn verify_request(token: &str) -> pb::VerifyApiKeyRequest {
    pb::VerifyApiKeyRequest { token: token.to_owned(), ..Default::default() }
}

async fn verify_failure(
    client: &mut pb::api_key_service_client::ApiKeyServiceClient<keyplane_tests::Authed>,
    request: pb::VerifyApiKeyRequest,
) -> pb::VerifyFailure {
    let response = client.verify_api_key(request).await.expect("verify").into_inner();
    assert_eq!(response.valid, response.failure == pb::VerifyFailure::Unspecified as i32);
    pb::VerifyFailure::try_from(response.failure).expect("known failure")
}

async fn full_lifecycle(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (_admin_key, admin) = plane.create_key("keyplane", &["keyplane:admin"]).await;
    let mut keys = plane.keys(&admin).await;

    let created = keys
        .create_api_key(pb::CreateApiKeyRequest {
            org_id: org.clone(),
            name: "orders service".into(),
            description: "reads orders".into(),
            environment: pb::Environment::Test as i32,
            scopes: vec!["orders:read".into(), "orders:write".into()],
            expiry: Some(pb::create_api_key_request::Expiry::Ttl(prost_types::Duration { seconds: 3600, nanos: 0 })),
            rate_limit: Some(pb::RateLimit {
                requests: 100,
                window: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                ..Default::default()
            }),
            metadata: keyplane_control_plane::grpc::convert::json_to_struct(
                &serde_json::json!({"team": "core", "tier": 2}),
            ),
            recoverable: true,
            allowed_cidrs: Vec::new(),
            credits: None,
            identity_id: String::new(),
        })
        .await
        .expect("create")
        .into_inner();
    let key = created.api_key.expect("key");
    let token = created.token;
    assert!(token.starts_with("kp_test_"));
    assert!(key.id.starts_with("key_"));
    assert_eq!(key.org_id, org);
    assert_eq!(key.status, pb::ApiKeyStatus::Active as i32);
    assert!(key.recoverable);
    assert!(token.starts_with(&key.start));
    assert_eq!(key.rate_limit.as_ref().map(|l| l.requests), Some(100));

    // Get and list return the same resource, without the token.
    let got = keys
        .get_api_key(pb::GetApiKeyRequest { org_id: org.clone(), id: key.id.clone() })
        .await
        .expect("get")
        .into_inner()
        .api_key
        .expect("key");
    assert_eq!(got, key);
    let listed = keys
        .list_api_keys(pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.api_keys, vec![key.clone()]);
    assert!(!format!("{listed:?}").contains(&token[key.start.len()..]));

    // Verify: valid, then precise failures.
    let valid = keys.verify_api_key(verify_request(&token)).await.expect("verify").into_inner();
    assert!(valid.valid);
    let principal = valid.principal.expect("principal");
    assert_eq!((principal.key_id.as_str(), principal.org_id.as_str()), (key.id.as_str(), org.as_str()));
    let mut scoped = verify_request(&token);
    scoped.required_scopes = vec!["orders:delete".into()];
    assert_eq!(verify_failure(&mut keys, scoped).await, pb::VerifyFailure::MissingScope);
    let mut live = verify_request(&token);
    live.environment = pb::Environment::Live as i32;
    assert_eq!(verify_failure(&mut keys, live).await, pb::VerifyFailure::WrongEnvironment);
    let mut bad_secret = token.clone().into_bytes();
    let checksum_start = bad_secret.len() - 6;
    bad_secret[checksum_start - 1] = if bad_secret[checksum_start - 1] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        verify_failure(&mut keys, verify_request(&String::from_utf8(bad_secret).unwrap())).await,
        pb::VerifyFailure::Malformed,
        "a changed character breaks the checksum"
    );
    assert_eq!(verify_failure(&mut keys, verify_request("kp_test_garbage")).await, pb::VerifyFailure::Malformed);
    assert_eq!(
        verify_failure(&mut keys, verify_request(&keyplane_tests::forge_secret(&token))).await,
        pb::VerifyFailure::BadSecret
    );

    // Update with a field mask.
    let updated = keys
        .update_api_key(pb::UpdateApiKeyRequest {
            org_id: org.clone(),
            id: key.id.clone(),
            update: Some(pb::ApiKeyUpdate {
                name: "renamed".into(),
                scopes: vec!["orders:read".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into(), "scopes".into(), "rate_limit".into()],
            }),
        })
        .await
        .expect("update")
        .into_inner()
        .api_key
        .expect("key");
    assert_eq!(updated.name, "renamed");
    assert_eq!(updated.scopes, vec!["orders:read".to_owned()]);
    assert_eq!(updated.description, "reads orders", "fields outside the mask are kept");
    assert!(updated.rate_limit.is_none(), "a masked field left unset is cleared");

    // Reveal returns the original token.
    let revealed = keys
        .reveal_api_key(pb::RevealApiKeyRequest { org_id: org.clone(), id: key.id.clone() })
        .await
        .expect("reveal")
        .into_inner();
    assert_eq!(revealed.token, token);

    // Rotate with the default grace: both work, linked by rotated_from.
    let rotated = keys
        .rotate_api_key(pb::RotateApiKeyRequest { org_id: org.clone(), id: key.id.clone(), grace_period: None })
        .await
        .expect("rotate")
        .into_inner();
    let new_key = rotated.api_key.expect("new key");
    assert_eq!(new_key.rotated_from, key.id);
    assert_eq!(new_key.name, "renamed");
    assert_eq!(new_key.environment, pb::Environment::Test as i32);
    let previous_expiry = rotated.previous.expect("previous").expires_at.expect("grace expiry");
    assert!(previous_expiry.seconds <= chrono::Utc::now().timestamp() + 3600 + 1);
    assert!(keys.verify_api_key(verify_request(&token)).await.unwrap().into_inner().valid);
    assert!(keys.verify_api_key(verify_request(&rotated.token)).await.unwrap().into_inner().valid);

    // Revoke: permanent, with who and why.
    let revoked = keys
        .revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: key.id.clone(), reason: "leaked".into() })
        .await
        .expect("revoke")
        .into_inner()
        .api_key
        .expect("key");
    assert_eq!(revoked.status, pb::ApiKeyStatus::Revoked as i32);
    assert_eq!(revoked.revocation_reason, "leaked");
    assert!(revoked.revoked_by.starts_with("key_"));
    assert!(revoked.revoked_at.is_some());
    assert_eq!(verify_failure(&mut keys, verify_request(&token)).await, pb::VerifyFailure::Revoked);
    let again = keys
        .revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: key.id.clone(), reason: String::new() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let rotate_revoked = keys
        .rotate_api_key(pb::RotateApiKeyRequest { org_id: org.clone(), id: key.id.clone(), grace_period: None })
        .await
        .unwrap_err();
    assert_eq!(rotate_revoked.code(), Code::FailedPrecondition);

    // Rotate with zero grace revokes the old key at once.
    let immediate = keys
        .rotate_api_key(pb::RotateApiKeyRequest {
            org_id: org.clone(),
            id: new_key.id.clone(),
            grace_period: Some(prost_types::Duration::default()),
        })
        .await
        .expect("rotate now")
        .into_inner();
    assert_eq!(immediate.previous.expect("previous").status, pb::ApiKeyStatus::Revoked as i32);
    assert_eq!(verify_failure(&mut keys, verify_request(&rotated.token)).await, pb::VerifyFailure::Revoked);
    assert!(keys.verify_api_key(verify_request(&immediate.token)).await.unwrap().into_inner().valid);

    // Delete: the token becomes unknown and the key is gone.
    let newest = immediate.api_key.expect("key");
    keys.delete_api_key(pb::DeleteApiKeyRequest { org_id: org.clone(), id: newest.id.clone() }).await.expect("delete");
    assert_eq!(verify_failure(&mut keys, verify_request(&immediate.token)).await, pb::VerifyFailure::Unknown);
    let missing =
        keys.get_api_key(pb::GetApiKeyRequest { org_id: org.clone(), id: newest.id.clone() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let gone =
        keys.delete_api_key(pb::DeleteApiKeyRequest { org_id: org.clone(), id: newest.id.clone() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Every change a sidecar must learn about is in the key-event log, in order.
    let db = plane.database().await;
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            if db.get_database_backend() == sea_orm::DbBackend::Postgres {
                "SELECT seq, kind FROM key_events WHERE org_id = $1 ORDER BY seq"
            } else {
                "SELECT seq, kind FROM key_events WHERE org_id = ? ORDER BY seq"
            },
            [org.clone().into()],
        ))
        .await
        .expect("key events");
    let kinds: Vec<String> = rows.iter().map(|r| r.try_get("", "kind").unwrap()).collect();
    assert_eq!(kinds, ["updated", "updated", "revoked", "revoked", "deleted"]);
    let seqs: Vec<i64> = rows.iter().map(|r| r.try_get("", "seq").unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    plane.stop().await;
}

async fn rotation_grace_then_expiry(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (key, token) = plane.create_key(&org, &["orders:read"]).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let rotated = keys
        .rotate_api_key(pb::RotateApiKeyRequest {
            org_id: org.clone(),
            id: key.id.clone(),
            grace_period: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert!(keys.verify_api_key(verify_request(&token)).await.unwrap().into_inner().valid, "valid during grace");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(verify_failure(&mut keys, verify_request(&token)).await, pb::VerifyFailure::Expired);
    assert!(keys.verify_api_key(verify_request(&rotated.token)).await.unwrap().into_inner().valid);
    plane.stop().await;
}

async fn update_expiry_takes_effect(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (key, token) = plane.create_key(&org, &[]).await;
    let mut keys = plane.keys(&plane.root_token).await;
    keys.update_api_key(pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: key.id.clone(),
        update: Some(pb::ApiKeyUpdate {
            expires_at: Some(timestamp_in(chrono::Duration::milliseconds(800))),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["expires_at".into()] }),
    })
    .await
    .expect("set expiry");
    assert!(keys.verify_api_key(verify_request(&token)).await.unwrap().into_inner().valid);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(verify_failure(&mut keys, verify_request(&token)).await, pb::VerifyFailure::Expired);
    plane.stop().await;
}

async fn pagination_and_filters(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let mut created = Vec::new();
    for i in 0..7 {
        let response = keys
            .create_api_key(pb::CreateApiKeyRequest {
                org_id: org.clone(),
                name: if i % 2 == 0 { format!("web_{i}") } else { format!("batch%{i}") },
                environment: if i < 5 { pb::Environment::Live as i32 } else { pb::Environment::Test as i32 },
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        created.push(response.api_key.expect("key").id);
    }
    keys.revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: created[0].clone(), reason: String::new() })
        .await
        .expect("revoke");

    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = keys
            .list_api_keys(pb::ListApiKeysRequest {
                org_id: org.clone(),
                page_size: 3,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        seen.extend(page.api_keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every key once, in creation order");

    let list = |request: pb::ListApiKeysRequest| {
        let mut keys = keys.clone();
        async move { keys.list_api_keys(request).await.expect("list").into_inner().api_keys.len() }
    };
    let base = pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() };
    assert_eq!(list(pb::ListApiKeysRequest { status: pb::ApiKeyStatus::Revoked as i32, ..base.clone() }).await, 1);
    assert_eq!(list(pb::ListApiKeysRequest { status: pb::ApiKeyStatus::Active as i32, ..base.clone() }).await, 6);
    assert_eq!(list(pb::ListApiKeysRequest { environment: pb::Environment::Test as i32, ..base.clone() }).await, 2);
    assert_eq!(list(pb::ListApiKeysRequest { name_prefix: "web_".into(), ..base.clone() }).await, 4);
    assert_eq!(list(pb::ListApiKeysRequest { name_prefix: "batch%".into(), ..base.clone() }).await, 3);
    assert_eq!(list(pb::ListApiKeysRequest { name_prefix: "WEB".into(), ..base.clone() }).await, 0, "case-sensitive");
    assert_eq!(list(pb::ListApiKeysRequest { name_prefix: "b%".into(), ..base.clone() }).await, 0, "% is literal");
    plane.stop().await;
}
