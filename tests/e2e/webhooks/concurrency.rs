//! Publications take no org-wide lock and are written in batches (group
//! commit): concurrent publishers of one org and of two orgs, racing
//! idempotency keys within a batch, across batches and across replicas,
//! while the org's keys are created and revoked (audited, and appending key
//! events). Nothing is lost or doubled, each caller gets its own event, the
//! audit chains verify and the key-event log has no gap.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::Receiver;
use keyplane_tests::webhooks::{WAIT, subscribe};
use keyplane_tests::{Backend, TestControlPlane, both_backends, random_org, start_webhooks_or_skip};
use sea_orm::{ConnectionTrait, Statement};

both_backends!(concurrent_publishers_and_key_changes_keep_every_guarantee);

const PUBLISHERS: usize = 12;
const EVENTS_EACH: usize = 20;
const KEY_CHANGES: usize = 15;

/// Publishes `EVENTS_EACH` events from each of `PUBLISHERS` tasks into
/// `org`; returns the event ids.
fn publishers(plane: &TestControlPlane, org: &str) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..PUBLISHERS)
        .map(|p| {
            let (addr, token, org) = (plane.addr.to_string(), plane.root_token.clone(), org.to_owned());
            tokio::spawn(async move {
                let channel = keyplane_tests::authed_channel(&addr, &token).await;
                let mut events = pb::event_service_client::EventServiceClient::new(channel);
                let mut ids = Vec::new();
                for i in 0..EVENTS_EACH {
                    let request = pb::PublishEventRequest {
                        org_id: org.clone(),
                        event_type: "order.created".into(),
                        payload_json: format!(r#"{{"publisher":{p},"n":{i}}}"#),
                        ..Default::default()
                    };
                    let payload = request.payload_json.clone();
                    let published = events.publish_event(request).await.expect("publish").into_inner();
                    assert!(!published.duplicate);
                    let event = published.event.expect("event");
                    assert_eq!(event.payload_json, payload, "each caller is answered with its own event");
                    ids.push(event.id);
                }
                ids
            })
        })
        .collect()
}

async fn rows(db: &sea_orm::DatabaseConnection, sql: String) -> Vec<sea_orm::QueryResult> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.expect("query")
}

async fn concurrent_publishers_and_key_changes_keep_every_guarantee(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let (busy, other) = (random_org(), random_org());
    // Not `*`: the org's key changes publish Keyplane's own events.
    subscribe(&plane, &busy, &receiver.url("/busy-1"), &["order.*"]).await;
    subscribe(&plane, &busy, &receiver.url("/busy-2"), &["order.*"]).await;
    subscribe(&plane, &other, &receiver.url("/other"), &["*"]).await;
    let mut doomed = Vec::new();
    for _ in 0..KEY_CHANGES {
        doomed.push(plane.create_key(&busy, &[]).await.0.id);
    }

    // Publishers of both orgs, a race on one idempotency key, and audited
    // key changes appending key events, all at once.
    let busy_publishers = publishers(&plane, &busy);
    let other_publishers = publishers(&plane, &other);
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (addr, token, org) = (plane.addr.to_string(), plane.root_token.clone(), busy.clone());
            tokio::spawn(async move {
                let channel = keyplane_tests::authed_channel(&addr, &token).await;
                let request = pb::PublishEventRequest {
                    org_id: org,
                    event_type: "order.paid".into(),
                    payload_json: "{}".into(),
                    idempotency_key: "pay-once".into(),
                    ..Default::default()
                };
                let published = pb::event_service_client::EventServiceClient::new(channel)
                    .publish_event(request)
                    .await
                    .expect("publish with an idempotency key")
                    .into_inner();
                (published.event.expect("event").id, published.duplicate)
            })
        })
        .collect();
    let keys = plane.keys(&plane.root_token).await;
    let changers: Vec<_> = doomed
        .iter()
        .map(|id| {
            let (mut keys, org, id) = (keys.clone(), busy.clone(), id.clone());
            tokio::spawn(async move {
                keys.create_api_key(pb::CreateApiKeyRequest {
                    org_id: org.clone(),
                    name: "concurrent".into(),
                    ..Default::default()
                })
                .await
                .expect("create during publications");
                keys.revoke_api_key(pb::RevokeApiKeyRequest { org_id: org, id, reason: String::new() })
                    .await
                    .expect("revoke during publications");
            })
        })
        .collect();

    let mut busy_ids = HashSet::new();
    for task in busy_publishers {
        busy_ids.extend(task.await.expect("publisher"));
    }
    let mut other_ids = HashSet::new();
    for task in other_publishers {
        other_ids.extend(task.await.expect("publisher"));
    }
    let mut raced = Vec::new();
    for task in racers {
        raced.push(task.await.expect("racer"));
    }
    for task in changers {
        task.await.expect("key changer");
    }
    assert_eq!(busy_ids.len(), PUBLISHERS * EVENTS_EACH, "distinct event ids");
    assert_eq!(other_ids.len(), PUBLISHERS * EVENTS_EACH);
    let paid: HashSet<&String> = raced.iter().map(|(id, _)| id).collect();
    assert_eq!(paid.len(), 1, "every racer got the first event: {raced:?}");
    assert_eq!(raced.iter().filter(|(_, duplicate)| !duplicate).count(), 1, "one racer published it");
    busy_ids.extend(paid.into_iter().cloned());
    // Every publication went through the group commit, in fewer batches.
    let batched = plane.metric("keyplane_publication_batch_size_sum", "").await;
    let batches = plane.metric("keyplane_publication_batch_size_count", "").await;
    assert_eq!(batched as usize, 2 * PUBLISHERS * EVENTS_EACH + raced.len(), "publications in batches");
    assert!(batches >= 1.0 && batches <= batched, "{batches} batches");

    // Each event reached each matching endpoint exactly once.
    let total = PUBLISHERS * EVENTS_EACH;
    receiver.wait_for("/busy-1", total + 1, WAIT).await;
    receiver.wait_for("/busy-2", total + 1, WAIT).await;
    receiver.wait_for("/other", total, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (path, expected) in [("/busy-1", &busy_ids), ("/busy-2", &busy_ids), ("/other", &other_ids)] {
        assert_eq!(receiver.count(path), expected.len(), "{path}: nothing sent twice");
        assert_eq!(&receiver.webhook_ids(path), expected, "{path}: every event arrived");
    }

    // The rows agree: one delivery per event and matching endpoint.
    let db = plane.database().await;
    let per_event = rows(
        &db,
        format!("SELECT event_id, COUNT(*) AS n FROM webhook_deliveries WHERE org_id = '{busy}' GROUP BY event_id"),
    )
    .await;
    let counts: HashMap<String, i64> =
        per_event.iter().map(|row| (row.try_get("", "event_id").unwrap(), row.try_get("", "n").unwrap())).collect();
    assert_eq!(counts.len(), busy_ids.len());
    assert!(counts.values().all(|n| *n == 2), "two deliveries per event");

    // The busy org's chain holds exactly its administrative changes, intact.
    let mut audit = plane.audit(&plane.root_token).await;
    for (org, expected) in [(&busy, 2 + KEY_CHANGES * 3), (&other, 1)] {
        let chain =
            audit.verify_audit_chain(pb::VerifyAuditChainRequest { org_id: org.clone() }).await.unwrap().into_inner();
        assert!(chain.intact, "{org}: {chain:?}");
        assert_eq!(chain.events_checked as usize, expected, "{org}: subscriptions and key changes, no publications");
    }

    // The key-event log is gap-free and holds every revocation.
    let log = rows(&db, "SELECT seq, org_id, kind FROM key_events ORDER BY seq".into()).await;
    let seqs: Vec<i64> = log.iter().map(|row| row.try_get("", "seq").unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "gap-free: {seqs:?}");
    let revoked = log
        .iter()
        .filter(|row| {
            row.try_get::<String>("", "org_id").unwrap() == busy
                && row.try_get::<String>("", "kind").unwrap() == "revoked"
        })
        .count();
    assert_eq!(revoked, KEY_CHANGES);
    plane.stop().await;
}

both_backends!(idempotency_keys_raced_within_and_across_batches_publish_once);

const RACERS: usize = 12;
const RACED_KEYS: usize = 25;

/// Racers publish the same idempotency keys in the same order, meeting at a
/// barrier before each key, each key after a publication without one; half
/// of them go through a second replica on Postgres (SQLite has one writer
/// process). Duplicates meet in batches of the two writers of a process and
/// in two processes (duplicates within one batch: the publisher's unit
/// test). Every key is stored once, every racer is answered with that event
/// and exactly one of them as its publisher, keyless publications get their
/// own events, and each event is delivered once.
async fn idempotency_keys_raced_within_and_across_batches_publish_once(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let replica = match backend {
        Backend::Postgres => Some(plane.replica().await),
        Backend::Sqlite => None,
    };
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/hook"), &["*"]).await;
    let start_line = std::sync::Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|r| {
            let start_line = start_line.clone();
            let via = match &replica {
                Some(replica) if r % 2 == 1 => replica,
                _ => &plane,
            };
            let (addr, token, org) = (via.addr.to_string(), via.root_token.clone(), org.clone());
            tokio::spawn(async move {
                let channel = keyplane_tests::authed_channel(&addr, &token).await;
                let mut events = pb::event_service_client::EventServiceClient::new(channel);
                let mut keyed = Vec::new();
                let mut keyless = Vec::new();
                for k in 0..RACED_KEYS {
                    for key in [String::new(), format!("key-{k}")] {
                        if !key.is_empty() {
                            start_line.wait().await;
                        }
                        let payload_json = format!(r#"{{"racer":{r},"key":"{key}"}}"#);
                        let request = pb::PublishEventRequest {
                            org_id: org.clone(),
                            event_type: "order.paid".into(),
                            payload_json: payload_json.clone(),
                            idempotency_key: key.clone(),
                            ..Default::default()
                        };
                        let published = events.publish_event(request).await.expect("publish").into_inner();
                        let event = published.event.expect("event");
                        assert_eq!(event.idempotency_key, key, "answered with an event of its own key");
                        if key.is_empty() {
                            assert!(!published.duplicate);
                            assert_eq!(event.payload_json, payload_json, "answered with its own event");
                            keyless.push(event.id);
                        } else {
                            assert_eq!(published.duplicate, published.deliveries_created == 0);
                            keyed.push((key, event.id, published.duplicate));
                        }
                    }
                }
                (keyed, keyless)
            })
        })
        .collect();
    let mut by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut publishers: HashMap<String, usize> = HashMap::new();
    let mut expected: HashSet<String> = HashSet::new();
    for task in racers {
        let (keyed, keyless) = task.await.expect("racer");
        expected.extend(keyless);
        for (key, id, duplicate) in keyed {
            *publishers.entry(key.clone()).or_default() += usize::from(!duplicate);
            by_key.entry(key).or_default().insert(id);
        }
    }
    assert_eq!(by_key.len(), RACED_KEYS);
    for (key, ids) in &by_key {
        assert_eq!(ids.len(), 1, "{key}: every racer got the first event: {ids:?}");
        assert_eq!(publishers[key], 1, "{key}: exactly one racer published it");
        expected.extend(ids.iter().cloned());
    }
    assert_eq!(expected.len(), RACED_KEYS + RACERS * RACED_KEYS);
    receiver.wait_for("/hook", expected.len(), WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count("/hook"), expected.len(), "nothing sent twice");
    assert_eq!(receiver.webhook_ids("/hook"), expected, "every stored event arrived");
    let db = plane.database().await;
    let stored = rows(&db, format!("SELECT COUNT(*) AS n FROM webhook_events WHERE org_id = '{org}'")).await;
    assert_eq!(stored[0].try_get::<i64>("", "n").unwrap() as usize, expected.len(), "no stray event stored");
    plane.stop().await;
}

both_backends!(deliveries_that_outlive_their_lease_in_the_queue_are_sent_once);

/// A publication's deliveries are leased to its process's dispatcher from
/// the start. With every request slot taken, they wait in its queue; those
/// that wait until their lease no longer covers a request are left to the
/// due scan, which claims them when the lease runs out. Each is sent once:
/// none is started on a lease that may already be someone else's.
async fn deliveries_that_outlive_their_lease_in_the_queue_are_sent_once(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
        config.webhooks.concurrency = 2;
        config.webhooks.timeout = Duration::from_secs(1);
        config.webhooks.lease = Duration::from_secs(2);
    });
    let receiver = Receiver::start().await;
    // Each request takes most of the timeout: the queue's tail waits longer
    // than lease minus timeout.
    receiver.set("/slow", keyplane_tests::receiver::Behavior::Hang(Duration::from_millis(900)));
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/slow"), &["order.*"]).await;
    let mut published = HashSet::new();
    for i in 0..10 {
        let event = keyplane_tests::webhooks::publish(&plane, &org, "order.created", &format!(r#"{{"n":{i}}}"#)).await;
        published.insert(event.event.expect("event").id);
    }
    let arrived =
        keyplane_tests::eventually_within(WAIT, || async { receiver.webhook_ids("/slow") }, |ids| *ids == published)
            .await;
    assert_eq!(arrived, published, "every event arrived");
    // Give a wrongly repeated request time to arrive, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.count("/slow"), published.len(), "no event was sent twice");
    plane.stop().await;
}

/// A publication queued behind busy writers whose caller gives up (its
/// deadline passes) is dropped, not stored behind the caller's back once
/// the writers are free. Postgres: a test transaction locks the events
/// table so that both writers wait inside their batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_whose_caller_gave_up_in_the_queue_is_not_stored_postgres() {
    use sea_orm::TransactionTrait;

    let plane = start_webhooks_or_skip!(Backend::Postgres);
    let receiver = Receiver::start().await;
    let org = random_org();
    subscribe(&plane, &org, &receiver.url("/hook"), &["*"]).await;
    let db = plane.database().await;
    let lock = db.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE").await.expect("lock");

    let channel = keyplane_tests::authed_channel(&plane.addr.to_string(), &plane.root_token).await;
    let events = pb::event_service_client::EventServiceClient::new(channel);
    let request = |n: u32| pb::PublishEventRequest {
        org_id: org.clone(),
        event_type: "order.paid".into(),
        payload_json: format!(r#"{{"n":{n}}}"#),
        ..Default::default()
    };
    // One publication per writer, each then waiting on the lock: the second
    // is sent once the first writer waits, so that one writer cannot take
    // both in one batch. Only this test's database counts (other tests share
    // the cluster).
    let waiting = "SELECT COUNT(*) AS n FROM pg_stat_activity \
        WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT%'";
    let mut stuck = Vec::new();
    for n in 1..=2 {
        let (mut events, request) = (events.clone(), request(n));
        stuck.push(tokio::spawn(async move { events.publish_event(request).await.expect("publish").into_inner() }));
        keyplane_tests::eventually(
            || async { rows(&db, waiting.into()).await[0].try_get::<i64>("", "n").unwrap() },
            |waiting| *waiting == i64::from(n),
        )
        .await;
    }

    let mut impatient = tonic::Request::new(request(3));
    impatient.set_timeout(Duration::from_millis(300));
    let refused = events.clone().publish_event(impatient).await.expect_err("no writer is free before the deadline");
    assert!(matches!(refused.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.rollback().await.expect("unlock");

    for task in stuck {
        assert!(!task.await.expect("publisher").duplicate);
    }
    receiver.wait_for("/hook", 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = rows(&db, format!("SELECT payload FROM webhook_events WHERE org_id = '{org}' ORDER BY payload")).await;
    let payloads: Vec<String> = stored.iter().map(|row| row.try_get("", "payload").unwrap()).collect();
    assert_eq!(payloads, [r#"{"n":1}"#, r#"{"n":2}"#], "the publication given up on was not stored");
    assert_eq!(receiver.count("/hook"), 2);
    plane.stop().await;
}
