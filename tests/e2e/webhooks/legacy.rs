//! Receivers written before Standard Webhooks: a subscription signs with a
//! legacy HMAC header and an imported secret, verifiers written the way
//! those teams wrote them (a few lines of Python `hmac`) accept what
//! Keyplane sends, the standard headers still verify beside it, and the
//! switch to Standard Webhooks drops the legacy header.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::webhooks::{WAIT, deliveries_of, publish, verifies_with};
use keyplane_tests::{Backend, TestControlPlane, assert_invalid_field, both_backends, eventually, random_org};
use pb::signature_scheme::Scheme;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

both_backends!(legacy_verifiers_accept_deliveries, legacy_schemes_are_checked_and_switched);

/// The secret the old system gave its customers (raw text, not `whsec_`).
const SECRET: &str = "cc_whsec_7f3a9c2e-legacy-secret-kept-by-customers";

/// A Python receiver checking a legacy signature (`tests/receivers/legacy_verifier.py`).
struct Verifier {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl Verifier {
    async fn start(secret: &str, args: &[&str]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/receivers/legacy_verifier.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .env("WEBHOOK_SECRET", secret)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next_line().await.expect("read").expect("the verifier printed nothing");
        let port = first.strip_prefix("listening ").expect("listening PORT");
        Self { _child: child, lines, url: format!("http://127.0.0.1:{port}/hook") }
    }

    /// Its verdict on the next request.
    async fn verdict(&mut self) -> String {
        let line = tokio::time::timeout(WAIT, self.lines.next_line()).await.expect("a request within the wait");
        line.expect("read").expect("verifier exited")
    }
}

fn hmac_header(header: &str, encoding: pb::SignatureEncoding, signed: pb::SignedContent) -> pb::HmacHeaderScheme {
    pb::HmacHeaderScheme {
        header: header.into(),
        encoding: encoding.into(),
        signed_content: signed.into(),
        ..Default::default()
    }
}

fn scheme(header: pb::HmacHeaderScheme) -> Option<pb::SignatureScheme> {
    Some(pb::SignatureScheme { scheme: Some(Scheme::HmacHeader(header)) })
}

async fn create(
    plane: &TestControlPlane,
    org: &str,
    url: &str,
    signature_scheme: Option<pb::SignatureScheme>,
    secret: &str,
) -> Result<pb::CreateSubscriptionResponse, tonic::Status> {
    let request = pb::CreateSubscriptionRequest {
        org_id: org.to_owned(),
        url: url.to_owned(),
        event_types: vec!["order.*".into()],
        signature_scheme,
        secret: secret.to_owned(),
        ..Default::default()
    };
    plane.webhooks(&plane.root_token).await.create_subscription(request).await.map(tonic::Response::into_inner)
}

async fn legacy_verifiers_accept_deliveries(backend: Backend) {
    if !keyplane_tests::tool_available("python3", &["--version"], "apt install python3") {
        return;
    }
    let plane = keyplane_tests::start_webhooks_or_skip!(backend);
    let org = random_org();
    use pb::SignatureEncoding::{Base64, Hex};
    use pb::SignedContent::{Body, TimestampDotBody};
    // Hex over the body; base64 over "timestamp.body" with its own
    // timestamp header; GitHub's `sha256=` prefix.
    let stamped = pb::HmacHeaderScheme {
        timestamp_header: "X-DCVaaS-Timestamp".into(),
        ..hmac_header("X-DCVaaS-Signature", Base64, TimestampDotBody)
    };
    let prefixed = pb::HmacHeaderScheme { prefix: "sha256=".into(), ..hmac_header("X-Hub-Signature-256", Hex, Body) };
    let cases = [
        (hmac_header("X-Webhook-Signature", Hex, Body), vec!["X-Webhook-Signature", "hex", "body"]),
        (stamped, vec!["X-DCVaaS-Signature", "base64", "timestamp", "X-DCVaaS-Timestamp"]),
        (prefixed, vec!["X-Hub-Signature-256", "hex", "body", "", "sha256="]),
    ];
    let mut verifiers = Vec::new();
    for (header, args) in cases {
        let verifier = Verifier::start(SECRET, &args).await;
        let created = create(&plane, &org, &verifier.url, scheme(header), SECRET).await.expect("create");
        verifiers.push((verifier, created.subscription.expect("subscription").id));
    }
    // A receiver holding another secret refuses: the verifiers can say no.
    let wrong = Verifier::start("another-secret-of-enough-length", &["X-Webhook-Signature", "hex", "body"]).await;
    let created = create(&plane, &org, &wrong.url, scheme(hmac_header("X-Webhook-Signature", Hex, Body)), SECRET).await;
    let wrong_id = created.expect("create").subscription.expect("subscription").id;

    publish(&plane, &org, "order.created", r#"{"id": 7, "note": "ünïcode ✓"}"#).await;
    for (verifier, id) in &mut verifiers {
        assert_eq!(verifier.verdict().await, "valid", "subscription {id}");
        let succeeded = pb::DeliveryStatus::Succeeded as i32;
        eventually(|| deliveries_of(&plane, &org, id), |d| d.len() == 1 && d[0].status == succeeded).await;
    }
    let mut wrong = wrong;
    assert_eq!(wrong.verdict().await, "invalid");
    let refused =
        eventually(|| deliveries_of(&plane, &org, &wrong_id), |d| d.len() == 1 && d[0].attempt_count >= 1).await;
    assert_ne!(refused[0].status, pb::DeliveryStatus::Succeeded as i32);
    plane.stop().await;
}

async fn legacy_schemes_are_checked_and_switched(backend: Backend) {
    let plane = keyplane_tests::start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let url = receiver.url("/hook");
    use pb::SignatureEncoding::Hex;
    use pb::SignedContent::Body;

    // Bad schemes and secrets name their fields; the secret is never quoted.
    let taken = scheme(hmac_header("Webhook-Signature", Hex, Body));
    let error = create(&plane, &org, &url, taken, "").await.unwrap_err();
    assert_invalid_field(&error, "signature_scheme.hmac_header.header");
    let unknown = scheme(pb::HmacHeaderScheme { encoding: 9, ..hmac_header("X-Sig", Hex, Body) });
    let error = create(&plane, &org, &url, unknown, "").await.unwrap_err();
    assert_invalid_field(&error, "signature_scheme.hmac_header.encoding");
    let error = create(&plane, &org, &url, None, "tiny-s3cret").await.unwrap_err();
    assert_invalid_field(&error, "secret");
    assert!(!format!("{error:?}").contains("tiny-s3cret"), "{error:?}");

    // An imported secret signs both the legacy and the standard headers.
    let header = hmac_header("X-Webhook-Signature", Hex, Body);
    let created = create(&plane, &org, &url, scheme(header.clone()), SECRET).await.expect("create");
    let subscription = created.subscription.expect("subscription");
    assert_eq!(
        subscription.signature_scheme,
        scheme(pb::HmacHeaderScheme { header: "x-webhook-signature".into(), ..header })
    );
    assert!(created.secret.starts_with("whsec_"), "shown in the form Standard Webhooks libraries take");
    publish(&plane, &org, "order.created", "{}").await;
    let first = receiver.wait_for("/hook", 1, WAIT).await.remove(0);
    assert_eq!(first.header("x-webhook-signature").len(), 64, "hex HMAC-SHA256");
    assert!(verifies_with(&created.secret, &first), "the standard signature verifies with the same secret");

    // The switch: the legacy header is gone, the standard one stays.
    let bad =
        pb::SubscriptionUpdate { signature_scheme: scheme(pb::HmacHeaderScheme::default()), ..Default::default() };
    let mut client = plane.webhooks(&plane.root_token).await;
    let update = |update: pb::SubscriptionUpdate| pb::UpdateSubscriptionRequest {
        org_id: org.clone(),
        id: subscription.id.clone(),
        update: Some(update),
        update_mask: Some(prost_types::FieldMask { paths: vec!["signature_scheme".into()] }),
    };
    let error = client.update_subscription(update(bad)).await.unwrap_err();
    assert_invalid_field(&error, "update.signature_scheme.hmac_header.header");
    let switched = client.update_subscription(update(pb::SubscriptionUpdate::default())).await.expect("switch");
    let standard = pb::SignatureScheme { scheme: Some(Scheme::StandardWebhooks(pb::StandardWebhooksScheme {})) };
    assert_eq!(switched.into_inner().subscription.expect("subscription").signature_scheme, Some(standard));
    publish(&plane, &org, "order.created", "{}").await;
    let second = receiver.wait_for("/hook", 2, WAIT).await.remove(1);
    assert!(second.header("x-webhook-signature").is_empty());
    assert!(verifies_with(&created.secret, &second));

    // The imported secret is in no audit record or listing.
    let audit = format!("{:?}", plane.audit_events(&org, "").await);
    assert!(audit.contains("imported") && audit.contains("signature_scheme"), "{audit}");
    let listed = client
        .list_subscriptions(pb::ListSubscriptionsRequest { org_id: org.clone(), ..Default::default() })
        .await
        .expect("list");
    for text in [audit, format!("{listed:?}")] {
        assert!(!text.contains(SECRET) && !text.contains(&created.secret), "a secret leaked: {text}");
    }
    plane.stop().await;
}
