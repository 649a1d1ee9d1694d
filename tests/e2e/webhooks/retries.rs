//! Retries and dead letters: the schedule, Retry-After, timeouts of a hanging endpoint, the per-subscription rate limit, and resending by hand.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::webhooks::{WAIT, deliveries_of, get_delivery, publish, schedule, status_is, subscribe};
use keyplane_tests::{Backend, assert_invalid_field, both_backends, eventually, random_org, start_webhooks_or_skip};
use tonic::Code;

both_backends!(
    failures_retry_then_dead_letter_then_retry_and_recover_by_hand,
    a_hanging_endpoint_times_out_without_delaying_others,
    retry_after_is_honoured,
    the_rate_limit_spaces_deliveries,
);

async fn failures_retry_then_dead_letter_then_retry_and_recover_by_hand(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/flaky", Behavior::Fail { times: 2 });
    receiver.set("/down", Behavior::Fail { times: usize::MAX });
    let (flaky, _) = subscribe(&plane, &org, &receiver.url("/flaky"), &["job.done"]).await;
    let (down, _) = subscribe(&plane, &org, &receiver.url("/down"), &["job.failed"]).await;
    let since = keyplane_tests::timestamp_in(chrono::Duration::seconds(-1));

    // Two failures, then success on the third attempt, 200 ms ± 20% apart.
    publish(&plane, &org, "job.done", "{}").await;
    let delivery = deliveries_of(&plane, &org, &flaky.id).await.remove(0);
    let done = eventually(|| get_delivery(&plane, &org, &delivery.id), status_is(pb::DeliveryStatus::Succeeded)).await;
    let codes: Vec<u32> = done.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [500, 500, 200]);
    assert_eq!(done.attempts[0].response_excerpt, "receiver failure");
    assert_eq!(done.attempts[0].error, "HTTP 500");
    let arrivals = receiver.received("/flaky");
    let ids: Vec<String> = arrivals.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "webhook-id is stable across retries");
    for pair in arrivals.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(150), "retry came after {gap:?}, before the scheduled 200 ms - 20%");
    }

    // Response excerpts keep at most 4 KiB.
    receiver.set("/verbose", Behavior::LargeError(10_000));
    let (verbose, _) = subscribe(&plane, &org, &receiver.url("/verbose"), &["job.verbose"]).await;
    publish(&plane, &org, "job.verbose", "{}").await;
    let delivery = deliveries_of(&plane, &org, &verbose.id).await.remove(0);
    let attempted = eventually(|| get_delivery(&plane, &org, &delivery.id), |d| !d.attempts.is_empty()).await;
    assert_eq!(attempted.attempts[0].status_code, 503);
    assert_eq!(attempted.attempts[0].response_excerpt, "x".repeat(4096));

    // Three failed attempts: dead-lettered.
    publish(&plane, &org, "job.failed", "{}").await;
    let first = deliveries_of(&plane, &org, &down.id).await.remove(0);
    let failed = eventually(|| get_delivery(&plane, &org, &first.id), status_is(pb::DeliveryStatus::Failed)).await;
    assert_eq!(failed.attempts.len(), 3);
    assert_eq!(failed.delivery.as_ref().unwrap().last_status_code, 500);
    assert!(failed.delivery.as_ref().unwrap().finished_at.is_some());

    // A second dead letter, then a retry by hand of the first: one more attempt (4th failure).
    publish(&plane, &org, "job.failed", "{}").await;
    let second = deliveries_of(&plane, &org, &down.id).await.remove(0);
    assert_ne!(second.id, first.id);
    eventually(|| get_delivery(&plane, &org, &second.id), status_is(pb::DeliveryStatus::Failed)).await;
    let mut deliveries = plane.deliveries(&plane.root_token).await;
    let err = deliveries
        .retry_delivery(pb::RetryDeliveryRequest { org_id: org.clone(), id: "dlv_missing".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    receiver.set("/down", Behavior::Succeed);
    let retried = deliveries
        .retry_delivery(pb::RetryDeliveryRequest { org_id: org.clone(), id: first.id.clone() })
        .await
        .unwrap();
    assert_eq!(retried.into_inner().delivery.unwrap().status, pb::DeliveryStatus::Pending as i32);
    let done = eventually(|| get_delivery(&plane, &org, &first.id), status_is(pb::DeliveryStatus::Succeeded)).await;
    assert_eq!(done.attempts.len(), 4);

    // RecoverFailed resends every failed delivery of the subscription since a time.
    let recovered = deliveries
        .recover_failed(pb::RecoverFailedRequest {
            org_id: org.clone(),
            subscription_id: down.id.clone(),
            since: Some(since),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recovered.recovered, 1);
    eventually(|| get_delivery(&plane, &org, &second.id), status_is(pb::DeliveryStatus::Succeeded)).await;
    let err = deliveries
        .recover_failed(pb::RecoverFailedRequest { org_id: org.clone(), subscription_id: down.id, since: None })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "since");
}

async fn a_hanging_endpoint_times_out_without_delaying_others(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend, |config| {
        config.webhooks.retry_schedule = schedule("0s,5s");
        // Few workers, so a hanging endpoint could take them all without the per-endpoint cap.
        config.webhooks.concurrency = 8;
        config.webhooks.endpoint_concurrency = 4;
        // A 3 s timeout leaves a wide margin between "not delayed" and
        // "waited behind at least one hanging request".
        config.webhooks.timeout = Duration::from_secs(3);
        config.webhooks.lease = Duration::from_secs(6);
    });
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/slow", Behavior::Hang(Duration::from_secs(30)));
    let (slow, _) = subscribe(&plane, &org, &receiver.url("/slow"), &["slow.thing"]).await;
    subscribe(&plane, &org, &receiver.url("/fast"), &["fast.thing"]).await;

    for _ in 0..20 {
        publish(&plane, &org, "slow.thing", "{}").await;
    }
    let started = std::time::Instant::now();
    for _ in 0..20 {
        publish(&plane, &org, "fast.thing", "{}").await;
    }
    receiver.wait_for("/fast", 20, WAIT).await;
    let took = started.elapsed();
    // 20 slow deliveries are queued first and each hangs for the 3 s timeout;
    // the fast endpoint must not wait behind them.
    assert!(took < Duration::from_millis(2500), "fast deliveries waited {took:?} behind a hanging endpoint");

    let first = deliveries_of(&plane, &org, &slow.id).await.pop().unwrap();
    let attempted = eventually(|| get_delivery(&plane, &org, &first.id), |d| !d.attempts.is_empty()).await;
    assert_eq!(attempted.attempts[0].status_code, 0);
    assert_eq!(attempted.attempts[0].error, "timeout", "{:?}", attempted.attempts[0]);
    let latency = attempted.attempts[0].latency.unwrap();
    assert!(
        latency.seconds >= 3 || (latency.seconds == 2 && latency.nanos >= 900_000_000),
        "gave up after the timeout: {latency:?}"
    );
}

async fn retry_after_is_honoured(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/busy", Behavior::TooManyRequests { retry_after: "2".into(), times: 1 });
    let (subscription, _) = subscribe(&plane, &org, &receiver.url("/busy"), &["busy.event"]).await;
    publish(&plane, &org, "busy.event", "{}").await;
    let arrivals = receiver.wait_for("/busy", 2, WAIT).await;
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?} despite Retry-After: 2");
    let delivery = deliveries_of(&plane, &org, &subscription.id).await.remove(0);
    let done = eventually(|| get_delivery(&plane, &org, &delivery.id), status_is(pb::DeliveryStatus::Succeeded)).await;
    assert_eq!(done.attempts[0].status_code, 429);
}

async fn the_rate_limit_spaces_deliveries(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    let created = plane
        .webhooks(&plane.root_token)
        .await
        .create_subscription(pb::CreateSubscriptionRequest {
            org_id: org.clone(),
            url: receiver.url("/limited"),
            event_types: vec!["tick.tock".into()],
            rate_limit_per_second: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.subscription.unwrap().rate_limit_per_second, 5);
    for _ in 0..15 {
        publish(&plane, &org, "tick.tock", "{}").await;
    }
    let arrivals = receiver.wait_for("/limited", 15, WAIT).await;
    let span = arrivals[14].at - arrivals[0].at;
    // A burst of 5, then 10 more at 5/s: at least 2 s (less a little slack).
    assert!(span >= Duration::from_millis(1800), "15 deliveries at 5/s took only {span:?}");
    let in_first_second = arrivals.iter().filter(|r| r.at - arrivals[0].at < Duration::from_millis(990)).count();
    assert!(in_first_second <= 10, "{in_first_second} deliveries in the first second at 5/s");
}
