//! Signing secrets: rotation with a grace period, and the official Standard Webhooks library verifying what Keyplane sends.

use std::time::Duration;

use keyplane_tests::receiver::{Received, Receiver};
use keyplane_tests::webhooks::{WAIT, publish, rotate_secret, subscribe, verifies_with};
use keyplane_tests::{Backend, both_backends, random_org, start_webhooks_or_skip};

both_backends!(rotated_secrets_sign_during_the_grace_period_only, standard_webhooks_library_verifies_deliveries,);

async fn rotated_secrets_sign_during_the_grace_period_only(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let (subscription, old_secret) = subscribe(&plane, &org, &receiver.url("/hook"), &["a.b"]).await;
    let new_secret = rotate_secret(&plane, &org, &subscription.id, Some(2)).await;
    assert_ne!(new_secret, old_secret);

    publish(&plane, &org, "a.b", "{}").await;
    let during = receiver.wait_for("/hook", 1, WAIT).await.remove(0);
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(verifies_with(&old_secret, &during) && verifies_with(&new_secret, &during));

    tokio::time::sleep(Duration::from_millis(2200)).await;
    publish(&plane, &org, "a.b", "{}").await;
    let after = receiver.wait_for("/hook", 2, WAIT).await.remove(1);
    assert_eq!(after.header("webhook-signature").split(' ').count(), 1);
    assert!(verifies_with(&new_secret, &after) && !verifies_with(&old_secret, &after));

    // A zero grace drops the old secret at once.
    let newest = rotate_secret(&plane, &org, &subscription.id, Some(0)).await;
    publish(&plane, &org, "a.b", "{}").await;
    let last = receiver.wait_for("/hook", 3, WAIT).await.remove(2);
    assert!(verifies_with(&newest, &last) && !verifies_with(&new_secret, &last));
}

async fn standard_webhooks_library_verifies_deliveries(backend: Backend) {
    if !keyplane_tests::tool_available("python3", &["-c", "import standardwebhooks"], "pip install standardwebhooks") {
        return;
    }
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let (subscription, old_secret) = subscribe(&plane, &org, &receiver.url("/hook"), &["order.*"]).await;
    publish(&plane, &org, "order.created", r#"{"id": 1, "total": 12.50, "note": "ünïcode ✓"}"#).await;
    // Signed before the rotation: only the old secret verifies it.
    receiver.wait_for("/hook", 1, WAIT).await;
    let new_secret = rotate_secret(&plane, &org, &subscription.id, None).await;
    publish(&plane, &org, "order.paid", r#"{"id": 1}"#).await;
    let received = receiver.wait_for("/hook", 2, WAIT).await;

    // The official library must accept each delivery with the secret the
    // subscriber holds (both secrets during the rotation), and reject a tampered body.
    let cases = serde_json::json!([
        case(&old_secret, &received[0], true),
        case(&old_secret, &received[1], true),
        case(&new_secret, &received[1], true),
        case(&new_secret, &received[0], false),
        { "secret": old_secret, "headers": headers(&received[0]), "body": "{\"tampered\":true}", "valid": false },
    ]);
    let script = r#"
import json, sys
from standardwebhooks import Webhook
for case in json.load(sys.stdin):
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        ok = True
    except Exception as error:
        ok = False
    if ok != case["valid"]:
        sys.exit(f"library said {ok} for a case expected {case['valid']}: {case['headers']}")
print("verified")
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(cases.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert!(
        output.status.success(),
        "standardwebhooks rejected: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn headers(request: &Received) -> serde_json::Value {
    serde_json::json!({
        "webhook-id": request.header("webhook-id"),
        "webhook-timestamp": request.header("webhook-timestamp"),
        "webhook-signature": request.header("webhook-signature"),
    })
}

fn case(secret: &str, request: &Received, valid: bool) -> serde_json::Value {
    serde_json::json!({
        "secret": secret,
        "headers": headers(request),
        "body": String::from_utf8(request.body.to_vec()).unwrap(),
        "valid": valid,
    })
}
