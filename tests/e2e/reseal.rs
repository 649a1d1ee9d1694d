//! Master-key rotation: `keyplane reseal` moves every sealed value (a
//! recoverable key's token, a subscription's secrets, a connection's access
//! and refresh tokens) to the newest key while serving, and the old key can
//! then be removed.

use std::path::Path;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::connections::{CLIENT_SECRET, access_token, connect, start};
use keyplane_tests::oauth_provider::{ClientAuth, FakeProvider};
use keyplane_tests::process::workspace_binary;
use keyplane_tests::{Backend, TestControlPlane, both_backends, random_org};
use sea_orm::{ConnectionTrait, Statement};

both_backends!(reseal_moves_every_secret_to_the_new_master_key);

/// One sealed value of each kind and what opening it must give.
struct Sealed {
    org: String,
    key_id: String,
    recoverable_token: String,
    subscription_id: String,
    connection_id: String,
    access_token: String,
}

impl Sealed {
    /// Opens every value through the API: reveal, access token and, with
    /// `rotate`, a secret rotation (which re-seals the subscription's secrets).
    async fn readable(&self, plane: &TestControlPlane, rotate: bool) {
        let revealed = plane
            .keys(&plane.root_token)
            .await
            .reveal_api_key(pb::RevealApiKeyRequest { org_id: self.org.clone(), id: self.key_id.clone() })
            .await
            .expect("reveal")
            .into_inner()
            .token;
        assert_eq!(revealed, self.recoverable_token);
        assert_eq!(access_token(plane, &self.org, &self.connection_id).await.expect("access token"), self.access_token);
        if !rotate {
            return;
        }
        // Rotation opens the stored secrets (and fails if it cannot).
        keyplane_tests::webhooks::rotate_secret(plane, &self.org, &self.subscription_id, None).await;
    }
}

fn write_keys(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.concat()).unwrap();
}

/// Runs `keyplane reseal` against `plane`'s database with `key_file`.
fn reseal(plane: &TestControlPlane, key_file: &Path) -> String {
    let output = std::process::Command::new(workspace_binary("keyplane"))
        .args(["reseal", "--data-dir", &plane.data_dir.display().to_string()])
        .args(["--database-url", &plane.database_url, "--master-key-file", &key_file.display().to_string()])
        .output()
        .expect("run keyplane reseal");
    assert!(output.status.success(), "reseal failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn reseal_moves_every_secret_to_the_new_master_key(backend: Backend) {
    let provider = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let Some(mut plane) = start(backend, &[("acme", &provider, "client_secret_basic")]).await else { return };
    let key_file = plane.data_dir.join("master-keys.conf");
    let k1 = keyplane_control_plane::crypto::MasterKeys::generate_line("k1");
    let k2 = keyplane_control_plane::crypto::MasterKeys::generate_line("k2");
    write_keys(&key_file, &[&k1]);
    plane.stop_for_now().await;
    plane.config.master_key_file = Some(key_file.clone());
    plane.start_again().await;

    // One value of each kind, sealed under k1.
    let org = random_org();
    let recoverable = plane.create_recoverable_key(&plane.root_token, &org).await;
    let key_id = recoverable.api_key.unwrap().id;
    let (subscription, _) =
        keyplane_tests::webhooks::subscribe(&plane, &org, "https://hooks.example.com/x", &["never.sent"]).await;
    let connection = connect(&plane, &org, &provider).await;
    let token = access_token(&plane, &org, &connection.id).await.unwrap();
    let sealed = Sealed {
        org: org.clone(),
        key_id,
        recoverable_token: recoverable.token.clone(),
        subscription_id: subscription.id.clone(),
        connection_id: connection.id.clone(),
        access_token: token,
    };
    sealed.readable(&plane, true).await;

    // Add k2 (newest): old values still readable.
    write_keys(&key_file, &[&k1, &k2]);
    plane.stop_for_now().await;
    plane.start_again().await;
    sealed.readable(&plane, false).await;

    // Reseal while serving.
    let report = reseal(&plane, &key_file);
    assert!(report.contains("api_keys re-sealed              1"), "{report}");
    assert!(report.contains("webhook_subscriptions re-sealed 1"), "{report}");
    assert!(report.contains("oauth tokens re-sealed          2"), "{report}");
    let db = plane.database().await;
    for (table, column) in [
        ("api_keys", "sealed_token"),
        ("webhook_subscriptions", "sealed_secrets"),
        ("oauth_connections", "sealed_access_token"),
        ("oauth_connections", "sealed_refresh_token"),
    ] {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT {column} AS v FROM {table} WHERE {column} IS NOT NULL"),
            ))
            .await
            .unwrap();
        for row in rows {
            let value: String = row.try_get("", "v").unwrap();
            assert!(value.starts_with("k2:"), "{table}.{column} still under an old key");
        }
    }
    sealed.readable(&plane, false).await;
    let again = reseal(&plane, &key_file);
    assert!(again.contains("api_keys re-sealed              0") && again.contains("oauth tokens re-sealed          0"));

    // Remove k1: everything still opens.
    write_keys(&key_file, &[&k2]);
    plane.stop_for_now().await;
    plane.start_again().await;
    sealed.readable(&plane, true).await;
    plane.stop().await;
}
