//! Verification abuse: argon2 work per key id is bounded (per key and
//! globally) without locking the owner out, unknown key ids cost as long as
//! wrong secrets, clients learn only `invalid_token`, and every failed
//! authentication is logged at WARN with the peer and the request id.

use std::time::{Duration, Instant};

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, TestControlPlane, TestSidecar, both_backends, forge_secret, logs, random_org};

both_backends!(wrong_secrets_for_one_key_stop_costing_argon2, suspect_keys_share_a_global_hash_budget);

type Keys = pb::api_key_service_client::ApiKeyServiceClient<keyplane_tests::Authed>;

async fn verify(keys: &mut Keys, token: &str) -> pb::VerifyFailure {
    let request = pb::VerifyApiKeyRequest { token: token.to_owned(), ..Default::default() };
    let response = keys.verify_api_key(request).await.expect("verify").into_inner();
    pb::VerifyFailure::try_from(response.failure).expect("known failure")
}

/// A different wrong secret each time (with a valid checksum).
fn wrong_secret(token: &str, attempt: usize) -> String {
    use keyplane_control_plane::crypto::token::{CHECKSUM_LEN, SECRET_LEN, encode_fixed};
    let forged = forge_secret(token);
    let body_end = forged.len() - CHECKSUM_LEN;
    let digits = format!("{attempt:0>8}");
    let signed = format!("{}{digits}", &forged[..body_end - digits.len()]);
    assert_eq!(signed.len() - (body_end - SECRET_LEN), SECRET_LEN);
    let checksum = encode_fixed(&crc32fast::hash(signed.as_bytes()).to_be_bytes(), CHECKSUM_LEN);
    format!("{signed}{checksum}")
}

/// A control plane adjusted by `adjust`, a fresh org, and a client that
/// verifies tokens of that org.
async fn start(
    backend: Backend,
    adjust: impl FnOnce(&mut keyplane_control_plane::Config),
) -> Option<(TestControlPlane, String, Keys)> {
    let plane = TestControlPlane::start_with(backend, adjust).await?;
    let org = random_org();
    let (_, reader) = plane.create_key(&org, &["keyplane:keys:read"]).await;
    let keys = plane.keys(&reader).await;
    Some((plane, org, keys))
}

/// A well-formed token whose key was deleted: an unknown key id.
async fn unknown_token(plane: &TestControlPlane, org: &str) -> String {
    let (deleted, token) = plane.create_key(org, &[]).await;
    let request = pb::DeleteApiKeyRequest { org_id: org.to_owned(), id: deleted.id };
    plane.keys(&plane.root_token).await.delete_api_key(request).await.unwrap();
    token
}

async fn hashes(plane: &TestControlPlane) -> f64 {
    plane.metric("keyplane_argon2_verify_seconds_count", "").await
}

async fn wrong_secrets_for_one_key_stop_costing_argon2(backend: Backend) {
    let Some((plane, org, mut keys)) = start(backend, |config| config.abuse.failures_per_key = 3).await else {
        return;
    };
    let (_, token) = plane.create_key(&org, &[]).await;
    let (_, other_token) = plane.create_key(&org, &[]).await;
    // The owner's token, verified once, is remembered.
    assert_eq!(verify(&mut keys, &token).await, pb::VerifyFailure::Unspecified);

    let before = hashes(&plane).await;
    let outcomes: Vec<_> = {
        let mut outcomes = Vec::new();
        for attempt in 0..10 {
            outcomes.push(verify(&mut keys, &wrong_secret(&token, attempt)).await);
        }
        outcomes
    };
    assert_eq!(&outcomes[..3], [pb::VerifyFailure::BadSecret; 3]);
    assert_eq!(&outcomes[3..], [pb::VerifyFailure::Throttled; 7]);
    assert_eq!(hashes(&plane).await - before, 3.0, "only the first 3 wrong secrets were hashed");
    assert_eq!(plane.metric("keyplane_verify_throttled_total", "limit=\"key\"").await, 7.0);

    // The owner is not locked out, and other keys are not affected.
    assert_eq!(verify(&mut keys, &token).await, pb::VerifyFailure::Unspecified);
    assert_eq!(verify(&mut keys, &wrong_secret(&other_token, 0)).await, pb::VerifyFailure::BadSecret);
    assert_eq!(verify(&mut keys, &other_token).await, pb::VerifyFailure::Unspecified);
    let log = logs::captured();
    assert!(log.contains("secret refused without hashing"), "throttling is logged");
    plane.stop().await;
}

async fn suspect_keys_share_a_global_hash_budget(backend: Backend) {
    let Some((plane, org, mut keys)) = start(backend, |config| {
        config.abuse.failures_per_key = 1000;
        config.abuse.suspect_hashes_per_second = 1;
    })
    .await
    else {
        return;
    };
    let (_, suspect) = plane.create_key(&org, &[]).await;
    // The first failure makes the key a suspect; afterwards its guesses
    // draw on one budget of 1 hash per second for all suspects.
    let mut throttled = 0;
    for attempt in 0..6 {
        if verify(&mut keys, &wrong_secret(&suspect, attempt)).await == pb::VerifyFailure::Throttled {
            throttled += 1;
        }
    }
    assert!(throttled >= 3, "only {throttled} of 6 rapid guesses were throttled");
    assert!(plane.metric("keyplane_verify_throttled_total", "limit=\"global\"").await >= 3.0);
    // A key without failures is never limited.
    let (_, clean) = plane.create_key(&org, &[]).await;
    assert_eq!(verify(&mut keys, &clean).await, pb::VerifyFailure::Unspecified);
    plane.stop().await;
}

/// With production argon2 costs, an unknown key id must not answer much
/// faster than a wrong secret for a real one (the refusal waits as long as
/// a typical hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_cost_as_long_as_wrong_secrets() {
    let Some((plane, org, mut keys)) = start(Backend::Sqlite, |config| {
        let defaults = keyplane_control_plane::crypto::HashingParams::default();
        config.argon2_memory_kib = defaults.memory_kib;
        config.argon2_iterations = defaults.iterations;
        config.abuse.failures_per_key = 1000;
        config.abuse.suspect_hashes_per_second = 1000;
    })
    .await
    else {
        return;
    };
    let (_, token) = plane.create_key(&org, &[]).await;
    let unknown = unknown_token(&plane, &org).await;
    let median = |mut samples: Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let mut wrong = Vec::new();
    let mut missing = Vec::new();
    for attempt in 0..9 {
        let started = Instant::now();
        assert_eq!(verify(&mut keys, &wrong_secret(&token, attempt)).await, pb::VerifyFailure::BadSecret);
        wrong.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(verify(&mut keys, &unknown).await, pb::VerifyFailure::Unknown);
        missing.push(started.elapsed());
    }
    let (wrong, missing) = (median(wrong), median(missing));
    assert!(missing * 2 >= wrong, "unknown key id answered in {missing:?}, a wrong secret in {wrong:?}");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_learn_only_invalid_token_and_failures_are_logged() {
    let Some(plane) = TestControlPlane::start(Backend::Sqlite).await else { return };
    let org = random_org();
    let (revoked, revoked_token) = plane.create_key(&org, &[]).await;
    let (_, live_token) = plane.create_key(&org, &[]).await;
    plane
        .keys(&plane.root_token)
        .await
        .revoke_api_key(pb::RevokeApiKeyRequest { org_id: org.clone(), id: revoked.id, reason: String::new() })
        .await
        .unwrap();
    let unknown_token = unknown_token(&plane, &org).await;

    let quiet = TestSidecar::start(&plane, |_| {}).await;
    let chatty = TestSidecar::start(&plane, |config| config.expose_denial_reasons = true).await;
    let cases = [
        (revoked_token.as_str(), "revoked"),
        (unknown_token.as_str(), "unknown"),
        (&forge_secret(&live_token), "bad_secret"),
        ("kp_live_garbage", "malformed"),
    ];
    for (token, reason) in cases {
        let request_id = format!("req-{reason}");
        let response = quiet
            .http
            .get(format!("http://{}/check", quiet.http_addr))
            .header("authorization", format!("Bearer {token}"))
            .header("x-request-id", &request_id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let challenge = response.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert_eq!(challenge, r#"Bearer realm="keyplane", error="invalid_token""#);
        assert_eq!(response.text().await.unwrap().trim(), r#"{"error":"invalid_token"}"#, "{reason}");
        let exposed = chatty.check(token, None).await;
        assert_eq!(exposed.text().await.unwrap().trim(), format!(r#"{{"error":"{reason}"}}"#));
        // The reason, the peer and the request id go to the log, at WARN.
        let line = logs::captured()
            .lines()
            .find(|line| line.contains(&request_id))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no log line for {request_id}"));
        assert!(line.contains("WARN") && line.contains("authentication failed"), "{line}");
        assert!(line.contains(&format!("reason=\"{reason}\"")) || line.contains(&format!("reason={reason}")), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
    }
    // ext_authz gives the same generic answer.
    let mut authz = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", quiet.grpc_addr)).unwrap().connect().await.unwrap(),
    );
    let bearer = format!("Bearer {revoked_token}");
    let request = keyplane_tests::ext_authz_request(&[("authorization", &bearer)], &[]);
    let status = authz.check(request).await.unwrap().into_inner().status.unwrap();
    assert_eq!(status.message, "invalid_token");

    // Admin API: a bad credential is logged at WARN with peer and request id.
    let mut request = tonic::Request::new(pb::ListApiKeysRequest { org_id: org, ..Default::default() });
    request.metadata_mut().insert("authorization", format!("Bearer {unknown_token}").parse().unwrap());
    request.metadata_mut().insert("x-request-id", "req-admin-auth".parse().unwrap());
    let denied =
        pb::api_key_service_client::ApiKeyServiceClient::new(plane.channel().await).list_api_keys(request).await;
    assert_eq!(denied.unwrap_err().code(), tonic::Code::Unauthenticated);
    let line = logs::captured()
        .lines()
        .find(|line| line.contains("req-admin-auth") && line.contains("authentication failed"))
        .map(str::to_owned)
        .expect("admin authentication failure logged");
    assert!(line.contains("WARN") && line.contains("peer=127.0.0.1:"), "{line}");
    quiet.stop().await;
    chatty.stop().await;
    plane.stop().await;
}

/// A flood of bad tokens: every refusal is counted, the log gets a sample
/// (at most 10 lines a second), and the next line says how many it left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_tokens_is_counted_and_logged_as_a_sample() {
    const FLOOD: usize = 400;
    let Some(plane) = TestControlPlane::start(Backend::Sqlite).await else { return };
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let url = format!("http://{}/check", sidecar.http_addr);
    let before = sidecar.metric("keyplane_sidecar_checks_total", "reason=\"malformed\"").await;
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..8 {
        let (http, url) = (sidecar.http.clone(), url.clone());
        senders.spawn(async move {
            for i in (sender..FLOOD).step_by(8) {
                let response = http
                    .get(&url)
                    .header("authorization", "Bearer kp_live_garbage")
                    .header("x-request-id", format!("flood-{i}"))
                    .send()
                    .await
                    .expect("check");
                assert_eq!(response.status(), 401);
            }
        });
    }
    senders.join_all().await;
    let seconds = started.elapsed().as_secs() + 1;
    let counted = sidecar.metric("keyplane_sidecar_checks_total", "reason=\"malformed\"").await - before;
    assert_eq!(counted, FLOOD as f64, "every refusal is counted");
    let logged = logs::captured().lines().filter(|l| l.contains("request_id=flood-")).count() as u64;
    assert!((1..=10 * (seconds + 1)).contains(&logged), "{logged} lines for {FLOOD} refusals in {seconds} s");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = sidecar
        .http
        .get(&url)
        .header("authorization", "Bearer kp_live_garbage")
        .header("x-request-id", "flood-after")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    // Every refusal is in the log once: as a line or in a later line's count.
    let lines: Vec<String> =
        logs::captured().lines().filter(|l| l.contains("request_id=flood-")).map(str::to_owned).collect();
    assert!(lines.iter().any(|l| l.contains("flood-after")), "the line after the flood is logged");
    let left_out: u64 = lines
        .iter()
        .map(|l| l.split("left_out=").nth(1).and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok()).expect(l))
        .sum();
    assert_eq!(left_out + lines.len() as u64, FLOOD as u64 + 1, "{lines:#?}");
    assert!(left_out > 0);
    sidecar.stop().await;
    plane.stop().await;
}
