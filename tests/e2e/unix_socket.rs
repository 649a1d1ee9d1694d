//! The sidecar next to the application on Unix domain sockets: Envoy's
//! ext_authz over gRPC and forward-auth over HTTP, with no TCP port.

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use hyper_util::rt::TokioIo;
use keyplane_sidecar::config::ListenAddr;
use keyplane_tests::{Backend, TestControlPlane, ext_authz_request, random_org};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// `GET path` over the socket at `socket`; returns the status line.
async fn http_over_unix(socket: &PathBuf, path: &str, token: &str) -> String {
    let mut stream = UnixStream::connect(socket).await.expect("connect to the HTTP socket");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: sidecar\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_serves_on_unix_sockets() {
    let Some(plane) = TestControlPlane::start(Backend::Sqlite).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (grpc_socket, http_socket) = (dir.path().join("authz.sock"), dir.path().join("http.sock"));
    // A leftover socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&grpc_socket).unwrap());
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let credential_file = dir.path().join("credential");
    std::fs::write(&credential_file, &credential).unwrap();
    let config = keyplane_sidecar::Config::for_test(format!("http://{}", plane.addr), credential_file);
    let listeners = keyplane_sidecar::Listeners {
        grpc: keyplane_sidecar::Listener::bind(&ListenAddr::Unix(grpc_socket.clone())).await.unwrap(),
        http: keyplane_sidecar::Listener::bind(&ListenAddr::Unix(http_socket.clone())).await.unwrap(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(keyplane_sidecar::run(config, listeners, async {
        let _ = stopped.await;
    }));

    let (_, token) = plane.create_key(&random_org(), &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !http_over_unix(&http_socket, "/readyz", "").await.contains("200") {
        assert!(tokio::time::Instant::now() < deadline, "sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(http_over_unix(&http_socket, "/check", &token).await.contains("200"));
    assert!(http_over_unix(&http_socket, "/check", "kp_live_nope").await.contains("401"));

    let path = grpc_socket.clone();
    let channel = tonic::transport::Endpoint::from_static("http://sidecar")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("gRPC over the Unix socket");
    let bearer = format!("Bearer {token}");
    let allowed = AuthorizationClient::new(channel).check(ext_authz_request(&[("authorization", &bearer)], &[])).await;
    assert_eq!(allowed.unwrap().into_inner().status.unwrap().code, 0, "ext_authz allows over the socket");

    let _ = stop.send(());
    sidecar.await.unwrap().unwrap();
    plane.stop().await;
}

#[test]
fn listen_addresses_parse_from_the_command_line() {
    use clap::Parser;
    let config = keyplane_sidecar::Config::parse_from([
        "keyplane-sidecar",
        "--credential-file",
        "/dev/null",
        "--grpc-listen",
        "unix:/run/keyplane/authz.sock",
    ]);
    assert_eq!(config.grpc_listen, ListenAddr::Unix("/run/keyplane/authz.sock".into()));
    assert_eq!(config.http_listen.to_string(), "127.0.0.1:8081");
}
