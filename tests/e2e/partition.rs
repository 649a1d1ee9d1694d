//! Losing the database: a replica cut off from Postgres (through a TCP proxy
//! the test can cut) stops vouching for its sidecars, so a key revoked
//! through another replica stops working within the staleness bound; and a
//! stopped Postgres turns every call into a fast UNAVAILABLE, recovering
//! without a restart of Keyplane.

use std::time::{Duration, Instant};

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::postgres::{self, PgServer};
use keyplane_tests::proxy::{TcpProxy, Upstream};
use keyplane_tests::{Backend, TestControlPlane, TestSidecar, logs, random_org};
use tonic_types::StatusExt;

const MAX_STALENESS: Duration = Duration::from_secs(2);

/// The database name in a test Postgres URL (`…/<name>?host=…`).
fn database_name(url: &str) -> &str {
    let without_query = url.split('?').next().unwrap_or(url);
    without_query.rsplit_once('/').map_or(without_query, |(_, name)| name)
}

/// A replica on Postgres, and a second replica of it reaching Postgres
/// through a TCP proxy the test can cut; `None` without Postgres.
async fn replica_behind_a_proxy() -> Option<(TestControlPlane, TcpProxy, TestControlPlane)> {
    let server = postgres::server()?;
    let direct = TestControlPlane::start(Backend::Postgres).await?;
    let proxy = TcpProxy::start(Upstream::Unix(server.socket_path())).await;
    let mut config = direct.config.clone();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.storage.database_url = Some(PgServer::tcp_url(database_name(&direct.database_url), proxy.addr));
    let behind_proxy = TestControlPlane::launch(config).await;
    Some((direct, proxy, behind_proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_database_stops_vouching() {
    let Some((direct, proxy, behind_proxy)) = replica_behind_a_proxy().await else { return };
    let heartbeat = behind_proxy.config.heartbeat_interval;

    let (key, token) = direct.create_key(&random_org(), &[]).await;
    let sidecar = TestSidecar::start(&behind_proxy, |config| config.max_staleness = MAX_STALENESS).await;
    assert_eq!(sidecar.check_status(&token).await, 200, "cached while everything is up");

    proxy.cut();
    let revoked_at = Instant::now();
    direct
        .keys(&direct.root_token)
        .await
        .revoke_api_key(pb::RevokeApiKeyRequest {
            org_id: key.org_id.clone(),
            id: key.id.clone(),
            reason: "cut".into(),
        })
        .await
        .unwrap();
    // The replica behind the cut proxy cannot read the revocation; it must
    // stop sending heartbeats, so the sidecar goes stale and fails closed.
    sidecar.wait_for_status(&token, 503).await;
    let denied_after = revoked_at.elapsed();
    let bound = MAX_STALENESS + heartbeat + Duration::from_secs(1);
    assert!(denied_after <= bound, "denied only after {denied_after:?} (bound {bound:?})");
    assert_eq!(sidecar.get("/readyz").await.0, 503);
    assert!(logs::captured().contains("withholding heartbeats"));

    // Reconnected: the replica reads the log again and the sidecar applies the revocation.
    proxy.restore();
    sidecar.wait_for_status(&token, 401).await;
    sidecar.wait_ready().await;
    sidecar.stop().await;
    behind_proxy.stop().await;
    direct.stop().await;
}

/// Given another replica, a sidecar whose replica stops vouching (no
/// heartbeat for two periods) moves to it instead of going stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_leaves_a_replica_that_stops_vouching() {
    let Some((direct, proxy, behind_proxy)) = replica_behind_a_proxy().await else { return };

    let (key, token) = direct.create_key(&random_org(), &[]).await;
    let replicas = vec![format!("http://{}", behind_proxy.addr), format!("http://{}", direct.addr)];
    let sidecar = TestSidecar::start(&behind_proxy, |config| {
        config.max_staleness = MAX_STALENESS;
        config.control_plane = replicas;
    })
    .await;
    assert_eq!(sidecar.check_status(&token).await, 200, "cached while everything is up");

    proxy.cut();
    let revoke = pb::RevokeApiKeyRequest { org_id: key.org_id.clone(), id: key.id.clone(), reason: "cut".into() };
    direct.keys(&direct.root_token).await.revoke_api_key(revoke).await.unwrap();
    // Never stale: it follows the replica that still vouches, and applies the revocation.
    sidecar.wait_for_status(&token, 401).await;
    assert_eq!(sidecar.get("/readyz").await.0, 200);
    assert!(logs::captured().contains("moving to another control-plane replica"));
    proxy.restore();
    sidecar.stop().await;
    behind_proxy.stop().await;
    direct.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_answers_unavailable_fast_and_recovers() {
    let Some(server) = postgres::dedicated() else { return };
    let url = server.create_database().await;
    let Some(plane) = TestControlPlane::start_with(Backend::Postgres, |config| {
        config.storage.database_url = Some(url);
    })
    .await
    else {
        return;
    };
    let org = random_org();
    let (cached, cached_token) = plane.create_key(&org, &[]).await;
    let (_, uncached_token) = plane.create_key(&org, &[]).await;
    let sidecar = TestSidecar::start(&plane, |config| config.max_staleness = Duration::from_secs(30)).await;
    assert_eq!(sidecar.check_status(&cached_token).await, 200);
    let mut keys = plane.keys(&plane.root_token).await;
    let get = pb::GetApiKeyRequest { org_id: org.clone(), id: cached.id.clone() };

    server.stop();
    // Admin calls: UNAVAILABLE with RetryInfo, each within a second.
    for _ in 0..5 {
        let started = Instant::now();
        let status = keys.get_api_key(get.clone()).await.expect_err("database is down");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.get_error_details().retry_info().is_some(), "RetryInfo: {status:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    }
    // A sidecar cache miss: 503 promptly, never waiting out a pool timeout.
    let started = Instant::now();
    assert_eq!(sidecar.check_status(&uncached_token).await, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "miss took {:?}", started.elapsed());
    // Health reports NOT_SERVING.
    let mut health = tonic_health::pb::health_client::HealthClient::new(plane.channel().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while health.check(tonic_health::pb::HealthCheckRequest::default()).await.unwrap().into_inner().status != 2 {
        assert!(Instant::now() < deadline, "health never reported NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back: everything recovers without restarting Keyplane.
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(20);
    while keys.get_api_key(get.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "admin calls never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sidecar.wait_for_status(&uncached_token, 200).await;
    keys.revoke_api_key(pb::RevokeApiKeyRequest { org_id: org, id: cached.id, reason: "after recovery".into() })
        .await
        .unwrap();
    sidecar.wait_for_status(&cached_token, 401).await;
    sidecar.stop().await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staleness_bound_without_room_for_a_late_heartbeat_is_warned_about() {
    let Some(plane) = TestControlPlane::start(Backend::Sqlite).await else { return };
    let heartbeat = plane.config.heartbeat_interval;
    let sidecar = TestSidecar::start(&plane, |config| config.max_staleness = heartbeat + heartbeat / 2).await;
    assert!(
        logs::captured().contains("--max-staleness is less than twice the control plane's heartbeat interval"),
        "no warning for max_staleness {:?} with heartbeats every {heartbeat:?}",
        heartbeat + heartbeat / 2
    );
    sidecar.stop().await;
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_control_plane_costs_a_cache_miss_at_most_the_sidecar_timeout() {
    let Some(plane) = TestControlPlane::start(Backend::Sqlite).await else { return };
    let proxy = TcpProxy::start(Upstream::Tcp(plane.addr)).await;
    let timeout = Duration::from_millis(300);
    let (_, token) = plane.create_key(&random_org(), &[]).await;
    let sidecar = TestSidecar::start(&plane, |config| {
        config.control_plane = vec![format!("http://{}", proxy.addr)];
        config.control_plane_timeout = timeout;
        config.max_staleness = Duration::from_secs(30);
    })
    .await;
    // Packets dropped, connections open: Verify gets no answer at all.
    proxy.blackhole();
    let started = Instant::now();
    assert_eq!(sidecar.check_status(&token).await, 503, "a miss the control plane does not answer");
    let took = started.elapsed();
    assert!(took >= timeout && took < timeout * 4, "the miss took {took:?} (timeout {timeout:?})");
    proxy.restore();
    sidecar.wait_for_status(&token, 200).await;
    sidecar.stop().await;
    plane.stop().await;
}

/// A Postgres cluster of the test's own (to stop and start) and a control
/// plane on it that may deliver webhooks to loopback, changed by `adjust`;
/// `None` without Postgres.
async fn webhooks_on_dedicated_postgres(
    adjust: impl FnOnce(&mut keyplane_control_plane::Config),
) -> Option<(PgServer, TestControlPlane)> {
    let server = postgres::dedicated()?;
    let url = server.create_database().await;
    let plane = keyplane_tests::webhooks::start(Backend::Postgres, |config| {
        config.storage.database_url = Some(url);
        adjust(config);
    })
    .await?;
    Some((server, plane))
}

/// Postgres restarted while events are published and keys checked: every
/// publication acknowledged (before, during or after the outage) is
/// delivered exactly once — the receiver answers 200, so no retry is ever
/// due — and health comes back without restarting Keyplane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_event_and_sends_none_twice() {
    let Some((server, plane)) = webhooks_on_dedicated_postgres(|_| {}).await else { return };
    let org = random_org();
    let receiver = keyplane_tests::receiver::Receiver::start().await;
    keyplane_tests::webhooks::subscribe(&plane, &org, &receiver.url("/hook"), &["load.tested"]).await;
    let (key, token) = plane.create_key(&org, &[]).await;
    let sidecar = TestSidecar::start(&plane, |config| config.max_staleness = Duration::from_secs(30)).await;

    // Publishers run through the whole outage; only acknowledged events count.
    let publishers =
        keyplane_tests::webhooks::LoadPublishers::start(&plane.addr.to_string(), &plane.root_token, &org, 300, 4).await;
    let checking = async {
        let mut statuses = std::collections::BTreeSet::new();
        for _ in 0..200 {
            statuses.insert(sidecar.check_status(&token).await);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        statuses
    };
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.start_again();
    };
    let (statuses, ()) = tokio::join!(checking, restart);
    assert_eq!(statuses, [200].into(), "a cached key keeps working through the restart");
    let acknowledged = publishers.finish().await;
    assert!(!acknowledged.is_empty());

    // After recovery: more publications, all deliveries, each exactly once.
    let mut health = tonic_health::pb::health_client::HealthClient::new(plane.channel().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    while health.check(tonic_health::pb::HealthCheckRequest::default()).await.map(|r| r.into_inner().status).ok()
        != Some(1)
    {
        assert!(Instant::now() < deadline, "health never came back to SERVING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = keyplane_tests::webhooks::publish(&plane, &org, "load.tested", "{}").await;
    let mut expected = acknowledged;
    expected.insert(after.event.unwrap().id);
    keyplane_tests::eventually(|| async { receiver.webhook_ids("/hook") }, |ids| ids.is_superset(&expected)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received("/hook");
    assert_eq!(received.len(), receiver.webhook_ids("/hook").len(), "no delivery was sent twice");

    // A revocation made after recovery reaches the sidecar.
    let revoke = pb::RevokeApiKeyRequest { org_id: org, id: key.id, reason: "after restart".into() };
    plane.keys(&plane.root_token).await.revoke_api_key(revoke).await.unwrap();
    sidecar.wait_for_status(&token, 401).await;
    sidecar.stop().await;
    plane.stop().await;
}

/// Deliveries leased to the dispatcher and queued behind its one busy
/// request slot when Postgres goes away are tried again once it is back,
/// not left until their lease (a minute here) runs out; none twice. Whether
/// the dispatcher tries to start one during an outage, or first notices it
/// cannot record, is a race: three outages make a stranded delivery show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_deliveries_go_out_soon_after_a_database_restart() {
    use keyplane_tests::receiver::{Behavior, Receiver};
    use keyplane_tests::webhooks::{publish, subscribe};

    let Some((server, plane)) = webhooks_on_dedicated_postgres(|config| {
        config.webhooks.concurrency = 1;
        config.webhooks.lease = Duration::from_secs(60);
    })
    .await
    else {
        return;
    };
    let org = random_org();
    let receiver = Receiver::start().await;
    receiver.set("/hook", Behavior::Hang(Duration::from_millis(300)));
    subscribe(&plane, &org, &receiver.url("/hook"), &["load.tested"]).await;
    let mut published = std::collections::HashSet::new();
    for outage in 0..3 {
        for _ in 0..5 {
            published.insert(publish(&plane, &org, "load.tested", "{}").await.event.expect("event").id);
        }
        server.stop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.start_again();
        let arrived = keyplane_tests::eventually_within(
            Duration::from_secs(20),
            || async { receiver.webhook_ids("/hook") },
            |ids| *ids == published,
        )
        .await;
        assert_eq!(arrived, published, "outage {outage}: every event arrived well within the lease");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count("/hook"), published.len(), "no event was sent twice");
    plane.stop().await;
}
