//! Secrets never reach storage in plaintext, list responses, audit metadata
//! or logs: after a full lifecycle of keys and webhook subscriptions, dump
//! every table and the captured logs and look for every token, webhook
//! secret and the root token.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, both_backends, random_org, start_or_skip};

both_backends!(no_secret_in_tables_or_logs);

async fn no_secret_in_tables_or_logs(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (_, admin) = plane.create_key("keyplane", &["keyplane:admin"]).await;
    let mut keys = plane.keys(&admin).await;
    let created = plane.create_recoverable_key(&admin, &org).await;
    let id = created.api_key.unwrap().id;
    let revealed = keys
        .reveal_api_key(pb::RevealApiKeyRequest { org_id: org.clone(), id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(revealed, created.token);
    let rotated = keys
        .rotate_api_key(pb::RotateApiKeyRequest { org_id: org.clone(), id: id.clone(), grace_period: None })
        .await
        .unwrap()
        .into_inner();
    // Failed verifications and bad credentials must not log what was sent either.
    let forged = keyplane_tests::forge_secret(&created.token);
    keys.verify_api_key(pb::VerifyApiKeyRequest { token: forged.clone(), ..Default::default() }).await.unwrap();
    let _ = plane.keys(&forged).await.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap_err();
    // Webhook secrets: created, rotated, used to sign a delivery.
    let mut webhooks = plane.webhooks(&admin).await;
    let subscription = webhooks
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.clone(),
            url: format!("https://hooks.example.com/{}", org),
            event_types: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let subscription_id = subscription.subscription.as_ref().unwrap().id.clone();
    let rotated_secret = webhooks
        .rotate_subscription_secret(pb::RotateSubscriptionSecretRequest {
            org_id: org.clone(),
            id: subscription_id.clone(),
            grace_period: None,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let subscriptions = webhooks
        .list_subscriptions(pb::ListSubscriptionsRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let fetched = webhooks
        .get_subscription(pb::GetSubscriptionRequest { org_id: org.clone(), id: subscription_id })
        .await
        .unwrap()
        .into_inner();
    let webhook_secrets = [subscription.secret.clone(), rotated_secret.clone()];
    // The key bytes without the `whsec_` prefix, as base64.
    let webhook_key_parts: Vec<String> = webhook_secrets.iter().map(|s| s["whsec_".len()..].to_owned()).collect();

    let listed = keys
        .list_api_keys(pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let events = plane
        .audit(&admin)
        .await
        .list_audit_events(pb::ListAuditEventsRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();

    let secrets = [created.token.clone(), rotated.token.clone(), admin.clone(), plane.root_token.clone(), forged];
    // The secret part alone (what argon2 hashes) must not appear either.
    let secret_parts: Vec<String> = secrets[..3].iter().map(|t| t[t.len() - 49..t.len() - 6].to_owned()).collect();
    let haystacks = [
        ("database", plane.dump_database().await),
        ("logs", keyplane_tests::logs::captured()),
        ("list response", format!("{listed:?}")),
        ("audit events", format!("{events:?}")),
        ("subscription list", format!("{subscriptions:?}")),
        ("subscription", format!("{fetched:?}")),
    ];
    for (place, text) in &haystacks {
        for secret in secrets.iter().chain(&secret_parts).chain(&webhook_secrets).chain(&webhook_key_parts) {
            assert!(!text.contains(secret.as_str()), "a secret appears in the {place}");
        }
    }
    plane.stop().await;
}
