//! The shipped proxy examples, run for real: nginx with `auth_request`
//! (sidecar/examples/nginx.conf) in front of an echo application.

use keyplane_tests::{Backend, TestSidecar, both_backends, random_org, start_or_skip};

both_backends!(nginx_auth_request_example);

async fn nginx_auth_request_example(backend: Backend) {
    if !keyplane_tests::tool_available("nginx", &["-v"], "apt-get install nginx") {
        return;
    }
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let app = keyplane_tests::echo::start().await;
    let org = random_org();
    let (key, token) = plane.create_key(&org, &["orders:read"]).await;
    let (_, unscoped) = plane.create_key(&org, &["other"]).await;

    // The example as shipped, with this test's addresses.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../sidecar/examples/nginx.conf")).unwrap();
    let config = example
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
    let started = std::process::Command::new("nginx").args(["-p", &prefix, "-c"]).arg(&config_path).status().unwrap();
    assert!(started.success(), "nginx started");
    let stop = scopeguard(move || {
        let _ = std::process::Command::new("nginx")
            .args(["-p", &prefix, "-c"])
            .arg(&config_path)
            .args(["-s", "stop"])
            .status();
    });

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/orders/7");
    let allowed = client.get(&url).bearer_auth(&token).header("x-keyplane-org-id", "spoofed").send().await.unwrap();
    assert_eq!(allowed.status().as_u16(), 200);
    let seen: serde_json::Value = allowed.json().await.unwrap();
    assert_eq!(seen["x-keyplane-key-id"], key.id.as_str());
    assert_eq!(seen["x-keyplane-org-id"], org.as_str(), "the client's value is overwritten");
    assert_eq!(seen["x-keyplane-scopes"], "orders:read");
    assert!(seen.get("authorization").is_none(), "the API key never reaches the app: {seen}");

    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    assert!(missing.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer realm=\"keyplane\""));
    assert_eq!(client.get(&url).bearer_auth(&unscoped).send().await.unwrap().status().as_u16(), 403);
    drop(stop);
    sidecar.stop().await;
    plane.stop().await;
}

/// Runs `f` when dropped (stops nginx even if an assertion fails).
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
