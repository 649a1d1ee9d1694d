//! The audit log: one row per mutation with its actor, a verifiable chain,
//! tamper detection, and an intact chain under concurrent writes.

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, both_backends, random_org, start_or_skip};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

both_backends!(one_row_per_mutation_and_tamper_detection, concurrent_creates_keep_the_chain);

async fn execute(db: &sea_orm::DatabaseConnection, postgres_sql: &str, values: Vec<sea_orm::Value>) -> u64 {
    let backend = db.get_database_backend();
    let sql = if backend == DbBackend::Postgres {
        postgres_sql.to_owned()
    } else {
        postgres_sql.replace("$1", "?").replace("$2", "?")
    };
    db.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await.expect("sql").rows_affected()
}

async fn one_row_per_mutation_and_tamper_detection(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (admin, admin_token) = plane.create_key(&org, &["keyplane:admin"]).await;
    let mut keys = plane.keys(&admin_token).await;
    let created = keys
        .create_api_key(pb::CreateApiKeyRequest { name: "svc".into(), recoverable: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    let id = created.id.clone();
    keys.update_api_key(pb::UpdateApiKeyRequest {
        org_id: String::new(),
        id: id.clone(),
        update: Some(pb::ApiKeyUpdate { name: "svc2".into(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["name".into()] }),
    })
    .await
    .unwrap();
    keys.reveal_api_key(pb::RevealApiKeyRequest { org_id: String::new(), id: id.clone() }).await.unwrap();
    let rotated = keys
        .rotate_api_key(pb::RotateApiKeyRequest { org_id: String::new(), id: id.clone(), grace_period: None })
        .await
        .unwrap()
        .into_inner();
    keys.revoke_api_key(pb::RevokeApiKeyRequest { org_id: String::new(), id: id.clone(), reason: "done".into() })
        .await
        .unwrap();
    keys.delete_api_key(pb::DeleteApiKeyRequest { org_id: String::new(), id: rotated.api_key.unwrap().id })
        .await
        .unwrap();
    // Reads write nothing.
    keys.get_api_key(pb::GetApiKeyRequest { org_id: String::new(), id: id.clone() }).await.unwrap();
    keys.list_api_keys(pb::ListApiKeysRequest::default()).await.unwrap();

    let mut audit = plane.audit(&admin_token).await;
    let events = audit
        .list_audit_events(pb::ListAuditEventsRequest { page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "api_key.deleted",
            "api_key.revoked",
            "api_key.rotated",
            "api_key.revealed",
            "api_key.updated",
            "api_key.created",
            "api_key.created"
        ],
        "newest first, one per mutation"
    );
    assert_eq!(events.last().unwrap().actor_type, "root");
    assert_eq!(events.last().unwrap().actor_name, "", "root has no key name");
    for event in &events[..6] {
        assert_eq!((event.actor_type.as_str(), event.actor_id.as_str()), ("api_key", admin.id.as_str()));
        assert_eq!(event.actor_name, admin.name, "a key of the org that acted is named");
        assert!(event.peer_address.starts_with("127.0.0.1:"), "{}", event.peer_address);
        assert!(!event.request_id.is_empty());
        assert!(event.user_agent.contains("tonic"), "{}", event.user_agent);
    }
    assert_eq!(events[5].target_id, id);

    // Filters and pagination.
    let only = |action: &str| pb::ListAuditEventsRequest { action: action.into(), ..Default::default() };
    assert_eq!(audit.list_audit_events(only("api_key.created")).await.unwrap().into_inner().audit_events.len(), 2);
    let by_actor = pb::ListAuditEventsRequest { actor_id: "root".into(), ..Default::default() };
    assert_eq!(audit.list_audit_events(by_actor).await.unwrap().into_inner().audit_events.len(), 1);
    let by_target = pb::ListAuditEventsRequest { target_id: id.clone(), ..Default::default() };
    assert_eq!(audit.list_audit_events(by_target).await.unwrap().into_inner().audit_events.len(), 5);
    let future = pb::ListAuditEventsRequest {
        start_time: Some(keyplane_tests::timestamp_in(chrono::Duration::hours(1))),
        ..Default::default()
    };
    assert!(audit.list_audit_events(future).await.unwrap().into_inner().audit_events.is_empty());
    let first = audit
        .list_audit_events(pb::ListAuditEventsRequest { page_size: 4, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let second = audit
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 4,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.audit_events.len() + second.audit_events.len(), 7);
    assert!(second.next_page_token.is_empty());
    assert_eq!(second.audit_events.last().unwrap().seq, 1);

    let chain = audit.verify_audit_chain(pb::VerifyAuditChainRequest::default()).await.unwrap().into_inner();
    assert!(chain.intact, "{chain:?}");
    assert_eq!(chain.events_checked, 7);

    // Alter one row directly in the database: the chain breaks at that row.
    let db = plane.database().await;
    let altered = execute(
        &db,
        "UPDATE audit_events SET actor_id = 'someone-else' WHERE org_id = $1 AND seq = $2",
        vec![org.clone().into(), 4i64.into()],
    )
    .await;
    assert_eq!(altered, 1);
    let broken = audit.verify_audit_chain(pb::VerifyAuditChainRequest::default()).await.unwrap().into_inner();
    assert!(!broken.intact);
    assert_eq!(broken.first_broken_seq, 4);
    assert!(broken.problem.contains("altered"), "{}", broken.problem);

    // Deleting a row is detected too.
    execute(&db, "DELETE FROM audit_events WHERE org_id = $1 AND seq = $2", vec![org.clone().into(), 2i64.into()])
        .await;
    let gap = audit.verify_audit_chain(pb::VerifyAuditChainRequest::default()).await.unwrap().into_inner();
    assert_eq!(gap.first_broken_seq, 3);
    assert!(gap.problem.contains("missing"), "{}", gap.problem);
    plane.stop().await;
}

async fn concurrent_creates_keep_the_chain(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let keys = plane.keys(&plane.root_token).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let mut keys = keys.clone();
            let org = org.clone();
            tokio::spawn(async move {
                keys.create_api_key(pb::CreateApiKeyRequest {
                    org_id: org,
                    name: format!("k{i}"),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().api_key.unwrap().id)
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap().expect("create"));
    }
    assert_eq!(ids.len(), 200);

    let mut audit = plane.audit(&plane.root_token).await;
    let chain =
        audit.verify_audit_chain(pb::VerifyAuditChainRequest { org_id: org.clone() }).await.unwrap().into_inner();
    assert!(chain.intact, "{chain:?}");
    assert_eq!(chain.events_checked, 200);
    let events = audit
        .list_audit_events(pb::ListAuditEventsRequest { org_id: org.clone(), page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .audit_events;
    let targets: std::collections::HashSet<String> = events.into_iter().map(|e| e.target_id).collect();
    assert_eq!(targets, ids);
    plane.stop().await;
}
