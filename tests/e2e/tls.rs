//! TLS on the control plane's gRPC listener with certificates made in the
//! test: sidecars over `https://`, mTLS refusing sidecars without a client
//! certificate, a wrong CA failing clearly, rotation without a restart, and
//! start-up errors instead of silent downgrades; the console on the same
//! certificate.

use std::path::Path;
use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::certs::{self, TestCa};
use keyplane_tests::console::ConsoleClient;
use keyplane_tests::{Backend, TestControlPlane, TestSidecar, logs, random_org};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Server certificate files signed by `ca`, written into `dir`.
fn server_files(dir: &Path, ca: &TestCa) -> (std::path::PathBuf, std::path::PathBuf) {
    let pair = ca.server("keyplane control plane");
    (certs::write(dir, "server.pem", &pair.cert), certs::write(dir, "server.key", &pair.key))
}

/// Whether a connection to `endpoint` and a health call over it succeed.
async fn health_over(endpoint: tonic::transport::Endpoint) -> bool {
    let Ok(channel) = endpoint.connect().await else { return false };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest::default()).await.is_ok()
}

fn trusting(ca: &TestCa) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()))
}

/// Starts a TLS control plane (SQLite) with `client_ca` for mTLS; the
/// harness's own clients trust `ca` and present `identity`.
async fn start_tls(
    dir: &Path,
    ca: &TestCa,
    client_ca: Option<&TestCa>,
    identity: Option<Identity>,
) -> TestControlPlane {
    let (cert, key) = server_files(dir, ca);
    let client_ca_file = client_ca.map(|client_ca| certs::write(dir, "client-ca.pem", &client_ca.pem()));
    let mut client_tls = trusting(ca);
    if let Some(identity) = identity {
        client_tls = client_tls.identity(identity);
    }
    TestControlPlane::start_with_tls(Backend::Sqlite, Some(client_tls), |config| {
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
        config.tls.client_ca_file = client_ca_file;
    })
    .await
    .expect("SQLite is always available")
}

/// Sidecar settings for an `https://` control plane, trusting `ca_file`.
fn over_tls(plane: &TestControlPlane, ca_file: &Path) -> impl FnOnce(&mut keyplane_sidecar::Config) + use<> {
    let (url, ca_file) = (format!("https://{}", plane.addr), ca_file.to_path_buf());
    move |config| {
        config.control_plane = vec![url];
        config.control_plane_ca_file = Some(ca_file);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_and_admin_clients_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let plane = start_tls(dir.path(), &ca, None, None).await;
    let ca_file = certs::write(dir.path(), "ca.pem", &ca.pem());
    // Admin calls over TLS (the harness client trusts the CA).
    let (_, token) = plane.create_key(&random_org(), &["orders:read"]).await;
    // A sidecar over https:// verifies the key and follows the stream.
    let sidecar = TestSidecar::start(&plane, over_tls(&plane, &ca_file)).await;
    assert_eq!(sidecar.check_status(&token).await, 200);
    // Plaintext to a TLS listener gets nowhere.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{}", plane.addr)).unwrap();
    assert!(!health_over(plaintext).await, "plaintext must not be served");
    sidecar.stop().await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_sidecars_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, client_ca) = (TestCa::new("server CA"), TestCa::new("sidecar CA"));
    let admin = client_ca.client("admin tool");
    let plane = start_tls(dir.path(), &ca, Some(&client_ca), Some(Identity::from_pem(&admin.cert, &admin.key))).await;
    let ca_file = certs::write(dir.path(), "ca.pem", &ca.pem());
    let (_, token) = plane.create_key(&random_org(), &[]).await;
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;

    // No client certificate: the handshake is refused, the sidecar never syncs.
    let without = TestSidecar::start_unready(&plane, &credential, over_tls(&plane, &ca_file)).await;
    // A certificate from another CA: refused the same way.
    let stranger = TestCa::new("someone else").client("stranger");
    let (stranger_cert, stranger_key) = (
        certs::write(dir.path(), "stranger.pem", &stranger.cert),
        certs::write(dir.path(), "stranger.key", &stranger.key),
    );
    let with_foreign = TestSidecar::start_unready(&plane, &credential, |config| {
        over_tls(&plane, &ca_file)(config);
        config.tls_client_cert_file = Some(stranger_cert);
        config.tls_client_key_file = Some(stranger_key);
    })
    .await;
    // A certificate from the client CA: accepted.
    let good = client_ca.client("sidecar-1");
    let (good_cert, good_key) =
        (certs::write(dir.path(), "sidecar.pem", &good.cert), certs::write(dir.path(), "sidecar.key", &good.key));
    let with_cert = TestSidecar::start_unready(&plane, &credential, |config| {
        over_tls(&plane, &ca_file)(config);
        config.tls_client_cert_file = Some(good_cert);
        config.tls_client_key_file = Some(good_key);
    })
    .await;
    with_cert.wait_ready().await;
    assert_eq!(with_cert.check_status(&token).await, 200);
    for refused in [&without, &with_foreign] {
        assert_eq!(refused.get("/readyz").await.0, 503, "a sidecar without a valid client certificate synced");
        assert_eq!(refused.check_status(&token).await, 503);
    }
    assert!(logs::captured().contains("TLS handshake refused"), "the server logs refused handshakes");
    for sidecar in [without, with_foreign, with_cert] {
        sidecar.stop().await;
    }
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("real CA");
    let plane = start_tls(dir.path(), &ca, None, None).await;
    let wrong = certs::write(dir.path(), "wrong-ca.pem", &TestCa::new("wrong CA").pem());
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let sidecar = TestSidecar::start_unready(&plane, &credential, over_tls(&plane, &wrong)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // The sidecar's log names the cause, not just "transport error".
    while !logs::captured().contains("UnknownIssuer") {
        assert!(tokio::time::Instant::now() < deadline, "no certificate error logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logs::captured().contains("invalid peer certificate"));
    assert_eq!(sidecar.get("/readyz").await.0, 503);
    sidecar.stop().await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_picked_up_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let plane = start_tls(dir.path(), &old_ca, None, None).await;
    let ok = |tls: ClientTlsConfig| {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", plane.addr)).unwrap();
        health_over(endpoint.tls_config(tls).unwrap())
    };
    assert!(ok(trusting(&old_ca)).await);
    assert!(!ok(trusting(&new_ca)).await, "the new CA is not trusted yet");

    // cert-manager style: new files replace the old ones in place.
    server_files(dir.path(), &new_ca);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok(trusting(&new_ca)).await {
        assert!(tokio::time::Instant::now() < deadline, "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!ok(trusting(&old_ca)).await, "new connections get the new certificate");
    // A broken rotation keeps the last good certificate.
    certs::write(dir.path(), "server.pem", "not a certificate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ok(trusting(&new_ca)).await);
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_that_cannot_be_honoured_stop_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let credential = certs::write(dir.path(), "credential", "kp_live_x");
    let ca_file = certs::write(dir.path(), "ca.pem", &TestCa::new("ca").pem());
    let garbage = certs::write(dir.path(), "garbage.pem", "-----BEGIN NOTHING-----");
    type Adjust<'a> = Box<dyn Fn(&mut keyplane_sidecar::Config) + 'a>;
    let cases: [(&str, Adjust); 3] = [
        ("need an https:// control plane", Box::new(|config| config.control_plane_ca_file = Some(ca_file.clone()))),
        (
            "does not hold PEM certificates",
            Box::new(|config| {
                config.control_plane = vec!["https://127.0.0.1:1".into()];
                config.control_plane_ca_file = Some(garbage.clone());
            }),
        ),
        ("use an http:// or https:// URL", Box::new(|config| config.control_plane = vec!["ftp://127.0.0.1:1".into()])),
    ];
    for (expected, adjust) in cases {
        let mut config = keyplane_sidecar::Config::for_test("http://127.0.0.1:1".into(), credential.clone());
        adjust(&mut config);
        let listeners = keyplane_sidecar::Listeners {
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().into(),
            http: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().into(),
        };
        let error = keyplane_sidecar::run(config, listeners, std::future::pending()).await.unwrap_err();
        assert!(error.to_string().contains(expected), "{expected:?} not in {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_non_loopback_address_is_warned_about() {
    let plane = TestControlPlane::start_with(Backend::Sqlite, |config| {
        config.listen = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    })
    .await
    .unwrap();
    let log = logs::captured();
    assert!(log.contains("serving plaintext gRPC on a non-loopback address"), "no warning logged");
    let mut keys = plane.keys(&plane.root_token).await;
    assert!(keys.list_api_keys(pb::ListApiKeysRequest { org_id: random_org(), ..Default::default() }).await.is_ok());
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_over_the_same_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let plane = start_tls(dir.path(), &ca, None, None).await;
    let console = ConsoleClient::over_tls(plane.console_addr, &ca.pem());
    let signed_in = console.sign_in(&plane.root_token).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let cookie = signed_in.header("set-cookie");
    assert!(cookie.contains("; Secure"), "session cookies over TLS are Secure: {cookie}");
    assert_eq!(signed_in.header("strict-transport-security"), "max-age=31536000");
    // Plain HTTP to the console's port gets no page.
    let plain = reqwest::Client::new().get(format!("http://{}/login", plane.console_addr)).send().await;
    assert!(plain.is_err(), "plaintext must not be served: {plain:?}");
    plane.stop().await;
}
