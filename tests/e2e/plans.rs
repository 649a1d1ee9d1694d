//! Query plans at production sizes: the soak (docs/reliability.md) found
//! queries that read far more than their answer once the tables grew. Each
//! test seeds the shape that misled the planner and asserts the plan, not a
//! time, so it cannot be flaky.

use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_control_plane::store::deliveries::{DeliveryFilter, list_query};
use keyplane_tests::webhooks::subscribe;
use keyplane_tests::{Backend, random_org, seed, start_webhooks_or_skip};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, QueryTrait, Statement};

/// The plan of `statement`, as `EXPLAIN (ANALYZE, COSTS OFF)` prints it.
async fn plan(db: &DatabaseConnection, mut statement: Statement) -> String {
    statement.sql = format!("EXPLAIN (ANALYZE, COSTS OFF) {}", statement.sql);
    let rows = db.query_all_raw(statement).await.expect("explain");
    let lines: Vec<String> = rows.iter().map(|row| row.try_get("", "QUERY PLAN").expect("plan line")).collect();
    lines.join("\n")
}

/// An org whose rows all sort before another org's (older ids) still gets
/// its first page of deliveries from its own index: the planner must not
/// walk the primary key backwards through every row of the other org.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_an_orgs_deliveries_is_read_from_its_index_postgres() {
    let plane = start_webhooks_or_skip!(Backend::Postgres);
    let db = plane.database().await;
    let (quiet, busy) = (random_org(), random_org());
    for (n, org) in [&quiet, &busy].into_iter().enumerate() {
        let (subscription, _) = subscribe(&plane, org, "http://127.0.0.1:9/hook", &["bulk.none"]).await;
        seed::deliveries(&db, org, &[subscription.id], 1..=30_000, 1.0, &format!("plan{n}_")).await;
    }
    seed::analyze_deliveries(&db).await;
    let filters =
        [DeliveryFilter::default(), DeliveryFilter { event_type: Some("order.created".into()), ..Default::default() }];
    for filter in filters {
        let plan =
            plan(&db, list_query(DbBackend::Postgres, &quiet, &filter, None, 51).build(DbBackend::Postgres)).await;
        assert!(plan.contains("using webhook_deliveries_org_id"), "{filter:?}: read from an org index:\n{plan}");
        assert!(!plan.contains("webhook_deliveries_pkey"), "{filter:?}: not the primary key:\n{plan}");
    }
}

/// Counting the keys still on another system's hash (the expiry sweep does,
/// every ten seconds) reads imported keys only, not every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_keys_on_imported_hashes_reads_imported_keys_only_postgres() {
    use keyplane_control_plane::store::imported_keys::on_legacy_hashes;
    let plane = start_webhooks_or_skip!(Backend::Postgres);
    let db = plane.database().await;
    let org = random_org();
    seed::keys(&db, 30_000, |i| {
        let id = keyplane_control_plane::crypto::new_id("key_");
        seed::key_row(&org, id, format!("k{i}"), Environment::Live, KeyStatus::Active, seed::UNMATCHABLE_HASH)
    })
    .await;
    let plan = plan(&db, on_legacy_hashes().build(DbBackend::Postgres)).await;
    assert!(plan.contains("api_keys_hash_format"), "read through the imported keys' index:\n{plan}");
    assert!(!plan.contains("Seq Scan"), "not every key:\n{plan}");
}
