//! Durability: the real `keyplane` binary is SIGKILLed while 1,000 events
//! are being published and delivered, then started again on the same
//! database. Every acknowledged event must reach the receiver at least once
//! (distinct `webhook-id`s) and no delivery may stay pending.

use std::time::Duration;

use keyplane_tests::process::{ControlPlaneProcess, WebhookServer};
use keyplane_tests::receiver::Receiver;
use keyplane_tests::webhooks::{LoadPublishers, subscribe_to_load, wait_until_none_pending};
use keyplane_tests::{Backend, both_backends, random_org};

both_backends!(acknowledged_events_survive_sigkill);

const EVENTS: usize = 1000;
const PUBLISHERS: usize = 8;

async fn acknowledged_events_survive_sigkill(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let schedule = ["--webhook-timeout", "1s", "--webhook-lease", "3s"];
    let retries = ["--webhook-retry-schedule", "0s,200ms,500ms,1s,1s,1s,1s,1s"];
    let flags: Vec<&str> = schedule.into_iter().chain(retries).collect();
    let Some(setup) = WebhookServer::prepare(backend, data.path(), &flags).await else { return };
    let args = setup.args.clone();
    let receiver = Receiver::start().await;
    let server = ControlPlaneProcess::start(&args).await;
    let root = setup.root_token();
    let org = random_org();
    subscribe_to_load(&server.addr, &root, &org, &receiver.url("/hook")).await;

    // Publish from several tasks; kill the server once a third is acknowledged.
    let publishers = LoadPublishers::start(&server.addr, &root, &org, EVENTS, PUBLISHERS).await;
    tokio::time::timeout(Duration::from_secs(60), async {
        while publishers.acknowledged_count() < EVENTS / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("publishing progressed");
    server.kill().await;
    let acknowledged = publishers.finish().await;
    let received_before_restart = receiver.webhook_ids("/hook");
    assert!(acknowledged.len() >= EVENTS / 3);
    assert!(acknowledged.len() < EVENTS, "the kill interrupted publishing ({} acknowledged)", acknowledged.len());

    let restarted = ControlPlaneProcess::start(&args).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let received = receiver.webhook_ids("/hook");
        let missing = acknowledged.difference(&received).count();
        if missing == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{missing} acknowledged events never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until_none_pending(&restarted.addr, &root, &org).await;
    eprintln!(
        "crash test ({backend:?}): {} acknowledged, {} received before the kill, {} requests in all",
        acknowledged.len(),
        received_before_restart.len(),
        receiver.received("/hook").len()
    );
    restarted.stop().await;
}
