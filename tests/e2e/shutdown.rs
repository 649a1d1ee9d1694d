//! Graceful shutdown: the real `keyplane` binary gets SIGTERM while webhook
//! requests are in flight. It must exit cleanly having recorded every
//! request it sent (nothing half-written: each delivery's attempt count
//! matches its attempt rows, and every request the receiver answered is a
//! recorded success), and after a restart the rest is delivered, none twice.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use keyplane_tests::process::{ControlPlaneProcess, WebhookServer};
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::webhooks::{LoadPublishers, subscribe_to_load, wait_until_none_pending};
use keyplane_tests::{Backend, both_backends, random_org};
use sea_orm::{ConnectionTrait, Database, Statement};

both_backends!(sigterm_during_webhook_load_leaves_nothing_half_written);
both_backends!(a_graceful_stop_hands_back_the_deliveries_it_had_not_started);

const EVENTS: usize = 300;
const PUBLISHERS: usize = 4;
/// Each request takes this long, so many are in flight at SIGTERM.
const ENDPOINT_LATENCY: Duration = Duration::from_millis(300);

/// A `keyplane` process started with `flags`, and one org subscribed to
/// `/hook` of a receiver that holds each request for [`ENDPOINT_LATENCY`].
struct SlowHook {
    setup: WebhookServer,
    receiver: Receiver,
    server: ControlPlaneProcess,
    root: String,
    org: String,
}

impl SlowHook {
    /// `None` when the backend is not available.
    async fn start(backend: Backend, dir: &std::path::Path, flags: &[&str]) -> Option<Self> {
        let setup = WebhookServer::prepare(backend, dir, flags).await?;
        let receiver = Receiver::start().await;
        receiver.set("/hook", Behavior::Hang(ENDPOINT_LATENCY));
        let server = ControlPlaneProcess::start(&setup.args).await;
        let (root, org) = (setup.root_token(), random_org());
        subscribe_to_load(&server.addr, &root, &org, &receiver.url("/hook")).await;
        Some(Self { setup, receiver, server, root, org })
    }
}

async fn sigterm_during_webhook_load_leaves_nothing_half_written(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let flags = ["--webhook-timeout", "2s", "--webhook-lease", "5s", "--webhook-retry-schedule", "0s,200ms,200ms"];
    let Some(SlowHook { setup, receiver, server, root, org }) = SlowHook::start(backend, data.path(), &flags).await
    else {
        return;
    };
    let publishers = LoadPublishers::start(&server.addr, &root, &org, EVENTS, PUBLISHERS).await;
    // SIGTERM once requests are arriving (each is held for ENDPOINT_LATENCY).
    receiver.wait_for("/hook", 20, Duration::from_secs(60)).await;
    let log = server.stop().await;
    let acknowledged = publishers.finish().await;
    assert!(
        !log.contains("still running at shutdown"),
        "requests in flight were abandoned instead of recorded:\n{log}"
    );
    let sent_before_stop = receiver.webhook_ids("/hook");

    // Nothing half-written, and everything sent was recorded.
    let db = Database::connect(&setup.database_url).await.expect("open the database");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT d.event_id AS event_id, d.status AS status, d.attempt_count AS attempt_count, \
             (SELECT COUNT(*) FROM webhook_attempts a WHERE a.delivery_id = d.id) AS attempts \
             FROM webhook_deliveries d",
        ))
        .await
        .unwrap();
    let mut recorded_success = HashSet::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        let event: String = row.try_get("", "event_id").unwrap();
        let status: String = row.try_get("", "status").unwrap();
        let attempt_count: i32 = row.try_get("", "attempt_count").unwrap();
        let attempts: i64 = row.try_get("", "attempts").unwrap();
        assert_eq!(i64::from(attempt_count), attempts, "delivery of {event}: attempt count and attempt rows disagree");
        assert!(status == "succeeded" || status == "pending", "delivery of {event} is {status}");
        if status == "succeeded" {
            recorded_success.insert(event);
        }
        *statuses.entry(status).or_default() += 1;
    }
    db.close().await.unwrap();
    assert_eq!(recorded_success, sent_before_stop, "every request sent before the exit is a recorded success");
    assert_eq!(rows.len(), acknowledged.len(), "one delivery per acknowledged event");
    assert!(statuses.get("pending").is_some_and(|n| *n > 0), "the stop came mid-load: {statuses:?}");

    // After a restart, the rest is delivered, and nothing twice.
    let restarted = ControlPlaneProcess::start(&setup.args).await;
    wait_until_none_pending(&restarted.addr, &root, &org).await;
    restarted.stop().await;
    assert_eq!(receiver.webhook_ids("/hook"), acknowledged, "every acknowledged event arrived");
    assert_eq!(receiver.count("/hook"), acknowledged.len(), "no event was sent twice");
    eprintln!(
        "shutdown test ({backend:?}): {} acknowledged, {} sent and recorded before SIGTERM, {statuses:?}",
        acknowledged.len(),
        sent_before_stop.len()
    );
}

/// A publication leases its deliveries to its own process's dispatcher.
/// Those still queued at SIGTERM (its one request slot busy) are made due
/// again before the process exits, not left until their lease (a minute
/// here) runs out: the restarted control plane sends them at once.
async fn a_graceful_stop_hands_back_the_deliveries_it_had_not_started(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let flags = ["--webhook-concurrency", "1", "--webhook-timeout", "2s", "--webhook-lease", "60s"];
    let Some(SlowHook { setup, receiver, server, root, org }) = SlowHook::start(backend, data.path(), &flags).await
    else {
        return;
    };
    let acknowledged = LoadPublishers::start(&server.addr, &root, &org, 20, 1).await.finish().await;
    server.stop().await;
    let stopped_at = chrono::Utc::now();

    let db = Database::connect(&setup.database_url).await.expect("open the database");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, next_attempt_at FROM webhook_deliveries WHERE status = 'pending'",
        ))
        .await
        .unwrap();
    db.close().await.unwrap();
    assert!(!rows.is_empty(), "deliveries were still queued at the stop");
    for row in &rows {
        let id: String = row.try_get("", "id").unwrap();
        let due: chrono::DateTime<chrono::Utc> = row.try_get("", "next_attempt_at").unwrap();
        assert!(due <= stopped_at, "{id} is still leased to the stopped process until {due}");
    }

    let restarted = ControlPlaneProcess::start(&setup.args).await;
    let arrived = keyplane_tests::eventually_within(
        Duration::from_secs(30),
        || async { receiver.webhook_ids("/hook") },
        |ids| *ids == acknowledged,
    )
    .await;
    restarted.stop().await;
    assert_eq!(arrived, acknowledged, "every acknowledged event arrived well within the lease");
    assert_eq!(receiver.count("/hook"), acknowledged.len(), "no event was sent twice");
}
