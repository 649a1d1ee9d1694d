//! Bad input gets INVALID_ARGUMENT with a BadRequest violation naming the field,
//! and nothing is written.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, assert_invalid_field, both_backends, random_org, start_or_skip, timestamp_in};

both_backends!(each_bad_field_is_named, edge_cases_are_refused_alike_on_both_databases);

fn duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

async fn each_bad_field_is_named(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (key, _) = plane.create_key(&org, &[]).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let create = |change: fn(&mut pb::CreateApiKeyRequest)| {
        let mut request = pb::CreateApiKeyRequest { org_id: org.clone(), name: "ok".into(), ..Default::default() };
        change(&mut request);
        request
    };
    let big_metadata = serde_json::json!({ "blob": "x".repeat(17 * 1024) });
    let cases: Vec<(&str, pb::CreateApiKeyRequest)> = vec![
        ("name", create(|r| r.name = String::new())),
        ("name", create(|r| r.name = "n".repeat(201))),
        ("description", create(|r| r.description = "d".repeat(2001))),
        ("scopes[1]", create(|r| r.scopes = vec!["ok:scope".into(), "bad scope".into()])),
        ("scopes[0]", create(|r| r.scopes = vec!["keyplane:keys:destroy".into()])),
        (
            "expires_at",
            create(|r| {
                r.expiry =
                    Some(pb::create_api_key_request::Expiry::ExpiresAt(timestamp_in(chrono::Duration::seconds(-5))))
            }),
        ),
        ("ttl", create(|r| r.expiry = Some(pb::create_api_key_request::Expiry::Ttl(duration(5))))),
        ("ttl", create(|r| r.expiry = Some(pb::create_api_key_request::Expiry::Ttl(duration(11 * 365 * 86_400))))),
        ("ttl", create(|r| r.expiry = Some(pb::create_api_key_request::Expiry::Ttl(duration(-60))))),
        ("environment", create(|r| r.environment = 7)),
        (
            "rate_limit.requests",
            create(|r| {
                r.rate_limit = Some(pb::RateLimit { requests: 0, window: Some(duration(1)), ..Default::default() })
            }),
        ),
        (
            "rate_limit.window",
            create(|r| {
                r.rate_limit = Some(pb::RateLimit { requests: 5, window: Some(duration(0)), ..Default::default() })
            }),
        ),
        ("org_id", create(|r| r.org_id = String::new())),
        ("org_id", create(|r| r.org_id = "has space".into())),
    ];
    for (field, request) in cases {
        let status = keys.create_api_key(request).await.unwrap_err();
        assert_invalid_field(&status, field);
    }
    let mut oversized = create(|_| {});
    oversized.metadata = keyplane_control_plane::grpc::convert::json_to_struct(&big_metadata);
    assert_invalid_field(&keys.create_api_key(oversized).await.unwrap_err(), "metadata");

    let list = |change: fn(&mut pb::ListApiKeysRequest)| {
        let mut request = pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() };
        change(&mut request);
        request
    };
    assert_invalid_field(&keys.list_api_keys(list(|r| r.page_size = 1001)).await.unwrap_err(), "page_size");
    assert_invalid_field(
        &keys.list_api_keys(list(|r| r.page_token = "not-a-token".into())).await.unwrap_err(),
        "page_token",
    );
    assert_invalid_field(&keys.list_api_keys(list(|r| r.environment = 9)).await.unwrap_err(), "environment");
    assert_invalid_field(&keys.list_api_keys(list(|r| r.status = 9)).await.unwrap_err(), "status");

    let update = |paths: &[&str], update: pb::ApiKeyUpdate| pb::UpdateApiKeyRequest {
        org_id: org.clone(),
        id: key.id.clone(),
        update: Some(update),
        update_mask: Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() }),
    };
    assert_invalid_field(
        &keys.update_api_key(update(&["status"], Default::default())).await.unwrap_err(),
        "update_mask",
    );
    assert_invalid_field(&keys.update_api_key(update(&[], Default::default())).await.unwrap_err(), "update_mask");
    assert_invalid_field(&keys.update_api_key(update(&["name"], Default::default())).await.unwrap_err(), "update.name");
    assert_invalid_field(
        &keys
            .update_api_key(update(
                &["expires_at"],
                pb::ApiKeyUpdate {
                    expires_at: Some(timestamp_in(chrono::Duration::seconds(-1))),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
        "update.expires_at",
    );
    assert_invalid_field(
        &keys
            .rotate_api_key(pb::RotateApiKeyRequest {
                org_id: org.clone(),
                id: key.id.clone(),
                grace_period: Some(duration(31 * 86_400)),
            })
            .await
            .unwrap_err(),
        "grace_period",
    );
    let mut audit = plane.audit(&plane.root_token).await;
    assert_invalid_field(
        &audit
            .list_audit_events(pb::ListAuditEventsRequest {
                org_id: org.clone(),
                page_token: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        "page_token",
    );

    // Nothing was written by any refused call: one key, one audit row.
    let listed = keys.list_api_keys(list(|_| {})).await.unwrap().into_inner().api_keys;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, key.name);
    let events = audit
        .list_audit_events(pb::ListAuditEventsRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.audit_events.len(), 1);
    plane.stop().await;
}

/// `metadata` with `depth` nested objects.
fn nested_metadata(depth: usize) -> prost_types::Struct {
    let mut inner = prost_types::Struct::default();
    for _ in 0..depth {
        let value = prost_types::Value { kind: Some(prost_types::value::Kind::StructValue(inner)) };
        inner = prost_types::Struct { fields: [("n".to_owned(), value)].into() };
    }
    inner
}

fn text_metadata(key: &str, value: &str) -> prost_types::Struct {
    let value = prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(value.to_owned())) };
    prost_types::Struct { fields: [(key.to_owned(), value)].into() }
}

/// NUL characters (which Postgres cannot store and SQLite can), protobuf
/// that does not decode, integer overflows and internal webhook hosts: the
/// same INVALID_ARGUMENT naming the field on both databases, nothing written.
async fn edge_cases_are_refused_alike_on_both_databases(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (key, _) = plane.create_key(&org, &[]).await;
    let mut keys = plane.keys(&plane.root_token).await;
    let create = |change: &dyn Fn(&mut pb::CreateApiKeyRequest)| {
        let mut request = pb::CreateApiKeyRequest { org_id: org.clone(), name: "ok".into(), ..Default::default() };
        change(&mut request);
        request
    };
    let cases: Vec<(&str, pb::CreateApiKeyRequest)> = vec![
        ("metadata.tier", create(&|r| r.metadata = Some(text_metadata("tier", "gold\0")))),
        ("metadata", create(&|r| r.metadata = Some(text_metadata("ti\0er", "gold")))),
        ("name", create(&|r| r.name = "a\0b".into())),
        ("scopes[0]", create(&|r| r.scopes = vec!["orders:\0read".into()])),
        (
            "rate_limit.requests",
            create(&|r| {
                r.rate_limit =
                    Some(pb::RateLimit { requests: 2_147_483_648, window: Some(duration(1)), ..Default::default() })
            }),
        ),
        (
            "rate_limit.requests",
            create(&|r| {
                r.rate_limit =
                    Some(pb::RateLimit { requests: u32::MAX, window: Some(duration(1)), ..Default::default() })
            }),
        ),
    ];
    for (field, request) in cases {
        let status = keys.create_api_key(request).await.unwrap_err();
        assert_invalid_field(&status, field);
    }
    let overflow = keys
        .create_api_key(create(&|r| {
            r.rate_limit = Some(pb::RateLimit { requests: u32::MAX, window: Some(duration(1)), ..Default::default() })
        }))
        .await
        .unwrap_err();
    assert!(overflow.message().contains("at most 2147483647"), "{}", overflow.message());
    let largest = create(&|r| {
        r.rate_limit =
            Some(pb::RateLimit { requests: i32::MAX as u32, window: Some(duration(1)), ..Default::default() })
    });
    let largest = keys.create_api_key(largest).await.unwrap().into_inner().api_key.unwrap();
    assert_eq!(largest.rate_limit.unwrap().requests, i32::MAX as u32);

    // Nesting past the protobuf decoder's limit is the caller's mistake.
    let deep = keys.create_api_key(create(&|r| r.metadata = Some(nested_metadata(40)))).await.unwrap_err();
    assert_eq!(deep.code(), tonic::Code::InvalidArgument, "{deep:?}");

    let list =
        |prefix: &str| pb::ListApiKeysRequest { org_id: org.clone(), name_prefix: prefix.into(), ..Default::default() };
    assert_invalid_field(&keys.list_api_keys(list("a\0")).await.unwrap_err(), "name_prefix");
    let get = pb::GetApiKeyRequest { org_id: org.clone(), id: format!("{}\0", key.id) };
    assert_invalid_field(&keys.get_api_key(get).await.unwrap_err(), "id");

    let mut webhooks = plane.webhooks(&plane.root_token).await;
    let subscribe = |url: &str, event_type: &str| pb::CreateSubscriptionRequest {
        org_id: org.clone(),
        url: url.to_owned(),
        event_types: vec!["order.created".into(), event_type.to_owned()],
        ..Default::default()
    };
    let status = webhooks.create_subscription(subscribe("https://hooks.example.com/\0", "a.b")).await.unwrap_err();
    assert_invalid_field(&status, "url");
    let status = webhooks.create_subscription(subscribe("https://hooks.example.com/", "a.\0")).await.unwrap_err();
    assert_invalid_field(&status, "event_types[1]");
    let publish = pb::PublishEventRequest {
        org_id: org.clone(),
        event_type: "order.\0created".into(),
        payload_json: "{}".into(),
        ..Default::default()
    };
    let status = plane.events(&plane.root_token).await.publish_event(publish).await.unwrap_err();
    assert_invalid_field(&status, "event_type");

    // Nothing was written: the first key and the largest one, two audit rows.
    assert_eq!(keys.list_api_keys(list("")).await.unwrap().into_inner().api_keys.len(), 2);
    assert_eq!(plane.audit_events(&org, "").await.len(), 2);
    plane.stop().await;
}
