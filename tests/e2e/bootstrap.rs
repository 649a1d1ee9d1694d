//! Production bootstrap on Postgres: replicas share one database, so none
//! generates a root token of its own (each would accept only its own);
//! `keyplane create-admin-key` makes a platform admin key that every
//! replica accepts, and a named root-token file must exist.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::process::{ControlPlaneProcess, keyplane, refused_start};
use keyplane_tests::{Backend, assert_no_token_in, authed_channel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_accept_the_admin_key_made_by_create_admin_key() {
    let data = tempfile::tempdir().unwrap();
    let Some(url) = Backend::Postgres.fresh_database(data.path()).await else { return };
    let key_file = data.path().join("master-key.conf");
    std::fs::write(&key_file, keyplane_control_plane::crypto::MasterKeys::generate_line("k1")).unwrap();
    let (dir, key_file) = (data.path().display().to_string(), key_file.display().to_string());
    let storage = ["--data-dir", dir.as_str(), "--database-url", url.as_str(), "--master-key-file", key_file.as_str()];
    let serve: Vec<String> = storage.iter().chain(&["--argon2-memory-kib", "256"]).map(|s| (*s).to_owned()).collect();
    let replicas = [ControlPlaneProcess::start(&serve).await, ControlPlaneProcess::start(&serve).await];
    assert!(!data.path().join("root-token").exists(), "no replica generated a root token");

    let output = keyplane(&[&["create-admin-key"][..], &storage].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("kp_live_"), "the token is printed on stdout: {token:?}");
    assert_no_token_in(&String::from_utf8_lossy(&output.stderr));

    for replica in &replicas {
        let channel = authed_channel(&replica.addr, &token).await;
        let listed = pb::api_key_service_client::ApiKeyServiceClient::new(channel.clone())
            .list_api_keys(pb::ListApiKeysRequest { org_id: "keyplane".into(), ..Default::default() })
            .await
            .expect("every replica accepts the admin key")
            .into_inner();
        assert!(listed.api_keys.iter().any(|key| key.name == "bootstrap admin" && key.scopes == ["keyplane:admin"]));
        let audited = pb::audit_service_client::AuditServiceClient::new(channel)
            .list_audit_events(pb::ListAuditEventsRequest { org_id: "keyplane".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(audited.audit_events.iter().any(|e| e.action == "api_key.created" && e.actor_type == "operator"));
    }
    for replica in replicas {
        let log = replica.stop().await;
        assert!(log.contains("no root token"), "the log says how to bootstrap");
        assert_no_token_in(&log);
    }
}

#[tokio::test]
async fn postgres_refuses_a_root_token_file_that_does_not_exist() {
    let data = tempfile::tempdir().unwrap();
    let Some(url) = Backend::Postgres.fresh_database(data.path()).await else { return };
    let key_file = data.path().join("master-key.conf");
    std::fs::write(&key_file, keyplane_control_plane::crypto::MasterKeys::generate_line("k1")).unwrap();
    let missing = data.path().join("root-token");
    let stderr = refused_start(&[
        "--database-url",
        &url,
        "--master-key-file",
        &key_file.display().to_string(),
        "--root-token-file",
        &missing.display().to_string(),
    ]);
    assert!(stderr.contains("does not exist") && stderr.contains("create-admin-key"), "{stderr}");
    assert!(!missing.exists(), "Postgres never generates the root token");
}
