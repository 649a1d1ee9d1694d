//! The shipped proxy examples, run for real and unchanged but for their
//! addresses: nginx with `auth_request` (sidecar/examples/nginx.conf) and
//! Caddy with `forward_auth` (sidecar/examples/Caddyfile), in front of an
//! echo application, attacked with spoofed identity, scope and forwarding
//! headers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, TestControlPlane, TestSidecar, both_backends, random_org, start_or_skip};

both_backends!(nginx_auth_request_example, caddy_forward_auth_example);

/// Where the test's client connects from: not the proxy's own address
/// (127.0.0.1, the sidecar's trusted proxy), as a real client would not be.
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../sidecar/examples/{name}", env!("CARGO_MANIFEST_DIR"))).expect("example")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn nginx_auth_request_example(backend: Backend) {
    if !keyplane_tests::tool_available("nginx", &["-v"], "apt-get install nginx") {
        return;
    }
    let plane = start_or_skip!(backend);
    let (sidecar, app) = sidecar_and_app(&plane).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = example("nginx.conf")
        .replace(
            "events {}",
            &format!("events {{}}\npid {0}/nginx.pid;\nerror_log {0}/error.log;", dir.path().display()),
        )
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};\n    access_log off;"))
        .replace("127.0.0.1:8081", &sidecar.http_addr.to_string())
        .replace("127.0.0.1:3000", &app.to_string());
    let config_path = dir.path().join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();
    let prefix = dir.path().display().to_string();
    let started = Command::new("nginx").args(["-p", &prefix, "-c"]).arg(&config_path).status().unwrap();
    assert!(started.success(), "nginx started");
    let _stop = scopeguard(move || {
        let _ = Command::new("nginx").args(["-p", &prefix, "-c"]).arg(&config_path).args(["-s", "stop"]).status();
    });
    attack(&plane, SocketAddr::from(([127, 0, 0, 1], port))).await;
    sidecar.stop().await;
    plane.stop().await;
}

async fn caddy_forward_auth_example(backend: Backend) {
    if !keyplane_tests::tool_available("caddy", &["version"], "apt-get install caddy") {
        return;
    }
    let plane = start_or_skip!(backend);
    let (sidecar, app) = sidecar_and_app(&plane).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = example("Caddyfile")
        .replace(":8080 {", &format!("{{\n\tadmin off\n}}\n\nhttp://127.0.0.1:{port} {{"))
        .replace("127.0.0.1:8081", &sidecar.http_addr.to_string())
        .replace("127.0.0.1:3000", &app.to_string());
    let config_path = dir.path().join("Caddyfile");
    std::fs::write(&config_path, config).unwrap();
    let caddy = start_caddy(&config_path, dir.path());
    let _stop = scopeguard(move || stop(caddy));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "caddy did not start listening");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    attack(&plane, addr).await;
    sidecar.stop().await;
    plane.stop().await;
}

fn start_caddy(config: &Path, home: &Path) -> Child {
    Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(config)
        .env("HOME", home)
        .env("XDG_DATA_HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start caddy")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A sidecar that trusts the proxies' address (127.0.0.1) and the echo app.
async fn sidecar_and_app(plane: &TestControlPlane) -> (TestSidecar, SocketAddr) {
    let sidecar =
        TestSidecar::start(plane, |config| config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    (sidecar, keyplane_tests::echo::start().await)
}

async fn create(
    plane: &TestControlPlane,
    org: &str,
    scopes: &[&str],
    cidrs: &[&str],
    identity: &str,
) -> (pb::ApiKey, String) {
    let request = pb::CreateApiKeyRequest {
        org_id: org.into(),
        name: "proxied".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        allowed_cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
        identity_id: identity.into(),
        ..Default::default()
    };
    let created = plane.keys(&plane.root_token).await.create_api_key(request).await.expect("create").into_inner();
    (created.api_key.expect("key"), created.token)
}

/// What a client may try through the proxy at `proxy`, and what must hold.
async fn attack(plane: &TestControlPlane, proxy: SocketAddr) {
    let org = random_org();
    let mut identities = plane.identities(&plane.root_token).await;
    let identity = identities.create_identity(pb::CreateIdentityRequest {
        org_id: org.clone(),
        external_id: "cust_real".into(),
        ..Default::default()
    });
    let identity = identity.await.expect("identity").into_inner().identity.expect("identity");
    let (key, token) = create(plane, &org, &["orders:read"], &[], "").await;
    let (_, unscoped) = create(plane, &org, &["billing:read"], &[], "").await;
    let (_, elsewhere) = create(plane, &org, &["orders:read"], &["203.0.113.7/32"], "").await;
    let (_, here) = create(plane, &org, &["orders:read"], &[&format!("{CLIENT}/32")], "").await;
    let (with_identity, customer) = create(plane, &org, &["orders:read"], &[], &identity.id).await;

    let client = reqwest::Client::builder().local_address(IpAddr::V4(CLIENT)).build().unwrap();
    let url = format!("http://{proxy}/orders/7");
    let get = |token: &str, headers: &[(&str, &str)]| {
        let mut request = client.get(&url).bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    // Identity headers: every one the client sends is overwritten or removed.
    let spoofed = [
        ("x-keyplane-key-id", "key_victim"),
        ("x-keyplane-org-id", "victim"),
        ("x-keyplane-scopes", "keyplane:admin"),
        ("x-keyplane-environment", "test"),
        ("x-keyplane-identity", "cust_victim"),
        ("x-keyplane-identity-id", "idn_victim"),
    ];
    let allowed = get(&token, &spoofed).await.unwrap();
    assert_eq!(allowed.status().as_u16(), 200);
    let seen: serde_json::Value = allowed.json().await.unwrap();
    assert_eq!(seen["x-keyplane-key-id"], key.id.as_str());
    assert_eq!(seen["x-keyplane-org-id"], org.as_str());
    assert_eq!(seen["x-keyplane-scopes"], "orders:read");
    assert_eq!(seen["x-keyplane-environment"], "live");
    for name in ["x-keyplane-identity", "x-keyplane-identity-id"] {
        assert!(seen.get(name).is_none_or(|v| v == ""), "a key without an identity: {name} must not pass: {seen}");
    }
    assert!(seen.get("authorization").is_none(), "the API key never reaches the app: {seen}");
    let with = get(&customer, &spoofed).await.unwrap().json::<serde_json::Value>().await.unwrap();
    assert_eq!(with["x-keyplane-identity"], "cust_real");
    assert_eq!(with["x-keyplane-identity-id"], identity.id.as_str());
    assert_eq!(with["x-keyplane-key-id"], with_identity.id.as_str());

    // The route's scopes: the client can neither replace nor empty them.
    for lifted in ["", ",", "billing:read"] {
        let status = get(&unscoped, &[("x-required-scopes", lifted)]).await.unwrap().status().as_u16();
        assert_eq!(status, 403, "X-Required-Scopes {lifted:?} from the client");
    }

    // Forwarding headers: the proxy's view of the client wins.
    let forged = [("x-forwarded-for", "203.0.113.7"), ("x-real-ip", "203.0.113.7")];
    assert_eq!(get(&elsewhere, &forged).await.unwrap().status().as_u16(), 403, "a forged X-Forwarded-For");
    assert_eq!(get(&elsewhere, &[]).await.unwrap().status().as_u16(), 403);
    let noise = [("x-forwarded-for", "198.51.100.1"), ("x-real-ip", "198.51.100.1")];
    assert_eq!(get(&here, &noise).await.unwrap().status().as_u16(), 200, "the proxy saw {CLIENT}");

    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    assert!(missing.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer realm=\"keyplane\""));
}

/// Runs `f` when dropped (stops the proxy even if an assertion fails).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
