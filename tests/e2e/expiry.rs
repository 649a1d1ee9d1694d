//! Keys that end by themselves: the expiry sweep marks keys past their
//! expiry `expired` and tells sidecars through the key-event stream, and
//! key retention deletes keys that ended long ago, audited as the system.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::webhooks::{WAIT, subscribe};
use keyplane_tests::{
    Backend, TestControlPlane, TestSidecar, both_backends, eventually, random_org, start_webhooks_or_skip, timestamp_in,
};
use tonic::Code;

both_backends!(
    the_expiry_sweep_reaches_a_sidecar_unasked,
    retention_deletes_ended_keys_as_the_system,
    keys_about_to_expire_are_announced_once_per_expiry,
);

type Keys = pb::api_key_service_client::ApiKeyServiceClient<keyplane_tests::Authed>;

/// Sets the expiry of key `id` to `after` from now.
async fn expire_in(keys: &mut Keys, org: &str, id: &str, after: chrono::Duration) -> Result<(), tonic::Status> {
    let request = pb::UpdateApiKeyRequest {
        org_id: org.to_owned(),
        id: id.to_owned(),
        update: Some(pb::ApiKeyUpdate { expires_at: Some(timestamp_in(after)), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["expires_at".into()] }),
    };
    keys.update_api_key(request).await.map(drop)
}

async fn status_of(mut keys: Keys, org: &str, id: &str) -> Result<pb::ApiKeyStatus, Code> {
    let request = pb::GetApiKeyRequest { org_id: org.to_owned(), id: id.to_owned() };
    match keys.get_api_key(request).await {
        Ok(response) => Ok(response.into_inner().api_key.expect("key").status()),
        Err(status) => Err(status.code()),
    }
}

async fn the_expiry_sweep_reaches_a_sidecar_unasked(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let org = random_org();
    let (key, token) = plane.create_key(&org, &[]).await;
    let mut keys = plane.keys(&plane.root_token).await;
    assert_eq!(sidecar.check_status(&token).await, 200, "cached as valid");
    expire_in(&mut keys, &org, &key.id, chrono::Duration::milliseconds(500)).await.expect("set expiry");

    // No check of the key from here until the sidecar has the event.
    let expired_events = || sidecar.metric("keyplane_sidecar_key_events_total", "kind=\"expired\"");
    eventually(expired_events, |count| *count == 1.0).await;
    assert_eq!(status_of(keys.clone(), &org, &key.id).await, Ok(pb::ApiKeyStatus::Expired));
    let audited = plane.audit_events(&org, "api_key.expired").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!((audited[0].actor_type.as_str(), audited[0].actor_id.as_str()), ("system", "expiry-sweep"));
    assert_eq!(audited[0].target_id, key.id);

    assert_eq!(sidecar.check_status(&token).await, 401);
    assert_eq!(sidecar.metric("keyplane_sidecar_checks_total", "reason=\"expired\"").await, 1.0);
    assert_eq!(sidecar.metric("keyplane_sidecar_verify_calls_total", "").await, 1.0, "denied without asking");

    let listed = keys
        .list_api_keys(pb::ListApiKeysRequest {
            org_id: org.clone(),
            status: pb::ApiKeyStatus::Expired as i32,
            ..Default::default()
        })
        .await
        .expect("list expired")
        .into_inner();
    assert_eq!(listed.api_keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), [key.id.as_str()]);

    // Expiry is for good: it cannot be moved to bring the key back.
    let refused = expire_in(&mut keys, &org, &key.id, chrono::Duration::hours(1)).await.expect_err("revive");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let verify = pb::VerifyApiKeyRequest { token, ..Default::default() };
    let verified = keys.verify_api_key(verify).await.expect("verify").into_inner();
    assert_eq!(verified.failure(), pb::VerifyFailure::Expired);
    sidecar.stop().await;
    plane.stop().await;
}

async fn retention_deletes_ended_keys_as_the_system(backend: Backend) {
    let retention = Duration::from_secs(2);
    let Some(plane) =
        TestControlPlane::start_with(backend, |config| config.delete_expired_keys_after = Some(retention)).await
    else {
        return;
    };
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let (expiring, _) = plane.create_key(&org, &[]).await;
    let (revoked, _) = plane.create_key(&org, &[]).await;
    let (kept, _) = plane.create_key(&org, &[]).await;
    expire_in(&mut keys, &org, &expiring.id, chrono::Duration::milliseconds(300)).await.expect("set expiry");
    let revoke = pb::RevokeApiKeyRequest { org_id: org.clone(), id: revoked.id.clone(), ..Default::default() };
    keys.revoke_api_key(revoke).await.expect("revoke");

    // Ended, not yet past retention: still there.
    eventually(|| status_of(keys.clone(), &org, &expiring.id), |s| *s == Ok(pb::ApiKeyStatus::Expired))
        .await
        .expect("expired");
    assert_eq!(status_of(keys.clone(), &org, &revoked.id).await, Ok(pb::ApiKeyStatus::Revoked));

    for id in [&expiring.id, &revoked.id] {
        eventually(|| status_of(keys.clone(), &org, id), |s| *s == Err(Code::NotFound)).await.expect_err("deleted");
    }
    assert_eq!(status_of(keys.clone(), &org, &kept.id).await, Ok(pb::ApiKeyStatus::Active));
    let mut deleted: Vec<_> = plane
        .audit_events(&org, "api_key.deleted")
        .await
        .into_iter()
        .map(|event| {
            let reason = event.metadata.as_ref().and_then(|m| m.fields.get("reason")).cloned();
            assert_eq!((event.actor_type.as_str(), event.actor_id.as_str()), ("system", "key-retention"));
            assert_eq!(reason.and_then(|r| r.kind), Some(prost_types::value::Kind::StringValue("retention".into())));
            event.target_id
        })
        .collect();
    deleted.sort();
    let mut expected = vec![expiring.id, revoked.id];
    expected.sort();
    assert_eq!(deleted, expected);
    plane.stop().await;
}

/// `api_key.expiring` for a key that expires within `--key-expiring-notice`:
/// once, and again when its expiry changes; never for one expiring later.
async fn keys_about_to_expire_are_announced_once_per_expiry(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
        config.key_expiring_notice = Some(Duration::from_secs(3600));
    });
    let org = random_org();
    let receiver = Receiver::start().await;
    subscribe(&plane, &org, &receiver.url("/expiring"), &["api_key.expiring"]).await;
    let (soon, _) = plane.create_key(&org, &[]).await;
    let (later, _) = plane.create_key(&org, &[]).await;
    let mut keys = plane.keys(&plane.root_token).await;
    expire_in(&mut keys, &org, &later.id, chrono::Duration::hours(2)).await.unwrap();
    expire_in(&mut keys, &org, &soon.id, chrono::Duration::minutes(30)).await.unwrap();
    let first = receiver.wait_for("/expiring", 1, WAIT).await;
    let body: serde_json::Value = serde_json::from_slice(&first[0].body).unwrap();
    assert_eq!(body["type"], "api_key.expiring");
    assert_eq!(body["data"]["key_id"], soon.id);
    let seconds = body["data"]["expires_in_seconds"].as_i64().unwrap();
    assert!((1700..=1800).contains(&seconds), "{seconds}");
    // Many sweeps later (every 100 ms here), still one notice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received("/expiring").len(), 1, "once per expiry; none for the key expiring in 2 h");
    // A new expiry, still within the hour: announced again.
    expire_in(&mut keys, &org, &soon.id, chrono::Duration::minutes(40)).await.unwrap();
    let both = receiver.wait_for("/expiring", 2, WAIT).await;
    let body: serde_json::Value = serde_json::from_slice(&both[1].body).unwrap();
    assert_eq!(body["data"]["key_id"], soon.id);
    assert!(body["data"]["expires_in_seconds"].as_i64().unwrap() > 2300);
    plane.stop().await;
}
