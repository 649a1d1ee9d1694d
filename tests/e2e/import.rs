//! Keys brought from another system: hashes made by the real libraries
//! (Python `hashlib`, `bcrypt`, `argon2-cffi`; `tests/import/export_keys.py`),
//! exported as JSON Lines, imported with the real `keyplane import keys`,
//! then accepted by VerifyApiKey and a sidecar, revoked, and refused; an
//! import sent again is skipped; a refused record names its line; salted
//! keys asked to are re-hashed to Keyplane's argon2id on first use.

use std::collections::BTreeMap;
use std::path::Path;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::process::workspace_binary;
use keyplane_tests::{Backend, TestControlPlane, TestSidecar, both_backends, eventually, random_org, start_or_skip};

both_backends!(
    imported_keys_verify_like_native_ones,
    imports_resume_skip_and_refuse_by_line,
    better_auth_keys_work_through_a_sidecar,
);

/// Runs `keyplane import keys` against `plane`: exit code, stdout, stderr.
fn import(plane: &TestControlPlane, org: &str, file: &Path, extra: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(workspace_binary("keyplane"))
        .args(["import", "keys", "--org", org, "--address", &format!("http://{}", plane.addr), "--file"])
        .arg(file)
        .args(extra)
        .env("KEYPLANE_TOKEN", &plane.root_token)
        .output()
        .expect("run keyplane import");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// Writes an export made by the real libraries; returns source_id → token.
fn export(file: &Path) -> BTreeMap<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/import/export_keys.py");
    let output = std::process::Command::new("python3").arg(script).arg(file).output().expect("python3");
    assert!(output.status.success(), "export: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("tokens")
}

fn libraries_available() -> bool {
    keyplane_tests::tool_available("python3", &["-c", "import bcrypt, argon2"], "pip install bcrypt argon2-cffi")
}

/// A control plane, an org, and an export of keys made by the real
/// libraries (`None`: skipped).
struct Setup {
    plane: TestControlPlane,
    org: String,
    dir: tempfile::TempDir,
    file: std::path::PathBuf,
    tokens: BTreeMap<String, String>,
}

async fn setup(backend: Backend) -> Option<Setup> {
    if !libraries_available() {
        return None;
    }
    let plane = TestControlPlane::start(backend).await?;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.jsonl");
    let tokens = export(&file);
    Some(Setup { plane, org: random_org(), dir, file, tokens })
}

async fn verify(plane: &TestControlPlane, token: &str) -> pb::VerifyApiKeyResponse {
    let request = pb::VerifyApiKeyRequest {
        token: token.to_owned(),
        required_scopes: vec!["orders:read".into()],
        ..Default::default()
    };
    plane.keys(&plane.root_token).await.verify_api_key(request).await.expect("verify").into_inner()
}

async fn imported_keys_verify_like_native_ones(backend: Backend) {
    let Some(Setup { plane, org, dir: _dir, file, tokens }) = setup(backend).await else { return };
    let (code, out, err) = import(&plane, &org, &file, &["--upgrade-on-use"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("imported {}", tokens.len())), "{out}");

    // Every format verifies through VerifyApiKey, with the key's scopes and
    // metadata; a token one character off is refused.
    let mut key_ids = BTreeMap::new();
    for (source, token) in &tokens {
        let answer = verify(&plane, token).await;
        assert!(answer.valid, "{source}: {answer:?}");
        let principal = answer.principal.expect("principal");
        assert_eq!(principal.org_id, org);
        key_ids.insert(source.clone(), principal.key_id);
        let mut wrong = token.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'A' { 'B' } else { 'A' });
        assert!(!verify(&plane, &wrong).await.valid, "{source}: a wrong token");
    }
    // Salted keys were re-hashed on that first use, audited; they still verify.
    let upgraded = plane.audit_events(&org, "api_key.hash_upgraded").await;
    assert_eq!(upgraded.len(), tokens.keys().filter(|s| !s.starts_with("src_sha256")).count());
    assert_eq!(plane.audit_events(&org, "api_key.imported").await.len(), tokens.len());
    assert_eq!(plane.metric("keyplane_api_key_hash_upgrades_total", "").await as usize, upgraded.len());
    for token in tokens.values() {
        assert!(verify(&plane, token).await.valid);
    }

    // Guessing at a salted key costs no more hashes than the abuse limits
    // allow: 10 wrong tokens under one lookup (the one-off token above, and
    // 9 guesses), then refusals without hashing; its owner keeps working.
    let owner = &tokens["src_argon2i"];
    let guesses: Vec<String> = (0..10).map(|i| format!("{}guess-{i:02}-{}", &owner[..12], "x".repeat(20))).collect();
    for guess in &guesses[..9] {
        let answer = verify(&plane, guess).await;
        assert_eq!(answer.failure, pb::VerifyFailure::BadSecret as i32, "{guess}: {answer:?}");
    }
    assert_eq!(verify(&plane, &guesses[9]).await.failure, pb::VerifyFailure::Throttled as i32);
    assert!(verify(&plane, owner).await.valid, "a remembered right token is not throttled");

    // A sidecar told the imported tokens' start accepts them like its own.
    let sidecar = TestSidecar::start(&plane, |config| config.imported_token_prefixes = vec!["cc_live_".into()]).await;
    for token in tokens.values() {
        assert_eq!(sidecar.check_status(token).await, 200);
    }
    assert_eq!(sidecar.check_status("cc_live_nothing-like-any-key-at-all").await, 401);
    let plain = TestSidecar::start(&plane, |_| {}).await;
    assert_eq!(plain.check_status(&tokens["src_bcrypt_2b"]).await, 401, "not in Keyplane's format");

    // Revoked, it is refused there as fast as a native key.
    let revoke =
        pb::RevokeApiKeyRequest { org_id: org.clone(), id: key_ids["src_bcrypt_2b"].clone(), ..Default::default() };
    plane.keys(&plane.root_token).await.revoke_api_key(revoke).await.expect("revoke");
    sidecar.wait_for_status(&tokens["src_bcrypt_2b"], 401).await;
    assert!(!verify(&plane, &tokens["src_bcrypt_2b"]).await.valid);
    assert_eq!(sidecar.check_status(&tokens["src_scrypt"]).await, 200, "only that key");
    eventually(|| plane.metric("keyplane_api_keys_on_legacy_hashes", ""), |n| *n == 3.0).await;
    sidecar.stop().await;
    plain.stop().await;
    plane.stop().await;
}

async fn imports_resume_skip_and_refuse_by_line(backend: Backend) {
    let Some(Setup { plane, org, dir, file, tokens }) = setup(backend).await else { return };
    let mut lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_owned).collect();
    // Line 10: bcrypt without the clear start that finds it; line 11: not a
    // hash; line 12: revoked at the source; line 13: keyplane:admin, which the
    // root token may grant.
    let record = |source: &str, hash: &str, format: &str, extra: &str| {
        format!(r#"{{"source_id":"{source}","hash":"{hash}","hash_format":"{format}"{extra}}}"#)
    };
    let bcrypt_line: serde_json::Value = serde_json::from_str(&lines[3]).unwrap();
    lines.push(record("no_lookup", bcrypt_line["hash"].as_str().unwrap(), "bcrypt", ""));
    lines.push(record("not_a_hash", "xyz", "sha256_hex", ""));
    lines.push(record("revoked", &"ab".repeat(32), "sha256_hex", r#","revoked":true"#));
    lines.push(record("admin", &"cd".repeat(32), "sha256_hex", r#","scopes":["keyplane:admin"]"#));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    // Interrupted after line 3: the run picks up at line 4 (batches of
    // lines 4-7, 8-11, 12-13).
    std::fs::write(dir.path().join("keys.jsonl.progress"), "3").unwrap();
    let (code, out, err) = import(&plane, &org, &file, &["--batch", "4"]);
    assert_eq!(code, 2, "some records are refused: {out}{err}");
    assert!(err.contains("resuming after line 3"), "{err}");
    assert!(out.contains("imported 8") && out.contains("refused  2"), "{out}");
    assert!(err.contains("line 10 (source_id no_lookup): keys[2].lookup"), "{err}");
    assert!(err.contains("line 11 (source_id not_a_hash): keys[3].hash"), "{err}");
    assert!(!dir.path().join("keys.jsonl.progress").exists(), "finished: nothing to resume");
    let sha256_hex = &tokens["src_sha256_hex"];
    assert!(!verify(&plane, sha256_hex).await.valid, "line 1 was skipped by the resume");

    // The whole file again: what was imported is skipped, the rest imported.
    let (code, out, _) = import(&plane, &org, &file, &[]);
    assert_eq!(code, 2);
    assert!(out.contains("imported 3") && out.contains("skipped  8"), "{out}");
    assert!(verify(&plane, sha256_hex).await.valid);

    // The record revoked at the source is stored revoked.
    let imported = plane.audit_events(&org, "api_key.imported").await;
    let revoked = imported.iter().find(|e| format!("{:?}", e.metadata).contains("StringValue(\"revoked\")")).unwrap();
    let request = pb::GetApiKeyRequest { org_id: org.clone(), id: revoked.target_id.clone() };
    let key = plane.keys(&plane.root_token).await.get_api_key(request).await.unwrap().into_inner().api_key.unwrap();
    assert_eq!(key.status, pb::ApiKeyStatus::Revoked as i32);
    // An org key without keyplane:admin may not import a key holding it.
    let (_, writer) = plane.create_key(&org, &["keyplane:keys:write"]).await;
    let request = pb::ImportApiKeysRequest {
        org_id: String::new(),
        keys: vec![pb::ImportedApiKey {
            source_id: "escalate".into(),
            hash: "ef".repeat(32),
            hash_format: pb::ImportedHashFormat::Sha256Hex.into(),
            scopes: vec!["keyplane:admin".into()],
            ..Default::default()
        }],
        upgrade_on_use: false,
    };
    let answer = plane.keys(&writer).await.import_api_keys(request).await.expect("import").into_inner();
    assert_eq!(answer.results[0].outcome, pb::ImportOutcome::Refused as i32);
    assert_eq!(answer.results[0].field, "keys[0].scopes");

    // A salted hash is found by its clear start: at most 8 keys may share one.
    let crowded = |n: usize| pb::ImportedApiKey {
        source_id: format!("crowded-{n}"),
        hash: bcrypt_line["hash"].as_str().unwrap().to_owned(),
        hash_format: pb::ImportedHashFormat::Bcrypt.into(),
        lookup: "cc_live_crowd".into(),
        ..Default::default()
    };
    let import =
        |keys: Vec<pb::ImportedApiKey>| pb::ImportApiKeysRequest { org_id: org.clone(), keys, upgrade_on_use: false };
    let mut client = plane.keys(&plane.root_token).await;
    let first = client.import_api_keys(import((0..6).map(crowded).collect())).await.unwrap().into_inner();
    assert!(first.results.iter().all(|r| r.outcome == pb::ImportOutcome::Imported as i32));
    let more = client.import_api_keys(import((6..9).map(crowded).collect())).await.unwrap().into_inner();
    for (i, result) in more.results.iter().enumerate() {
        assert_eq!(result.outcome, pb::ImportOutcome::Refused as i32, "6 stored + 3 more > 8");
        assert_eq!(result.field, format!("keys[{i}].lookup"));
    }
    plane.stop().await;
}

/// Keys created by Better Auth's API-key plugin in its SQLite database,
/// exported from its `apikey` table (`tests/import/better_auth_export.mjs`).
async fn better_auth_keys_work_through_a_sidecar(backend: Backend) {
    let packages = concat!(env!("CARGO_MANIFEST_DIR"), "/import/node_modules/better-auth");
    if !keyplane_tests::tool_available("test", &["-d", packages], "cd tests/import && npm ci") {
        return;
    }
    let plane = start_or_skip!(backend);
    let org = random_org();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("better-auth.jsonl");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/import/better_auth_export.mjs");
    let output = std::process::Command::new("node").arg(script).arg(&file).output().expect("node");
    assert!(output.status.success(), "better auth: {}", String::from_utf8_lossy(&output.stderr));
    let made: serde_json::Value = serde_json::from_slice(&output.stdout).expect("tokens");
    let disabled = made["disabled"][0].as_str().unwrap().to_owned();
    let tokens: BTreeMap<String, String> = serde_json::from_value(made["tokens"].clone()).unwrap();
    let (code, out, err) = import(&plane, &org, &file, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("imported 3"), "{out}");

    let sidecar = TestSidecar::start(&plane, |config| config.imported_token_prefixes = vec!["ba_".into()]).await;
    let (live, other): (Vec<_>, Vec<_>) = tokens.iter().partition(|(source, _)| **source != disabled);
    for (_, token) in &live {
        assert_eq!(sidecar.check_status(token).await, 200);
    }
    assert_eq!(sidecar.check_status(other[0].1).await, 401, "disabled in Better Auth: imported revoked");
    // Revoking one in Keyplane reaches the sidecar; the other still works.
    let answer = verify(&plane, live[0].1).await;
    let key_id = answer.principal.expect("principal").key_id;
    let revoke = pb::RevokeApiKeyRequest { org_id: org.clone(), id: key_id, ..Default::default() };
    plane.keys(&plane.root_token).await.revoke_api_key(revoke).await.expect("revoke");
    sidecar.wait_for_status(live[0].1, 401).await;
    assert_eq!(sidecar.check_status(live[1].1).await, 200);
    sidecar.stop().await;
    plane.stop().await;
}
