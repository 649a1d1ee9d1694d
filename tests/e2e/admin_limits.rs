//! The admin API protects itself: a credential over its request rate gets
//! RESOURCE_EXHAUSTED with RetryInfo while other credentials carry on, the
//! sidecar protocol is not budgeted, and an address that keeps failing to
//! authenticate is refused for a back-off while other addresses are not.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync;
use keyplane_tests::{Authed, Backend, TestControlPlane, bearer, both_backends, random_org};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic_types::StatusExt;

both_backends!(a_credential_over_its_rate_waits_and_others_carry_on, an_address_failing_authentication_backs_off);

/// Requests per second of each credential in these tests.
const RATE: u32 = 5;
/// Failed authentications per minute from one address in these tests.
const FAILURES: u32 = 20;
const BACKOFF: Duration = Duration::from_secs(2);

async fn start(backend: Backend) -> Option<TestControlPlane> {
    TestControlPlane::start_with(backend, |config| {
        config.abuse.admin_requests_per_second = RATE;
        config.abuse.auth_failures_per_minute = FAILURES;
        config.abuse.auth_failure_backoff = BACKOFF;
    })
    .await
}

/// An API-key client authenticating with `token`, connecting from `source`.
async fn keys_from(
    plane: &TestControlPlane,
    source: IpAddr,
    token: &str,
) -> pb::api_key_service_client::ApiKeyServiceClient<Authed> {
    let channel = plane.endpoint().local_address(Some(source)).connect().await.expect("connect");
    pb::api_key_service_client::ApiKeyServiceClient::new(InterceptedService::new(channel, bearer(token)))
}

async fn list(
    keys: &mut pb::api_key_service_client::ApiKeyServiceClient<Authed>,
    org: &str,
) -> Result<(), tonic::Status> {
    let request = pb::ListApiKeysRequest { org_id: org.to_owned(), ..Default::default() };
    keys.list_api_keys(request).await.map(drop)
}

/// RESOURCE_EXHAUSTED whose RetryInfo asks for a wait of at most `longest`.
fn assert_told_to_wait(status: &tonic::Status, longest: Duration) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let wait = status.get_error_details().retry_info().and_then(|info| info.retry_delay).expect("RetryInfo");
    assert!(!wait.is_zero() && wait <= longest, "retry after {wait:?}");
}

async fn a_credential_over_its_rate_waits_and_others_carry_on(backend: Backend) {
    let Some(plane) = start(backend).await else { return };
    let org = random_org();
    let (_, other_token) = plane.create_key("keyplane", &["keyplane:admin"]).await;
    let (_, sidecar_token) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let (_, checked_token) = plane.create_key(&org, &[]).await;
    let mut root = plane.keys(&plane.root_token).await;
    let mut other = plane.keys(&other_token).await;

    let started = Instant::now();
    let (mut allowed, mut refused) = (0u32, 0u32);
    for _ in 0..40 {
        match list(&mut root, &org).await {
            Ok(()) => allowed += 1,
            Err(status) => {
                assert_told_to_wait(&status, Duration::from_secs(1));
                refused += 1;
            }
        }
    }
    // A burst of RATE, then RATE a second.
    let bound = RATE + (started.elapsed().as_secs_f64() * f64::from(RATE)).ceil() as u32;
    assert!(allowed <= bound, "{allowed} allowed in {:?}", started.elapsed());
    assert!(refused > 0);
    list(&mut other, &org).await.expect("another credential is not slowed");

    // The sidecar protocol follows traffic: never budgeted.
    let mut sidecar = plane.key_sync(&sidecar_token).await;
    for _ in 0..3 * RATE {
        let request = sync::VerifyRequest { token: checked_token.clone() };
        assert!(sidecar.verify(request).await.expect("sidecar verify").into_inner().valid);
    }
    assert_eq!(plane.metric("keyplane_admission_refused_total", "limit=\"credential\"").await, f64::from(refused));

    tokio::time::sleep(Duration::from_secs(1)).await;
    list(&mut root, &org).await.expect("the budget refills");
    plane.stop().await;
}

async fn an_address_failing_authentication_backs_off(backend: Backend) {
    let Some(plane) = start(backend).await else { return };
    let org = random_org();
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let bystander = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let (_, token) = plane.create_key(&org, &["keyplane:keys:read"]).await;
    // The owner has been using the key (wrong secrets for a key id never
    // lock out a secret already verified; see abuse.rs).
    let mut valid_from_bystander = keys_from(&plane, bystander, &token).await;
    list(&mut valid_from_bystander, &org).await.expect("the owner's call");
    let mut forged = keys_from(&plane, attacker, &keyplane_tests::forge_secret(&token)).await;

    let mut codes = Vec::new();
    for _ in 0..FAILURES + 5 {
        let status = list(&mut forged, &org).await.expect_err("a forged secret");
        codes.push(status.code());
        if status.code() == Code::ResourceExhausted {
            assert_told_to_wait(&status, BACKOFF);
        }
    }
    let failed = codes.iter().filter(|code| **code == Code::Unauthenticated).count();
    assert_eq!(failed, FAILURES as usize + 1, "the failure past the allowance starts the back-off: {codes:?}");
    assert!(codes[failed..].iter().all(|code| *code == Code::ResourceExhausted), "{codes:?}");

    // The address is refused whatever it sends; other addresses are not.
    let mut valid_from_attacker = keys_from(&plane, attacker, &token).await;
    let refused = list(&mut valid_from_attacker, &org).await.expect_err("backing off");
    assert_told_to_wait(&refused, BACKOFF);
    list(&mut valid_from_bystander, &org).await.expect("another address is not slowed");
    assert_eq!(
        plane.metric("keyplane_admission_refused_total", "limit=\"failed_authentications\"").await,
        (codes.len() - failed + 1) as f64
    );

    tokio::time::sleep(BACKOFF).await;
    list(&mut valid_from_attacker, &org).await.expect("after the back-off");
    plane.stop().await;
}
