//! Webhook helpers shared by the tests: a control plane that may deliver to
//! loopback, subscribing and publishing with the root token, fetching a
//! delivery or a subscription, and checking a Standard Webhooks signature.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyplane_control_plane::crypto::signing::WebhookSecret;
use keyplane_proto::admin::v1 as pb;
use pb::delivery_service_client::DeliveryServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::webhook_service_client::WebhookServiceClient;

use crate::receiver::Received;
use crate::{Backend, TestControlPlane, authed_channel};

/// Test retry schedule: immediately, then 200 ms twice (3 attempts).
const SHORT_SCHEDULE: &str = "0s,200ms,200ms";
/// How long a test waits for a delivery to arrive or settle.
pub const WAIT: Duration = Duration::from_secs(20);

/// A control plane that may deliver to loopback over http, with a short
/// retry schedule and timeout; `adjust` changes more. `None` when the
/// backend is not available (see [`crate::start_webhooks_or_skip`]).
pub async fn start(
    backend: Backend,
    adjust: impl FnOnce(&mut keyplane_control_plane::Config),
) -> Option<TestControlPlane> {
    TestControlPlane::start_with(backend, |config| {
        config.egress.allow_cidr = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        config.egress.allow_http = true;
        config.webhooks.timeout = Duration::from_secs(1);
        config.webhooks.lease = Duration::from_secs(3);
        config.webhooks.retry_schedule = schedule(SHORT_SCHEDULE);
        adjust(config);
    })
    .await
}

/// [`start`], or return from the test when the backend is not available.
#[macro_export]
macro_rules! start_webhooks_or_skip {
    ($backend:expr, $adjust:expr) => {
        match $crate::webhooks::start($backend, $adjust).await {
            Some(plane) => plane,
            None => return,
        }
    };
    ($backend:expr) => {
        $crate::start_webhooks_or_skip!($backend, |_| {})
    };
}

/// A retry schedule from its command-line form.
pub fn schedule(text: &str) -> keyplane_control_plane::config::RetrySchedule {
    text.parse().expect("retry schedule")
}

/// Creates a subscription with the root token; returns it and its secret.
pub async fn subscribe(plane: &TestControlPlane, org: &str, url: &str, types: &[&str]) -> (pb::Subscription, String) {
    let created = plane
        .webhooks(&plane.root_token)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.to_owned(),
            url: url.to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .expect("create subscription")
        .into_inner();
    (created.subscription.expect("subscription"), created.secret)
}

/// Publishes an event with the root token; returns the response.
pub async fn publish(plane: &TestControlPlane, org: &str, event_type: &str, payload: &str) -> pb::PublishEventResponse {
    plane
        .events(&plane.root_token)
        .await
        .publish_event(pb::PublishEventRequest {
            org_id: org.to_owned(),
            event_type: event_type.to_owned(),
            payload_json: payload.to_owned(),
            ..Default::default()
        })
        .await
        .expect("publish")
        .into_inner()
}

/// Enables or disables a subscription with the root token; returns it.
pub async fn set_enabled(plane: &TestControlPlane, org: &str, id: &str, enabled: bool) -> pb::Subscription {
    let request = pb::UpdateSubscriptionRequest {
        org_id: org.to_owned(),
        id: id.to_owned(),
        update: Some(pb::SubscriptionUpdate { enabled, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["enabled".into()] }),
    };
    let updated = plane.webhooks(&plane.root_token).await.update_subscription(request).await.expect("update");
    updated.into_inner().subscription.expect("subscription")
}

/// Rotates a subscription's secret with the root token (grace in seconds;
/// `None` for the default); returns the new secret.
pub async fn rotate_secret(plane: &TestControlPlane, org: &str, id: &str, grace_seconds: Option<i64>) -> String {
    let request = pb::RotateSubscriptionSecretRequest {
        org_id: org.to_owned(),
        id: id.to_owned(),
        grace_period: grace_seconds.map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
    };
    plane
        .webhooks(&plane.root_token)
        .await
        .rotate_subscription_secret(request)
        .await
        .expect("rotate")
        .into_inner()
        .secret
}

/// The deliveries of a subscription, newest first.
pub async fn deliveries_of(plane: &TestControlPlane, org: &str, subscription: &str) -> Vec<pb::Delivery> {
    plane
        .deliveries(&plane.root_token)
        .await
        .list_deliveries(pb::ListDeliveriesRequest {
            org_id: org.to_owned(),
            subscription_id: subscription.to_owned(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner()
        .deliveries
}

/// One delivery with its attempts (poll it with [`crate::eventually`]).
pub async fn get_delivery(plane: &TestControlPlane, org: &str, id: &str) -> pb::GetDeliveryResponse {
    let request = pb::GetDeliveryRequest { org_id: org.to_owned(), id: id.to_owned() };
    plane.deliveries(&plane.root_token).await.get_delivery(request).await.expect("get delivery").into_inner()
}

/// One subscription (poll it with [`crate::eventually`]).
pub async fn get_subscription(plane: &TestControlPlane, org: &str, id: &str) -> pb::Subscription {
    let request = pb::GetSubscriptionRequest { org_id: org.to_owned(), id: id.to_owned() };
    let response = plane.webhooks(&plane.root_token).await.get_subscription(request).await;
    response.expect("get subscription").into_inner().subscription.expect("subscription")
}

/// Whether a fetched delivery has `status`.
pub fn status_is(status: pb::DeliveryStatus) -> impl Fn(&pb::GetDeliveryResponse) -> bool {
    move |response| response.delivery.as_ref().is_some_and(|d| d.status == status as i32)
}

/// Whether `secret` produced one of the `v1,` signatures of a received request.
pub fn verifies_with(secret: &str, request: &Received) -> bool {
    let secret = WebhookSecret::parse(secret).expect("secret");
    let timestamp: i64 = request.header("webhook-timestamp").parse().expect("timestamp");
    let expected = secret.sign(&request.header("webhook-id"), timestamp, &request.body);
    request.header("webhook-signature").split(' ').any(|s| s == expected)
}

/// Subscribes `org` to `load.*` events at `url` through the server at `addr`.
/// Publishes `messages` events, the `i`th made by `request(i)`, from
/// `clients` concurrently (each takes the next number until all are taken);
/// returns each publication's latency.
pub async fn publish_concurrently(
    clients: Vec<EventServiceClient<crate::Authed>>,
    messages: usize,
    request: impl Fn(usize) -> pb::PublishEventRequest + Send + Sync + 'static,
) -> Vec<Duration> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let request = Arc::new(request);
    let mut tasks = Vec::with_capacity(clients.len());
    for mut client in clients {
        let (next, request) = (next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= messages {
                    return latencies;
                }
                let begun = std::time::Instant::now();
                client.publish_event(request(i)).await.expect("publish");
                latencies.push(begun.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(messages);
    for task in tasks {
        latencies.extend(task.await.expect("publisher"));
    }
    latencies
}

pub async fn subscribe_to_load(addr: &str, token: &str, org: &str, url: &str) {
    WebhookServiceClient::new(authed_channel(addr, token).await)
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.to_owned(),
            url: url.to_owned(),
            event_types: vec!["load.*".into()],
            ..Default::default()
        })
        .await
        .expect("create subscription");
}

/// Concurrent publishers of `load.tested` events through a real server,
/// each stopping when the server goes away; they record every event id
/// whose publication was acknowledged.
pub struct LoadPublishers {
    acknowledged: Arc<Mutex<HashSet<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LoadPublishers {
    /// Starts `workers` publishers sharing `events` publications to `org` through `addr`.
    pub async fn start(addr: &str, token: &str, org: &str, events: usize, workers: usize) -> Self {
        let acknowledged = Arc::new(Mutex::new(HashSet::new()));
        let mut tasks = Vec::new();
        for worker in 0..workers {
            let mut client = EventServiceClient::new(authed_channel(addr, token).await);
            let (org, acknowledged) = (org.to_owned(), acknowledged.clone());
            tasks.push(tokio::spawn(async move {
                for i in (worker..events).step_by(workers) {
                    let request = pb::PublishEventRequest {
                        org_id: org.clone(),
                        event_type: "load.tested".into(),
                        payload_json: format!(r#"{{"i":{i}}}"#),
                        ..Default::default()
                    };
                    match client.publish_event(request).await {
                        Ok(response) => {
                            acknowledged.lock().unwrap().insert(response.into_inner().event.unwrap().id);
                        }
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        Self { acknowledged, tasks }
    }

    /// How many publications were acknowledged so far.
    pub fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Waits for every publisher to stop; returns the acknowledged event ids.
    pub async fn finish(self) -> HashSet<String> {
        for task in self.tasks {
            task.await.expect("publisher");
        }
        self.acknowledged.lock().unwrap().clone()
    }
}

/// Waits (a minute at most) until `org` has no pending delivery on the server at `addr`.
pub async fn wait_until_none_pending(addr: &str, token: &str, org: &str) {
    let client = DeliveryServiceClient::new(authed_channel(addr, token).await);
    let request = pb::ListDeliveriesRequest {
        org_id: org.to_owned(),
        status: pb::DeliveryStatus::Pending as i32,
        ..Default::default()
    };
    let pending = || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.list_deliveries(request).await.expect("list").into_inner().deliveries.len() }
    };
    crate::eventually_within(Duration::from_secs(60), pending, |count| *count == 0).await;
}

/// The field violations of an INVALID_ARGUMENT: `(field, description)`.
pub fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let bad = details.bad_request().expect("BadRequest details");
    bad.field_violations.iter().map(|v| (v.field.clone(), v.description.clone())).collect()
}
