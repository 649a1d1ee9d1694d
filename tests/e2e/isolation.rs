//! Tenant isolation and scopes: a key sees only its own org, and each RPC
//! needs its scope.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, both_backends, random_org, start_or_skip};
use tonic::Code;

both_backends!(other_orgs_resources_are_invisible, every_rpc_needs_its_scope, credentials_are_checked);

async fn other_orgs_resources_are_invisible(backend: Backend) {
    let plane = start_or_skip!(backend);
    let (org_a, org_b) = (random_org(), random_org());
    let (_, a_admin) = plane.create_key(&org_a, &["keyplane:admin"]).await;
    let (b_key, b_token) = plane.create_key(&org_b, &["orders:read"]).await;
    let mut keys = plane.keys(&a_admin).await;
    let mut audit = plane.audit(&a_admin).await;
    let id = b_key.id.clone();

    // Naming B's key from A's org: NOT_FOUND, exactly as for a key that does not exist.
    let codes = [
        keys.get_api_key(pb::GetApiKeyRequest { org_id: String::new(), id: id.clone() }).await.unwrap_err().code(),
        keys.update_api_key(pb::UpdateApiKeyRequest {
            org_id: String::new(),
            id: id.clone(),
            update: Some(pb::ApiKeyUpdate { name: "x".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
        })
        .await
        .unwrap_err()
        .code(),
        keys.revoke_api_key(pb::RevokeApiKeyRequest { org_id: String::new(), id: id.clone(), reason: String::new() })
            .await
            .unwrap_err()
            .code(),
        keys.delete_api_key(pb::DeleteApiKeyRequest { org_id: String::new(), id: id.clone() })
            .await
            .unwrap_err()
            .code(),
        keys.rotate_api_key(pb::RotateApiKeyRequest { org_id: String::new(), id: id.clone(), grace_period: None })
            .await
            .unwrap_err()
            .code(),
        keys.reveal_api_key(pb::RevealApiKeyRequest { org_id: String::new(), id: id.clone() })
            .await
            .unwrap_err()
            .code(),
    ];
    assert_eq!(codes, [Code::NotFound; 6]);
    let unknown = keys
        .get_api_key(pb::GetApiKeyRequest { org_id: String::new(), id: "key_doesnotexist".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.message(), "api key not found", "same answer as for another org's key");

    // Naming org B explicitly: PERMISSION_DENIED.
    let denied = [
        keys.get_api_key(pb::GetApiKeyRequest { org_id: org_b.clone(), id: id.clone() }).await.unwrap_err().code(),
        keys.list_api_keys(pb::ListApiKeysRequest { org_id: org_b.clone(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        keys.create_api_key(pb::CreateApiKeyRequest { org_id: org_b.clone(), name: "x".into(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        audit
            .list_audit_events(pb::ListAuditEventsRequest { org_id: org_b.clone(), ..Default::default() })
            .await
            .unwrap_err()
            .code(),
        audit.verify_audit_chain(pb::VerifyAuditChainRequest { org_id: org_b.clone() }).await.unwrap_err().code(),
    ];
    assert_eq!(denied, [Code::PermissionDenied; 5]);

    // A's own listings never include B's data; B's token looks unknown to A.
    let listed = keys.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap().into_inner();
    assert!(listed.api_keys.iter().all(|k| k.org_id == org_a));
    let verified = keys
        .verify_api_key(pb::VerifyApiKeyRequest { token: b_token.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!verified.valid);
    assert_eq!(verified.failure, pb::VerifyFailure::Unknown as i32);
    assert!(verified.principal.is_none());
    let events = audit.list_audit_events(pb::ListAuditEventsRequest::default()).await.unwrap().into_inner();
    assert!(events.audit_events.iter().all(|e| e.org_id == org_a));

    // B's key is untouched.
    let root_view = plane
        .keys(&plane.root_token)
        .await
        .get_api_key(pb::GetApiKeyRequest { org_id: org_b.clone(), id })
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(root_view, b_key);
    plane.stop().await;
}

async fn every_rpc_needs_its_scope(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (target, target_token) = plane.create_key(&org, &[]).await;
    let (_, none) = plane.create_key(&org, &["orders:read"]).await;
    let (_, read) = plane.create_key(&org, &["keyplane:keys:read"]).await;
    let (_, write) = plane.create_key(&org, &["keyplane:keys:write"]).await;
    let (_, reveal) = plane.create_key(&org, &["keyplane:keys:reveal"]).await;
    let (_, audit_read) = plane.create_key(&org, &["keyplane:audit:read"]).await;

    // (RPC, scope that allows it): every other key is refused with PERMISSION_DENIED.
    let tokens = [("none", &none), ("read", &read), ("write", &write), ("reveal", &reveal), ("audit", &audit_read)];
    for (holder, token) in tokens {
        let mut keys = plane.keys(token).await;
        let mut audit = plane.audit(token).await;
        let id = target.id.clone();
        let results: Vec<(&str, &str, Result<(), tonic::Status>)> = vec![
            (
                "get",
                "read",
                keys.get_api_key(pb::GetApiKeyRequest { org_id: String::new(), id: id.clone() }).await.map(drop),
            ),
            ("list", "read", keys.list_api_keys(pb::ListApiKeysRequest::default()).await.map(drop)),
            (
                "verify",
                "read",
                keys.verify_api_key(pb::VerifyApiKeyRequest { token: target_token.clone(), ..Default::default() })
                    .await
                    .map(drop),
            ),
            (
                "create",
                "write",
                keys.create_api_key(pb::CreateApiKeyRequest { name: "n".into(), ..Default::default() }).await.map(drop),
            ),
            (
                "update",
                "write",
                keys.update_api_key(pb::UpdateApiKeyRequest {
                    org_id: String::new(),
                    id: id.clone(),
                    update: Some(pb::ApiKeyUpdate { name: "n".into(), ..Default::default() }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
                })
                .await
                .map(drop),
            ),
            // Reveal of a non-recoverable key: FAILED_PRECONDITION once authorized.
            (
                "reveal",
                "reveal",
                keys.reveal_api_key(pb::RevealApiKeyRequest { org_id: String::new(), id: id.clone() }).await.map(drop),
            ),
            ("audit list", "audit", audit.list_audit_events(pb::ListAuditEventsRequest::default()).await.map(drop)),
            ("audit verify", "audit", audit.verify_audit_chain(pb::VerifyAuditChainRequest::default()).await.map(drop)),
            (
                "delete",
                "write",
                keys.delete_api_key(pb::DeleteApiKeyRequest { org_id: String::new(), id: "key_absent".into() })
                    .await
                    .map(drop),
            ),
            (
                "rotate",
                "write",
                keys.rotate_api_key(pb::RotateApiKeyRequest {
                    org_id: String::new(),
                    id: "key_absent".into(),
                    grace_period: None,
                })
                .await
                .map(drop),
            ),
            (
                "revoke",
                "write",
                keys.revoke_api_key(pb::RevokeApiKeyRequest {
                    org_id: String::new(),
                    id: "key_absent".into(),
                    reason: String::new(),
                })
                .await
                .map(drop),
            ),
        ];
        for (rpc, needed, result) in results {
            let code = result.err().map(|s| s.code());
            if holder == needed {
                assert_ne!(code, Some(Code::PermissionDenied), "{holder} may call {rpc}");
            } else {
                assert_eq!(code, Some(Code::PermissionDenied), "{holder} must not call {rpc}");
            }
        }
    }

    // A key cannot grant keyplane scopes it lacks; application scopes are free.
    let mut writer = plane.keys(&write).await;
    let escalation = writer
        .create_api_key(pb::CreateApiKeyRequest {
            name: "x".into(),
            scopes: vec!["keyplane:admin".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(escalation.code(), Code::PermissionDenied);
    writer
        .create_api_key(pb::CreateApiKeyRequest {
            name: "x".into(),
            scopes: vec!["keyplane:keys:write".into(), "orders:read".into()],
            ..Default::default()
        })
        .await
        .expect("granting held and application scopes");
    plane.stop().await;
}

async fn credentials_are_checked(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (admin, admin_token) = plane.create_key(&org, &["keyplane:admin"]).await;
    let list = |token: String| {
        let plane = &plane;
        async move { plane.keys(&token).await.list_api_keys(pb::ListApiKeysRequest::default()).await.map(drop) }
    };
    assert!(list(admin_token.clone()).await.is_ok());

    let no_header = pb::api_key_service_client::ApiKeyServiceClient::new(plane.channel().await)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_header.code(), Code::Unauthenticated);
    for bad in ["garbage", "kp_live_", &keyplane_tests::forge_secret(&admin_token), &format!("{}x", plane.root_token)] {
        assert_eq!(list(bad.to_owned()).await.unwrap_err().code(), Code::Unauthenticated, "{bad}");
    }

    // Root acts in any org but must name it.
    let mut root = plane.keys(&plane.root_token).await;
    let missing_org = root.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap_err();
    keyplane_tests::assert_invalid_field(&missing_org, "org_id");

    // A revoked admin key stops working at once.
    root.revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: admin.id, reason: String::new() })
        .await
        .expect("revoke");
    assert_eq!(list(admin_token).await.unwrap_err().code(), Code::Unauthenticated);
    plane.stop().await;
}
