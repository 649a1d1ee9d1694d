//! OAuth connections against a fake provider on loopback: exchange (both
//! client authentication methods, PKCE), refresh on expiry with concurrent
//! callers, rotated refresh tokens, deletion with revocation, provider
//! failures, secrecy at rest and tamper detection.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::connections::{CLIENT_SECRET, VERIFIER, access_token, connect, exchange, start, start_with_egress};
use keyplane_tests::oauth_provider::{ClientAuth, Failure, FakeProvider};
use keyplane_tests::{Backend, assert_invalid_field, both_backends, random_org};
use sea_orm::{ConnectionTrait, Statement};
use tonic::Code;

macro_rules! start_or_skip_with {
    ($backend:expr, $providers:expr) => {
        match start($backend, $providers).await {
            Some(plane) => plane,
            None => return,
        }
    };
}

both_backends!(
    exchange_refresh_rotate_and_revoke,
    client_secret_post_and_provider_failures,
    tokens_are_sealed_and_tampering_is_detected,
    connections_respect_orgs_and_scopes,
    provider_calls_obey_the_egress_policy,
    a_deleted_org_takes_its_connections,
);

/// An org holding only a connection is registered by it, cannot be deleted
/// with its sealed tokens left behind, and takes them when asked.
async fn a_deleted_org_takes_its_connections(backend: Backend) {
    let provider = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let plane = start_or_skip_with!(backend, &[("acme", &provider, "client_secret_basic")]);
    let org = random_org();
    let connection = connect(&plane, &org, &provider).await;
    let mut orgs = plane.orgs(&plane.root_token).await;
    let delete = |delete_holdings| pb::DeleteOrgRequest { org_id: org.clone(), delete_holdings };
    let refused = orgs.delete_org(delete(false)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("1 OAuth connections"), "{}", refused.message());
    let deleted = orgs.delete_org(delete(true)).await.unwrap().into_inner().deleted.unwrap();
    assert_eq!(deleted.oauth_connections, 1);
    let gone = plane
        .connections(&plane.root_token)
        .await
        .get_connection(pb::GetConnectionRequest { org_id: org.clone(), id: connection.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    plane.stop().await;
}

async fn exchange_refresh_rotate_and_revoke(backend: Backend) {
    let provider = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let plane = start_or_skip_with!(backend, &[("acme", &provider, "client_secret_basic")]);
    let org = random_org();

    // Exchange with PKCE: the access token expires within the refresh margin.
    provider.set_access_lifetime(30);
    let connection = connect(&plane, &org, &provider).await;
    assert_eq!(connection.provider, "acme");
    assert_eq!(connection.scopes, ["zones:read", "zones:write"]);
    assert!(connection.has_refresh_token);
    assert!(connection.access_token_expires_at.is_some());
    let first_tokens = provider.issued_tokens();
    assert_eq!(first_tokens.len(), 2);

    // 50 concurrent callers: one refresh, one new token for all of them.
    provider.set_access_lifetime(3600);
    let mut calls = Vec::new();
    for _ in 0..50 {
        let (client, org, id) = (plane.connections(&plane.root_token).await, org.clone(), connection.id.clone());
        calls.push(tokio::spawn(async move {
            let mut client = client;
            client.get_access_token(pb::GetAccessTokenRequest { org_id: org, id }).await.unwrap().into_inner()
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for call in calls {
        tokens.insert(call.await.unwrap().access_token);
    }
    assert_eq!(provider.refreshes(), 1, "concurrent callers share one refresh");
    assert_eq!(tokens.len(), 1);
    let refreshed = tokens.into_iter().next().unwrap();
    assert_ne!(refreshed, first_tokens[0]);
    assert_eq!(provider.issued_tokens()[2], refreshed);

    // The provider rotated the refresh token; the new one replaced the old,
    // so the next refresh (forced by a short lifetime) works.
    let rotated_refresh = provider.issued_tokens()[3].clone();
    assert_eq!(provider.valid_refresh_tokens(), [rotated_refresh.clone()].into());
    let got = plane
        .connections(&plane.root_token)
        .await
        .get_connection(pb::GetConnectionRequest { org_id: org.clone(), id: connection.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(got.last_refreshed_at.is_some());
    sea_orm::ConnectionTrait::execute_unprepared(
        &plane.database().await,
        &format!("UPDATE oauth_connections SET expires_at = created_at WHERE id = '{}'", connection.id),
    )
    .await
    .unwrap();
    let again = access_token(&plane, &org, &connection.id).await.unwrap();
    assert_ne!(again, refreshed);
    assert_eq!(provider.refreshes(), 2);
    // A valid token is handed out without a refresh.
    assert_eq!(access_token(&plane, &org, &connection.id).await.unwrap(), again);
    assert_eq!(provider.refreshes(), 2);

    // Delete: gone here, and the grant is revoked at the provider.
    let current_refresh = provider.valid_refresh_tokens().into_iter().next().unwrap();
    let deleted = plane
        .connections(&plane.root_token)
        .await
        .delete_connection(pb::DeleteConnectionRequest { org_id: org.clone(), id: connection.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.revoked, "{deleted:?}");
    assert_eq!(provider.revoked(), [(current_refresh, "refresh_token".to_owned())]);
    let err = access_token(&plane, &org, &connection.id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Every access was audited in its transaction, without tokens.
    let events = plane.audit_events(&org, "").await;
    let count = |action: &str| events.iter().filter(|e| e.action == action).count();
    assert_eq!(count("connection.created"), 1);
    assert_eq!(count("connection.access_token_issued"), 52);
    assert_eq!(count("connection.deleted"), 1);
    let text = format!("{events:?}");
    for token in provider.issued_tokens() {
        assert!(!text.contains(&token), "a token appears in the audit log");
    }
}

async fn client_secret_post_and_provider_failures(backend: Backend) {
    let post = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Post).await;
    let basic_only = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let plane = start_or_skip_with!(
        backend,
        &[("post-co", &post, "client_secret_post"), ("misconfigured", &basic_only, "client_secret_post")]
    );
    let org = random_org();
    let mut client = plane.connections(&plane.root_token).await;

    // client_secret_post without PKCE.
    let connection = client
        .exchange_code(exchange(&org, "post-co", post.issue_code(None), ""))
        .await
        .unwrap()
        .into_inner()
        .connection
        .unwrap();
    assert!(connection.has_refresh_token);

    // The provider wanted Basic: invalid_client, named.
    let err = client.exchange_code(exchange(&org, "misconfigured", basic_only.issue_code(None), "")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("invalid_client") && err.message().contains("misconfigured"), "{err:?}");

    // Wrong PKCE verifier, a reused code, and the failure modes.
    let challenge = FakeProvider::challenge(VERIFIER);
    let wrong_verifier = "x".repeat(43);
    let err = client.exchange_code(exchange(&org, "post-co", post.issue_code(Some(&challenge)), &wrong_verifier)).await;
    assert!(err.unwrap_err().message().contains("invalid_grant"));
    let cases: [(Failure, Code, &str); 5] = [
        (Failure::InvalidGrant, Code::FailedPrecondition, "invalid_grant"),
        (Failure::ServerError, Code::Unavailable, "500"),
        (Failure::Hang(Duration::from_secs(5)), Code::Unavailable, "timeout"),
        (Failure::NotJson, Code::Unavailable, "JSON"),
        (Failure::NoAccessToken, Code::Unavailable, "access_token"),
    ];
    for (failure, code, text) in cases {
        post.fail_next(failure.clone());
        let err = client.exchange_code(exchange(&org, "post-co", post.issue_code(None), "")).await.unwrap_err();
        assert_eq!(err.code(), code, "{failure:?}: {err:?}");
        assert!(err.message().contains(text), "{failure:?}: {}", err.message());
    }
    // Refresh failures surface the same way, and nothing changes.
    sea_orm::ConnectionTrait::execute_unprepared(
        &plane.database().await,
        &format!("UPDATE oauth_connections SET expires_at = created_at WHERE id = '{}'", connection.id),
    )
    .await
    .unwrap();
    post.fail_next(Failure::InvalidGrant);
    let err = access_token(&plane, &org, &connection.id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(access_token(&plane, &org, &connection.id).await.is_ok(), "the stored refresh token still works");

    // Only the one good exchange was stored.
    let listed = client
        .list_connections(pb::ListConnectionsRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.connections.len(), 1);

    // Bad input names its field.
    for (request, field) in [
        (exchange(&org, "nope", "c".into(), ""), "provider"),
        (exchange(&org, "post-co", String::new(), ""), "code"),
        (exchange(&org, "post-co", "c".into(), "short"), "code_verifier"),
        (
            pb::ExchangeCodeRequest { redirect_uri: "not a uri".into(), ..exchange(&org, "post-co", "c".into(), "") },
            "redirect_uri",
        ),
    ] {
        assert_invalid_field(&client.exchange_code(request).await.unwrap_err(), field);
    }
}

async fn tokens_are_sealed_and_tampering_is_detected(backend: Backend) {
    let provider = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let plane = start_or_skip_with!(backend, &[("acme", &provider, "client_secret_basic")]);
    let org = random_org();
    plane.create_key(&org, &["orders:read"]).await;
    let connection = connect(&plane, &org, &provider).await;
    let token = access_token(&plane, &org, &connection.id).await.unwrap();
    let listed = plane
        .connections(&plane.root_token)
        .await
        .list_connections(pb::ListConnectionsRequest { org_id: org.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();

    let dump = plane.dump_database().await;
    let logs = keyplane_tests::logs::captured();
    for secret in provider.issued_tokens().iter().chain([&CLIENT_SECRET.to_owned()]) {
        for (place, text) in [("database", &dump), ("logs", &logs), ("list", &format!("{listed:?}"))] {
            assert!(!text.contains(secret.as_str()), "a token appears in the {place}");
        }
    }
    assert!(provider.issued_tokens().contains(&token));

    // Tampering: a flipped byte, an unknown key id, access and refresh swapped.
    let db = plane.database().await;
    let sealed = |column: &'static str| {
        let db = &db;
        let id = connection.id.clone();
        async move {
            let row = db
                .query_one_raw(Statement::from_string(
                    db.get_database_backend(),
                    format!("SELECT {column} AS v FROM oauth_connections WHERE id = '{id}'"),
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<String>("", "v").unwrap()
        }
    };
    let (access, refresh) = (sealed("sealed_access_token").await, sealed("sealed_refresh_token").await);
    let set = |value: String| {
        let db = &db;
        let id = connection.id.clone();
        async move {
            db.execute_unprepared(&format!(
                "UPDATE oauth_connections SET sealed_access_token = '{value}' WHERE id = '{id}'"
            ))
            .await
            .unwrap();
        }
    };
    let mut flipped = access.clone().into_bytes();
    let at = flipped.len() - 3;
    flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
    for (value, expected) in [
        (String::from_utf8(flipped).unwrap(), "authentication failed"),
        (format!("k9:{}", access.split_once(':').unwrap().1), "unknown master key"),
        (refresh.clone(), "authentication failed"),
    ] {
        set(value).await;
        let err = access_token(&plane, &org, &connection.id).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
        assert!(err.message().contains(expected), "{}", err.message());
    }
    set(access).await;
    assert_eq!(access_token(&plane, &org, &connection.id).await.unwrap(), token);
}

async fn connections_respect_orgs_and_scopes(backend: Backend) {
    let provider = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let plane = start_or_skip_with!(backend, &[("acme", &provider, "client_secret_basic")]);
    let (org_a, org_b) = (random_org(), random_org());
    let connection = connect(&plane, &org_b, &provider).await;
    let (_, a_admin) = plane.create_key(&org_a, &["keyplane:admin"]).await;
    let mut a = plane.connections(&a_admin).await;
    for code in [
        a.get_connection(pb::GetConnectionRequest { org_id: String::new(), id: connection.id.clone() })
            .await
            .unwrap_err()
            .code(),
        a.get_access_token(pb::GetAccessTokenRequest { org_id: String::new(), id: connection.id.clone() })
            .await
            .unwrap_err()
            .code(),
        a.delete_connection(pb::DeleteConnectionRequest { org_id: String::new(), id: connection.id.clone() })
            .await
            .unwrap_err()
            .code(),
    ] {
        assert_eq!(code, Code::NotFound);
    }
    let (_, reader) = plane.create_key(&org_b, &["keyplane:connections:read"]).await;
    let mut reader = plane.connections(&reader).await;
    let listed = reader.list_connections(pb::ListConnectionsRequest::default()).await.unwrap().into_inner().connections;
    assert_eq!(listed.len(), 1);
    let err = reader
        .get_access_token(pb::GetAccessTokenRequest { org_id: String::new(), id: connection.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("keyplane:connections:reveal"));
    let err = reader.exchange_code(exchange("", "acme", provider.issue_code(None), "")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let (_, revealer) = plane.create_key(&org_b, &["keyplane:connections:reveal"]).await;
    let token = plane
        .connections(&revealer)
        .await
        .get_access_token(pb::GetAccessTokenRequest { org_id: String::new(), id: connection.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    assert!(provider.issued_tokens().contains(&token));
}

async fn provider_calls_obey_the_egress_policy(backend: Backend) {
    let provider = FakeProvider::start("keyplane", CLIENT_SECRET, ClientAuth::Basic).await;
    let Some(plane) = start_with_egress(backend, &[("acme", &provider, "client_secret_basic")], false).await else {
        return;
    };
    let org = random_org();
    let err = plane
        .connections(&plane.root_token)
        .await
        .exchange_code(exchange(&org, "acme", provider.issue_code(None), ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("destination not allowed"), "{}", err.message());
    let logs = keyplane_tests::logs::captured();
    assert!(logs.contains("is loopback; allow it with --egress-allow-cidr"), "the reason is logged");
    assert!(provider.issued_tokens().is_empty(), "the provider was never contacted");
}
