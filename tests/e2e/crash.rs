//! Durability: the real `keyplane` binary is SIGKILLed while 1,000 events
//! are being published and delivered, then started again on the same
//! database. Every acknowledged event must reach the receiver at least once
//! (distinct `webhook-id`s) and no delivery may stay pending.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::process::{ControlPlaneProcess, WebhookServer};
use keyplane_tests::receiver::Receiver;
use keyplane_tests::{Backend, authed_channel, both_backends, random_org};
use pb::delivery_service_client::DeliveryServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::webhook_service_client::WebhookServiceClient;

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
    WebhookServiceClient::new(authed_channel(&server.addr, &root).await)
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.clone(),
            url: receiver.url("/hook"),
            event_types: vec!["load.*".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    // Publish from several tasks; kill the server once a third is acknowledged.
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut publishers = Vec::new();
    for worker in 0..PUBLISHERS {
        let mut events = EventServiceClient::new(authed_channel(&server.addr, &root).await);
        let (org, acknowledged) = (org.clone(), acknowledged.clone());
        publishers.push(tokio::spawn(async move {
            for i in (worker..EVENTS).step_by(PUBLISHERS) {
                let request = pb::PublishEventRequest {
                    org_id: org.clone(),
                    event_type: "load.tested".into(),
                    payload_json: format!(r#"{{"i":{i}}}"#),
                    idempotency_key: String::new(),
                };
                match events.publish_event(request).await {
                    Ok(response) => {
                        acknowledged.lock().unwrap().insert(response.into_inner().event.unwrap().id);
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while acknowledged.lock().unwrap().len() < EVENTS / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("publishing progressed");
    server.kill().await;
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let received_before_restart = distinct_ids(&receiver);
    assert!(acknowledged.len() >= EVENTS / 3);
    assert!(acknowledged.len() < EVENTS, "the kill interrupted publishing ({} acknowledged)", acknowledged.len());

    let restarted = ControlPlaneProcess::start(&args).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let received = distinct_ids(&receiver);
        let missing = acknowledged.difference(&received).count();
        if missing == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{missing} acknowledged events never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut deliveries = DeliveryServiceClient::new(authed_channel(&restarted.addr, &root).await);
    loop {
        let pending = deliveries
            .list_deliveries(pb::ListDeliveriesRequest {
                org_id: org.clone(),
                status: pb::DeliveryStatus::Pending as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if pending.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} deliveries stuck pending", pending.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "crash test ({backend:?}): {} acknowledged, {} received before the kill, {} requests in all",
        acknowledged.len(),
        received_before_restart.len(),
        receiver.received("/hook").len()
    );
    restarted.stop().await;
}

fn distinct_ids(receiver: &Receiver) -> HashSet<String> {
    receiver.received("/hook").iter().map(|r| r.header("webhook-id")).collect()
}
