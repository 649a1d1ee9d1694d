//! Usage analytics end to end: sidecar checks counted by key, minute and
//! outcome; buckets placed by the reported minute; a report whose answer is
//! lost counted once; concurrent replicas and sidecars without lost
//! updates; query rules, isolation and scopes; webhook attempt statistics.

use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync_pb;
use keyplane_tests::proxy::{TcpProxy, Upstream};
use keyplane_tests::receiver::{Behavior, Receiver};
use keyplane_tests::webhooks::{deliveries_of, publish, status_is, subscribe};
use keyplane_tests::{
    Backend, TestControlPlane, TestSidecar, assert_invalid_field, both_backends, eventually, forge_secret, random_org,
    start_or_skip, start_webhooks_or_skip,
};
use tonic::Code;

both_backends!(
    sidecar_checks_are_counted_by_key_minute_and_outcome,
    buckets_follow_the_reported_minute_and_report_ids_count_once,
    a_report_whose_answer_is_lost_is_counted_once,
    queries_zero_fill_and_refuse_bad_ranges,
    rankings_follow_reports_into_buckets_already_ranked,
    rankings_narrowed_by_growth_stay_exact,
    rankings_with_too_many_candidates_read_the_bucket_again,
    usage_respects_orgs_and_scopes,
    delivery_stats_match_a_webhook_run,
);

fn ts(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }
}

/// The last `back` of usage of `key_id` (or the org, when empty) at `granularity`.
/// `usage_count` of a key, as GetApiKey reports it.
async fn usage_count(plane: &TestControlPlane, org: &str, id: &str) -> u64 {
    let request = pb::GetApiKeyRequest { org_id: org.to_owned(), id: id.to_owned() };
    let key = plane.keys(&plane.root_token).await.get_api_key(request).await.unwrap().into_inner().api_key;
    key.unwrap().usage_count
}

async fn usage(
    plane: &TestControlPlane,
    org: &str,
    key_id: &str,
    granularity: pb::Granularity,
    back: TimeDelta,
) -> pb::QueryKeyUsageResponse {
    let now = Utc::now();
    plane
        .usage(&plane.root_token)
        .await
        .query_key_usage(pb::QueryKeyUsageRequest {
            org_id: org.to_owned(),
            key_id: key_id.to_owned(),
            start_time: Some(ts(now - back)),
            end_time: Some(ts(now)),
            granularity: granularity as i32,
            environment: 0,
        })
        .await
        .expect("query key usage")
        .into_inner()
}

/// (allowed, unauthorized, forbidden, rate_limited) of a response's totals.
fn totals(response: &pb::QueryKeyUsageResponse) -> (u64, u64, u64, u64) {
    let t = response.totals.unwrap_or_default();
    (t.allowed, t.unauthorized, t.forbidden, t.rate_limited)
}

/// Waits until the last 10 minutes of `key_id` total `expected`.
async fn wait_for_totals(plane: &TestControlPlane, org: &str, key_id: &str, expected: (u64, u64, u64, u64)) {
    let minutes = || usage(plane, org, key_id, pb::Granularity::Minute, TimeDelta::minutes(10));
    let reached = eventually(minutes, |r| totals(r) == expected).await;
    assert_eq!(totals(&reached), expected);
}

async fn create_key(plane: &TestControlPlane, org: &str, request: pb::CreateApiKeyRequest) -> (String, String) {
    let request = pb::CreateApiKeyRequest { org_id: org.to_owned(), name: "usage".into(), ..request };
    let created = plane.keys(&plane.root_token).await.create_api_key(request).await.unwrap().into_inner();
    (created.api_key.unwrap().id, created.token)
}

async fn sidecar_checks_are_counted_by_key_minute_and_outcome(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |_| {}).await;
    let org = random_org();
    let scoped = pb::CreateApiKeyRequest { scopes: vec!["orders:read".into()], ..Default::default() };
    let (busy, busy_token) = create_key(&plane, &org, scoped).await;
    let limit = pb::RateLimit {
        requests: 3,
        window: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        ..Default::default()
    };
    let (limited, limited_token) =
        create_key(&plane, &org, pb::CreateApiKeyRequest { rate_limit: Some(limit), ..Default::default() }).await;
    let test_env = pb::CreateApiKeyRequest { environment: pb::Environment::Test as i32, ..Default::default() };
    let (other_env, other_env_token) = create_key(&plane, &org, test_env).await;

    for _ in 0..5 {
        assert_eq!(sidecar.check(&busy_token, Some("orders:read")).await.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(sidecar.check(&busy_token, Some("orders:write")).await.status(), 403);
        assert_eq!(sidecar.check_status(&forge_secret(&busy_token)).await, 401);
    }
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(sidecar.check_status(&limited_token).await);
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(sidecar.check_status(&other_env_token).await, 403, "a live sidecar refuses test keys");
    // Garbage names no key: counted only in the sidecar's metrics.
    assert_eq!(sidecar.check_status("kp_live_garbage").await, 401);

    wait_for_totals(&plane, &org, &busy, (5, 2, 2, 0)).await;
    wait_for_totals(&plane, &org, &limited, (3, 0, 0, 2)).await;
    wait_for_totals(&plane, &org, &other_env, (0, 0, 1, 0)).await;
    wait_for_totals(&plane, &org, "", (8, 2, 3, 2)).await;
    assert!(sidecar.metric("keyplane_sidecar_checks_total", "reason=\"malformed\"").await >= 1.0);

    // Every granularity agrees, the counts sit in the minutes they happened
    // (one, or two if the checks straddled a minute), and an environment
    // filter splits the org.
    for granularity in [pb::Granularity::Minute, pb::Granularity::Hour, pb::Granularity::Day] {
        let back = if granularity == pb::Granularity::Minute { TimeDelta::minutes(10) } else { TimeDelta::days(2) };
        assert_eq!(totals(&usage(&plane, &org, &busy, granularity, back).await), (5, 2, 2, 0), "{granularity:?}");
    }
    let minutes = usage(&plane, &org, &busy, pb::Granularity::Minute, TimeDelta::minutes(10)).await;
    let used = minutes.buckets.iter().filter(|b| b.counts.as_ref().is_some_and(|c| c.total > 0)).count();
    assert!((1..=2).contains(&used), "{used} minutes hold the checks");
    let mut query = pb::QueryKeyUsageRequest {
        org_id: org.clone(),
        start_time: Some(ts(Utc::now() - TimeDelta::minutes(10))),
        end_time: Some(ts(Utc::now())),
        granularity: pb::Granularity::Minute as i32,
        environment: pb::Environment::Test as i32,
        ..Default::default()
    };
    let mut client = plane.usage(&plane.root_token).await;
    let test_only = client.query_key_usage(query.clone()).await.unwrap().into_inner();
    assert_eq!(totals(&test_only), (0, 0, 1, 0));
    query.environment = pb::Environment::Live as i32;
    assert_eq!(totals(&client.query_key_usage(query).await.unwrap().into_inner()), (8, 2, 2, 2));

    // The busiest keys, by total and by one outcome.
    let top = |order_by: pb::UsageOutcome| pb::TopKeysRequest {
        org_id: org.clone(),
        start_time: Some(ts(Utc::now() - TimeDelta::hours(1))),
        end_time: Some(ts(Utc::now())),
        order_by: order_by as i32,
        ..Default::default()
    };
    let by_total = client.top_keys(top(pb::UsageOutcome::Unspecified)).await.unwrap().into_inner().keys;
    let ids: Vec<&str> = by_total.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(ids, [busy.as_str(), limited.as_str(), other_env.as_str()]);
    assert_eq!(by_total[0].name, "usage");
    assert_eq!(by_total[0].counts.as_ref().unwrap().total, 9);
    assert_eq!(by_total[2].environment, pb::Environment::Test as i32);
    let by_limits = client.top_keys(top(pb::UsageOutcome::RateLimited)).await.unwrap().into_inner().keys;
    assert_eq!(by_limits[0].key_id, limited);

    // usage_count and last_used_at come from the same reports (allowed checks only).
    let key = plane
        .keys(&plane.root_token)
        .await
        .get_api_key(pb::GetApiKeyRequest { org_id: org.clone(), id: busy.clone() })
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(key.usage_count, 5);
    assert!(key.last_used_at.is_some());

    // VerifyApiKey is counted too.
    let mut keys = plane.keys(&plane.root_token).await;
    let verify = |token: &str| pb::VerifyApiKeyRequest { token: token.to_owned(), ..Default::default() };
    assert!(keys.verify_api_key(verify(&busy_token)).await.unwrap().into_inner().valid);
    assert!(!keys.verify_api_key(verify(&forge_secret(&busy_token))).await.unwrap().into_inner().valid);
    wait_for_totals(&plane, &org, &busy, (6, 3, 2, 0)).await;
    sidecar.stop().await;
    plane.stop().await;
}

/// A sidecar credential and a client speaking the sidecar protocol.
async fn as_sidecar(
    plane: &TestControlPlane,
) -> sync_pb::key_sync_service_client::KeySyncServiceClient<keyplane_tests::Authed> {
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    plane.key_sync(&credential).await
}

fn count(key_id: &str, minute: DateTime<Utc>, allowed: u64, forbidden: u64) -> sync_pb::UsageCount {
    sync_pb::UsageCount {
        key_id: key_id.to_owned(),
        minute: Some(ts(minute)),
        allowed,
        forbidden,
        last_used_at: (allowed > 0).then(|| ts(minute + TimeDelta::seconds(30))),
        ..Default::default()
    }
}

async fn buckets_follow_the_reported_minute_and_report_ids_count_once(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (key, _) = plane.create_key(&org, &[]).await;
    let mut sync = as_sidecar(&plane).await;
    // Two minutes either side of the last full hour.
    let hour = Utc::now().duration_trunc(TimeDelta::hours(1)).unwrap() - TimeDelta::hours(1);
    let minute = |offset: i64| hour + TimeDelta::minutes(offset);
    let report = sync_pb::ReportUsageRequest {
        report_id: "report-1".into(),
        counts: vec![
            count(&key.id, minute(-2), 1, 0),
            count(&key.id, minute(-1), 2, 1),
            count(&key.id, minute(0), 3, 0),
            count(&key.id, minute(1), 4, 0),
            count("key_doesnotexist0000000000", minute(1), 9, 9),
        ],
        ..Default::default()
    };
    let applied = sync.report_usage(report.clone()).await.unwrap().into_inner();
    assert_eq!((applied.applied, applied.duplicate), (4, false), "the unknown key is skipped");
    // The same report again (a retry): acknowledged, not counted.
    let again = sync.report_usage(report).await.unwrap().into_inner();
    assert_eq!((again.applied, again.duplicate), (0, true));

    let mut client = plane.usage(&plane.root_token).await;
    let query = |start: DateTime<Utc>, end: DateTime<Utc>, granularity: pb::Granularity| pb::QueryKeyUsageRequest {
        org_id: org.clone(),
        key_id: key.id.clone(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
        granularity: granularity as i32,
        environment: 0,
    };
    let minutes =
        client.query_key_usage(query(minute(-5), minute(5), pb::Granularity::Minute)).await.unwrap().into_inner();
    let allowed: Vec<u64> = minutes.buckets.iter().map(|b| b.counts.as_ref().unwrap().allowed).collect();
    assert_eq!(allowed, [0, 0, 0, 1, 2, 3, 4, 0, 0, 0], "zero-filled minutes");
    assert_eq!(minutes.buckets[0].start_time, Some(ts(minute(-5))));
    let hours = client
        .query_key_usage(query(hour - TimeDelta::hours(2), hour + TimeDelta::hours(1), pb::Granularity::Hour))
        .await
        .unwrap()
        .into_inner();
    let per_hour: Vec<(u64, u64)> =
        hours.buckets.iter().map(|b| b.counts.as_ref().map(|c| (c.allowed, c.forbidden)).unwrap()).collect();
    assert_eq!(per_hour, [(0, 0), (3, 1), (7, 0)], "the hour boundary splits the minutes");
    assert_eq!(totals(&hours), (10, 0, 1, 0));

    // Day boundary: the last minute of yesterday and the first of today.
    let midnight = Utc::now().duration_trunc(TimeDelta::days(1)).unwrap();
    let report = sync_pb::ReportUsageRequest {
        report_id: "report-2".into(),
        counts: vec![count(&key.id, midnight - TimeDelta::minutes(1), 5, 0), count(&key.id, midnight, 6, 0)],
        ..Default::default()
    };
    sync.report_usage(report).await.unwrap();
    let days = client
        .query_key_usage(query(midnight - TimeDelta::days(1), Utc::now(), pb::Granularity::Day))
        .await
        .unwrap()
        .into_inner();
    let per_day: Vec<u64> = days.buckets.iter().map(|b| b.counts.as_ref().unwrap().allowed).collect();
    // The hour-boundary counts fall on whichever day their minutes are.
    let earlier: [(i64, u64); 4] = [(-2, 1), (-1, 2), (0, 3), (1, 4)];
    let today: u64 = earlier.iter().filter(|(m, _)| minute(*m) >= midnight).map(|(_, n)| n).sum();
    assert_eq!(per_day, [5 + 10 - today, 6 + today]);

    // An old sidecar's report (no id, allowed counts only) still counts,
    // in the minute of its last use, and feeds usage_count.
    let before = usage_count(&plane, &org, &key.id).await;
    assert_eq!(before, 21);
    let old = sync_pb::ReportUsageRequest {
        entries: vec![sync_pb::UsageEntry {
            key_id: key.id.clone(),
            count: 7,
            last_used_at: Some(ts(minute(2) + TimeDelta::seconds(10))),
        }],
        ..Default::default()
    };
    assert_eq!(sync.report_usage(old).await.unwrap().into_inner().applied, 1);
    let minutes =
        client.query_key_usage(query(minute(2), minute(3), pb::Granularity::Minute)).await.unwrap().into_inner();
    assert_eq!(totals(&minutes), (7, 0, 0, 0));

    // Malformed reports name the field.
    for (report, field) in [
        (sync_pb::ReportUsageRequest { report_id: "bad id!".into(), ..Default::default() }, "report_id"),
        (
            sync_pb::ReportUsageRequest {
                counts: vec![count(&key.id, minute(0) + TimeDelta::seconds(7), 1, 0)],
                ..Default::default()
            },
            "counts[0].minute",
        ),
        (
            sync_pb::ReportUsageRequest {
                counts: vec![count(
                    &key.id,
                    Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() + TimeDelta::hours(1),
                    1,
                    0,
                )],
                ..Default::default()
            },
            "counts[0].minute",
        ),
        (
            sync_pb::ReportUsageRequest {
                counts: vec![sync_pb::UsageCount { allowed: u64::MAX, ..count(&key.id, minute(0), 0, 0) }],
                ..Default::default()
            },
            "counts[0].allowed",
        ),
    ] {
        assert_invalid_field(&sync.report_usage(report).await.unwrap_err(), field);
    }
    // Only sidecar credentials report.
    let (_, admin) = plane.create_key(&org, &["keyplane:admin"]).await;
    let err = plane.key_sync(&admin).await.report_usage(sync_pb::ReportUsageRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    plane.stop().await;
}

async fn a_report_whose_answer_is_lost_is_counted_once(backend: Backend) {
    let plane = start_or_skip!(backend);
    let proxy = TcpProxy::start(Upstream::Tcp(plane.addr)).await;
    let sidecar = TestSidecar::start(&plane, |config| {
        config.control_plane = vec![format!("http://{}", proxy.addr)];
        config.usage_interval = Duration::from_millis(300);
        config.max_staleness = Duration::from_secs(30);
    })
    .await;
    let org = random_org();
    let (key, token) = plane.create_key(&org, &[]).await;
    // Cache the key first, so checks need no Verify while answers are dropped.
    assert_eq!(sidecar.check_status(&token).await, 200);
    wait_for_totals(&plane, &org, &key.id, (1, 0, 0, 0)).await;

    proxy.mute_replies();
    for _ in 0..7 {
        assert_eq!(sidecar.check_status(&token).await, 200);
    }
    // A report reaches the control plane and is applied; its answer is lost
    // (later counts wait behind it, so not all 7 need be in).
    let minutes = || usage(&plane, &org, &key.id, pb::Granularity::Minute, TimeDelta::minutes(10));
    eventually(minutes, |r| totals(r).0 > 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.cut();
    proxy.restore();
    // The sidecar reconnects and resends the same report first (a duplicate), then new counts.
    for _ in 0..3 {
        assert_eq!(sidecar.check_status(&token).await, 200);
    }
    wait_for_totals(&plane, &org, &key.id, (11, 0, 0, 0)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    wait_for_totals(&plane, &org, &key.id, (11, 0, 0, 0)).await;
    let usage_count = usage_count(&plane, &org, &key.id).await;
    assert_eq!(usage_count, 11, "the resent report was not counted twice");
    sidecar.stop().await;
    plane.stop().await;
}

/// (attempts, succeeded, failed, the largest p50 in seconds) over the buckets with attempts.
fn summed(buckets: Vec<pb::DeliveryStatsBucket>) -> (u64, u64, u64, f64) {
    let active: Vec<_> = buckets.into_iter().filter(|b| b.attempts > 0).collect();
    let sum = |f: fn(&pb::DeliveryStatsBucket) -> u64| active.iter().map(f).sum::<u64>();
    let p50 = active.iter().filter_map(|b| b.p50_latency).map(|d| d.seconds as f64 + d.nanos as f64 / 1e9);
    (sum(|b| b.attempts), sum(|b| b.succeeded), sum(|b| b.failed), p50.fold(0.0, f64::max))
}

/// (key id, total) of the org's busiest keys over the last 7 days (days).
/// The `limit` busiest keys of `org` over the last week and their totals
/// (0: the default limit).
async fn ranking(plane: &TestControlPlane, org: &str, limit: u32) -> Vec<(String, u64)> {
    let keys = ranking_by(plane, org, pb::UsageOutcome::Unspecified, pb::Environment::Unspecified, limit).await;
    keys.into_iter().map(|k| (k.key_id, k.counts.unwrap_or_default().total)).collect()
}

async fn ranking_by(
    plane: &TestControlPlane,
    org: &str,
    order_by: pb::UsageOutcome,
    environment: pb::Environment,
    limit: u32,
) -> Vec<pb::KeyUsageSummary> {
    let request = pb::TopKeysRequest {
        org_id: org.to_owned(),
        start_time: Some(ts(Utc::now() - TimeDelta::days(7))),
        end_time: Some(ts(Utc::now())),
        order_by: order_by as i32,
        environment: environment as i32,
        limit,
        ..Default::default()
    };
    plane.usage(&plane.root_token).await.top_keys(request).await.expect("top keys").into_inner().keys
}

/// TopKeys keeps each bucket's per-key counts between queries: reports into
/// buckets it has ranked (today's and yesterday's) move the ranking at
/// once, on the control plane that applied them and on a replica.
async fn rankings_follow_reports_into_buckets_already_ranked(backend: Backend) {
    let plane = start_or_skip!(backend);
    let replica = plane.replica().await;
    let org = random_org();
    let (a, _) = plane.create_key(&org, &[]).await;
    let (b, _) = plane.create_key(&org, &[]).await;
    let mut sync = as_sidecar(&plane).await;
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let yesterday = now - TimeDelta::days(1);
    let report = |id: &str, counts: Vec<sync_pb::UsageCount>| sync_pb::ReportUsageRequest {
        report_id: id.to_owned(),
        counts,
        ..Default::default()
    };
    sync.report_usage(report("r1", vec![count(&a.id, yesterday, 5, 0), count(&b.id, now, 3, 0)])).await.unwrap();
    let expected = vec![(a.id.clone(), 5), (b.id.clone(), 3)];
    assert_eq!(ranking(&plane, &org, 0).await, expected);
    assert_eq!(ranking(&replica, &org, 0).await, expected);

    sync.report_usage(report("r2", vec![count(&b.id, now, 4, 0)])).await.unwrap();
    let expected = vec![(b.id.clone(), 7), (a.id.clone(), 5)];
    assert_eq!(ranking(&plane, &org, 0).await, expected, "today's bucket was read again");
    assert_eq!(ranking(&replica, &org, 0).await, expected, "today's bucket was read again on the replica");

    sync.report_usage(report("r3", vec![count(&a.id, yesterday, 0, 3)])).await.unwrap();
    let expected = vec![(a.id.clone(), 8), (b.id.clone(), 7)];
    assert_eq!(ranking(&replica, &org, 0).await, expected, "a late report into yesterday");
    assert_eq!(ranking(&plane, &org, 0).await, expected);
    // Ranked by one outcome: keys without any are left out; each key's
    // counts are all its outcomes.
    let forbidden = ranking_by(&plane, &org, pb::UsageOutcome::Forbidden, pb::Environment::Unspecified, 0).await;
    assert_eq!(forbidden.len(), 1);
    let counts = forbidden[0].counts.unwrap_or_default();
    assert_eq!((forbidden[0].key_id.as_str(), counts.allowed, counts.forbidden), (a.id.as_str(), 5, 3));

    // One environment: a test key busier than both live ones.
    let test_key = pb::CreateApiKeyRequest { environment: pb::Environment::Test as i32, ..Default::default() };
    let (t, _) = create_key(&plane, &org, test_key).await;
    sync.report_usage(report("r4", vec![count(&t, now, 20, 0)])).await.unwrap();
    let ids = |keys: Vec<pb::KeyUsageSummary>| keys.into_iter().map(|k| k.key_id).collect::<Vec<_>>();
    let by = |environment| ranking_by(&replica, &org, pb::UsageOutcome::Unspecified, environment, 0);
    assert_eq!(ids(by(pb::Environment::Test).await), std::slice::from_ref(&t));
    assert_eq!(ids(by(pb::Environment::Live).await), [a.id.clone(), b.id.clone()]);
    assert_eq!(ids(by(pb::Environment::Unspecified).await), [t, a.id.clone(), b.id.clone()]);
    replica.stop().await;
    plane.stop().await;
}

/// The ids of `count` new keys of `org`.
async fn new_keys(plane: &TestControlPlane, org: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(plane.create_key(org, &[]).await.0.id);
    }
    ids
}

/// With fewer keys asked for than are ranked, a bucket that grew since it
/// was kept is not read again while the growth cannot lift a key past the
/// last winner: the candidates' exact counts decide. A key whose kept count
/// plus the growth reaches the last winner's is a candidate (and can win);
/// growth that a key not kept at all could hold has the bucket read again.
async fn rankings_narrowed_by_growth_stay_exact(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let ids = new_keys(&plane, &org, 5).await;
    let [a, b, c, d, e] = &ids[..] else { unreachable!() };
    let mut sync = as_sidecar(&plane).await;
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let mut reports = 0;
    let mut report = async |counts: &[(&String, u64)]| {
        reports += 1;
        let counts = counts.iter().map(|(id, allowed)| count(id, now, *allowed, 0)).collect();
        let request = sync_pb::ReportUsageRequest { report_id: format!("r{reports}"), counts, ..Default::default() };
        sync.report_usage(request).await.unwrap();
    };
    let top_two = |totals: &[(&String, u64)]| {
        let mut expected: Vec<(String, u64)> = totals.iter().map(|(id, n)| ((*id).clone(), *n)).collect();
        expected.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        expected.truncate(2);
        expected
    };

    report(&[(a, 20), (b, 15), (c, 10), (d, 1)]).await;
    assert_eq!(ranking(&plane, &org, 2).await, top_two(&[(a, 20), (b, 15)]));
    report(&[(c, 3)]).await;
    assert_eq!(ranking(&plane, &org, 2).await, top_two(&[(a, 20), (b, 15)]), "c at 13 stays out");
    report(&[(c, 4)]).await;
    assert_eq!(ranking(&plane, &org, 2).await, top_two(&[(a, 20), (c, 17)]), "kept 10 + growth 7 reached 15: c won");
    report(&[(e, 30)]).await;
    assert_eq!(ranking(&plane, &org, 2).await, top_two(&[(e, 30), (a, 20)]), "e was not kept: read again");
    report(&[(b, 5)]).await;
    let tied = top_two(&[(e, 30), (a, 20), (b, 20), (c, 17)]);
    assert_eq!(ranking(&plane, &org, 2).await, tied, "b reached a's 20: ties go by key id");
    assert_eq!(ranking(&plane, &org, 0).await.len(), 5, "every key with checks, with the default limit");
    plane.stop().await;
}

/// A grown bucket whose growth would leave more candidates than a ranking
/// reads exactly is read again, and what the kept copy had counted is
/// replaced, not added to.
async fn rankings_with_too_many_candidates_read_the_bucket_again(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let ids = new_keys(&plane, &org, 41).await;
    let mut sync = as_sidecar(&plane).await;
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let counts = ids.iter().enumerate().map(|(i, id)| count(id, now, if i == 0 { 100 } else { 95 }, 0)).collect();
    let report = sync_pb::ReportUsageRequest { report_id: "all".into(), counts, ..Default::default() };
    sync.report_usage(report).await.unwrap();
    assert_eq!(ranking(&plane, &org, 1).await, [(ids[0].clone(), 100)]);
    // 8 more for one key lifts all 40 keys at 95 to the winner's 100 as far as
    // bounds tell: 41 candidates, more than 1 + 32, so the bucket is read again.
    let report = sync_pb::ReportUsageRequest {
        report_id: "one".into(),
        counts: vec![count(&ids[7], now, 8, 0)],
        ..Default::default()
    };
    sync.report_usage(report).await.unwrap();
    assert_eq!(ranking(&plane, &org, 1).await, [(ids[7].clone(), 103)], "counted once: 103 beats 100");
    plane.stop().await;
}

// Several replicas on one Postgres (SQLite has one process).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_and_sidecars_report_concurrently_without_lost_updates_postgres() {
    let plane = start_or_skip!(Backend::Postgres);
    let replica = plane.replica().await;
    let org = random_org();
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (key, token) = plane.create_key(&org, &[]).await;
        ids.push(key.id);
        tokens.push(token);
    }
    let mut sidecars = Vec::new();
    for i in 0..4 {
        let via = if i % 2 == 0 { &plane } else { &replica };
        sidecars.push(TestSidecar::start(via, |config| config.usage_interval = Duration::from_millis(50)).await);
    }
    const CHECKS: usize = 150;
    let mut tasks = Vec::new();
    for sidecar in &sidecars {
        for token in &tokens {
            let (client, url, token) =
                (sidecar.http.clone(), format!("http://{}/check", sidecar.http_addr), token.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..CHECKS {
                    let status = client.get(&url).bearer_auth(&token).send().await.unwrap().status();
                    assert_eq!(status, 200);
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    for sidecar in sidecars {
        sidecar.stop().await;
    }
    let per_key = (4 * CHECKS) as u64;
    for id in &ids {
        wait_for_totals(&plane, &org, id, (per_key, 0, 0, 0)).await;
    }
    wait_for_totals(&replica, &org, "", (3 * per_key, 0, 0, 0)).await;
    replica.stop().await;
    plane.stop().await;
}

async fn queries_zero_fill_and_refuse_bad_ranges(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let (key, _) = plane.create_key(&org, &[]).await;
    let mut client = plane.usage(&plane.root_token).await;
    let now = Utc::now();
    let query = |start: DateTime<Utc>, end: DateTime<Utc>, granularity: i32| pb::QueryKeyUsageRequest {
        org_id: org.clone(),
        key_id: key.id.clone(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
        granularity,
        environment: 0,
    };
    let minute = pb::Granularity::Minute as i32;
    let hour = pb::Granularity::Hour as i32;
    let empty = client.query_key_usage(query(now - TimeDelta::hours(1), now, minute)).await.unwrap().into_inner();
    assert!((60..=61).contains(&empty.buckets.len()), "{} minute buckets in an hour", empty.buckets.len());
    assert!(empty.buckets.iter().all(|b| b.counts.as_ref().unwrap().total == 0));
    let day = client.query_key_usage(query(now - TimeDelta::hours(24), now, minute)).await.unwrap().into_inner();
    assert!(day.buckets.len() <= 1500);

    for (request, field) in [
        (query(now, now - TimeDelta::hours(1), minute), "end_time"),
        (query(now + TimeDelta::hours(1), now + TimeDelta::hours(2), minute), "start_time"),
        (query(now - TimeDelta::hours(1), now + TimeDelta::hours(1), minute), "end_time"),
        (query(now - TimeDelta::hours(30), now, minute), "end_time"),
        (query(now - TimeDelta::days(3), now, minute), "start_time"),
        (query(now - TimeDelta::days(365), now, hour), "start_time"),
        (query(now - TimeDelta::hours(1), now, 0), "granularity"),
        (query(now - TimeDelta::hours(1), now, 42), "granularity"),
        (pb::QueryKeyUsageRequest { start_time: None, ..query(now, now, hour) }, "start_time"),
        (pb::QueryKeyUsageRequest { environment: 9, ..query(now - TimeDelta::hours(1), now, hour) }, "environment"),
    ] {
        assert_invalid_field(&client.query_key_usage(request).await.unwrap_err(), field);
    }
    let top = |limit: u32, order_by: i32| pb::TopKeysRequest {
        org_id: org.clone(),
        start_time: Some(ts(now - TimeDelta::days(7))),
        end_time: Some(ts(now)),
        limit,
        order_by,
        ..Default::default()
    };
    assert!(client.top_keys(top(0, 0)).await.unwrap().into_inner().keys.is_empty(), "7 days read day rollups");
    assert_invalid_field(&client.top_keys(top(101, 0)).await.unwrap_err(), "limit");
    assert_invalid_field(&client.top_keys(top(5, 9)).await.unwrap_err(), "order_by");
    let stats = |start: DateTime<Utc>, end: DateTime<Utc>| pb::QueryDeliveryStatsRequest {
        org_id: org.clone(),
        start_time: Some(ts(start)),
        end_time: Some(ts(end)),
        granularity: hour,
        ..Default::default()
    };
    let hours = client.query_delivery_stats(stats(now - TimeDelta::hours(5), now)).await.unwrap().into_inner();
    assert!((5..=6).contains(&hours.buckets.len()));
    assert!(hours.buckets.iter().all(|b| b.attempts == 0 && b.p50_latency.is_none()));
    assert_invalid_field(
        &client.query_delivery_stats(stats(now, now - TimeDelta::hours(1))).await.unwrap_err(),
        "end_time",
    );
    plane.stop().await;
}

async fn usage_respects_orgs_and_scopes(backend: Backend) {
    let plane = start_or_skip!(backend);
    let (org_a, org_b) = (random_org(), random_org());
    let (b_key, _) = plane.create_key(&org_b, &[]).await;
    let (_, a_reader) = plane.create_key(&org_a, &["keyplane:usage:read"]).await;
    let (_, a_keys_only) = plane.create_key(&org_a, &["keyplane:keys:read"]).await;
    let (b_subscription, _) = subscribe(&plane, &org_b, "https://hooks.example.com/b", &["*"]).await;
    let now = Utc::now();
    let range = (Some(ts(now - TimeDelta::hours(1))), Some(ts(now)));
    let key_usage = |org: &str, key_id: &str| pb::QueryKeyUsageRequest {
        org_id: org.to_owned(),
        key_id: key_id.to_owned(),
        start_time: range.0,
        end_time: range.1,
        granularity: pb::Granularity::Minute as i32,
        environment: 0,
    };
    let top_keys = |org: &str| pb::TopKeysRequest {
        org_id: org.to_owned(),
        start_time: range.0,
        end_time: range.1,
        ..Default::default()
    };
    let delivery_stats = |org: &str, subscription_id: &str| pb::QueryDeliveryStatsRequest {
        org_id: org.to_owned(),
        subscription_id: subscription_id.to_owned(),
        start_time: range.0,
        end_time: range.1,
        granularity: pb::Granularity::Minute as i32,
    };

    // Another org's key or subscription is simply not found.
    let mut reader = plane.usage(&a_reader).await;
    let err = reader.query_key_usage(key_usage("", &b_key.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = reader.query_delivery_stats(delivery_stats("", &b_subscription.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Naming the other org is refused; its own org works.
    for err in [
        reader.query_key_usage(key_usage(&org_b, "")).await.unwrap_err(),
        reader.top_keys(top_keys(&org_b)).await.unwrap_err(),
        reader.query_delivery_stats(delivery_stats(&org_b, "")).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    assert!(reader.query_key_usage(key_usage("", "")).await.is_ok());
    assert!(reader.top_keys(top_keys("")).await.is_ok());
    assert!(reader.query_delivery_stats(delivery_stats("", "")).await.is_ok());

    // Every RPC needs keyplane:usage:read.
    let mut keys_only = plane.usage(&a_keys_only).await;
    for err in [
        keys_only.query_key_usage(key_usage("", "")).await.unwrap_err(),
        keys_only.top_keys(top_keys("")).await.unwrap_err(),
        keys_only.query_delivery_stats(delivery_stats("", "")).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("keyplane:usage:read"), "{}", err.message());
    }
    // Platform credentials name the org.
    let err = plane.usage(&plane.root_token).await.top_keys(top_keys("")).await.unwrap_err();
    assert_invalid_field(&err, "org_id");
    plane.stop().await;
}

async fn delivery_stats_match_a_webhook_run(backend: Backend) {
    let plane = start_webhooks_or_skip!(backend);
    let receiver = Receiver::start().await;
    let org = random_org();
    receiver.set("/slow", Behavior::Hang(Duration::from_millis(300)));
    receiver.set("/down", Behavior::Fail { times: usize::MAX });
    let (fast, _) = subscribe(&plane, &org, &receiver.url("/fast"), &["fast.thing"]).await;
    let (slow, _) = subscribe(&plane, &org, &receiver.url("/slow"), &["slow.thing"]).await;
    let (down, _) = subscribe(&plane, &org, &receiver.url("/down"), &["down.thing"]).await;
    for _ in 0..4 {
        publish(&plane, &org, "fast.thing", "{}").await;
    }
    for _ in 0..2 {
        publish(&plane, &org, "slow.thing", "{}").await;
    }
    publish(&plane, &org, "down.thing", "{}").await;
    for (subscription, status) in [
        (&fast, pb::DeliveryStatus::Succeeded),
        (&slow, pb::DeliveryStatus::Succeeded),
        (&down, pb::DeliveryStatus::Failed),
    ] {
        for delivery in deliveries_of(&plane, &org, &subscription.id).await {
            eventually(|| keyplane_tests::webhooks::get_delivery(&plane, &org, &delivery.id), status_is(status)).await;
        }
    }

    let mut client = plane.usage(&plane.root_token).await;
    let stats = |subscription_id: &str| pb::QueryDeliveryStatsRequest {
        org_id: org.clone(),
        subscription_id: subscription_id.to_owned(),
        start_time: Some(ts(Utc::now() - TimeDelta::minutes(10))),
        end_time: Some(ts(Utc::now())),
        granularity: pb::Granularity::Minute as i32,
    };
    let fast_stats = client.query_delivery_stats(stats(&fast.id)).await.unwrap().into_inner().buckets;
    let (attempts, succeeded, failed, p50) = summed(fast_stats);
    assert_eq!((attempts, succeeded, failed), (4, 4, 0));
    assert!(p50 < 0.2, "fast endpoint p50 {p50}s");
    let slow_stats = client.query_delivery_stats(stats(&slow.id)).await.unwrap().into_inner().buckets;
    let (attempts, succeeded, failed, p50) = summed(slow_stats);
    assert_eq!((attempts, succeeded, failed), (2, 2, 0));
    assert!((0.25..0.5).contains(&p50), "slow endpoint (300 ms) p50 {p50}s");
    let down_stats = client.query_delivery_stats(stats(&down.id)).await.unwrap().into_inner().buckets;
    let (attempts, succeeded, failed, _) = summed(down_stats);
    assert_eq!((attempts, succeeded, failed), (3, 0, 3), "three attempts, every one failed");
    let org_wide = client.query_delivery_stats(stats("")).await.unwrap().into_inner().buckets;
    let (attempts, succeeded, failed, _) = summed(org_wide);
    assert_eq!((attempts, succeeded, failed), (9, 6, 3));
    plane.stop().await;
}
