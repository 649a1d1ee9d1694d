//! Sidecars that serve a few orgs (`--org`): their Watch stream carries
//! only those orgs' events, heartbeats still cover every seq, and any other
//! org's key is refused.

use std::time::Duration;

use keyplane_control_plane::store::key_events;
use keyplane_proto::admin::v1 as pb;
use keyplane_proto::sync::v1 as sync_pb;
use keyplane_tests::{
    Backend, TestControlPlane, TestSidecar, assert_invalid_field, both_backends, random_org, start_or_skip,
};
use sync_pb::watch_response::Message;

both_backends!(a_stream_of_some_orgs_carries_only_theirs, a_sidecar_of_some_orgs_refuses_the_others, bad_interests,);

async fn revoke(plane: &TestControlPlane, org: &str, id: &str) {
    let request = pb::RevokeApiKeyRequest { org_id: org.to_owned(), id: id.to_owned(), reason: String::new() };
    plane.keys(&plane.root_token).await.revoke_api_key(request).await.expect("revoke");
}

/// The next event or heartbeat of `stream` (within 5 s).
async fn next(stream: &mut tonic::Streaming<sync_pb::WatchResponse>) -> Message {
    let message = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("a message within 5 s");
    message.expect("stream open").expect("a message").message.expect("a message body")
}

/// Events of `stream` until a heartbeat that covers `seq`: their key ids,
/// and that heartbeat's seq.
async fn events_through(stream: &mut tonic::Streaming<sync_pb::WatchResponse>, seq: u64) -> (Vec<String>, u64) {
    let mut events = Vec::new();
    loop {
        match next(stream).await {
            Message::Event(event) => events.push(event.key_id),
            Message::Heartbeat(heartbeat) if heartbeat.head_seq >= seq => return (events, heartbeat.head_seq),
            _ => {}
        }
    }
}

async fn a_stream_of_some_orgs_carries_only_theirs(backend: Backend) {
    let plane = start_or_skip!(backend);
    let (ours, theirs) = (random_org(), random_org());
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let mut sync = plane.key_sync(&credential).await;
    let watch = |after_seq, from_head| sync_pb::WatchRequest { after_seq, from_head, org_ids: vec![ours.clone()] };
    let mut stream = sync.watch(watch(0, true)).await.expect("watch").into_inner();
    let Message::Heartbeat(start) = next(&mut stream).await else { panic!("a stream starts with a heartbeat") };

    let (mine, _) = plane.create_key(&ours, &[]).await;
    let (other, _) = plane.create_key(&theirs, &[]).await;
    revoke(&plane, &theirs, &other.id).await;
    revoke(&plane, &ours, &mine.id).await;
    let (another, _) = plane.create_key(&theirs, &[]).await;
    revoke(&plane, &theirs, &another.id).await;
    let head = key_events::head_seq(&plane.database().await).await.expect("head of the log");
    let head = u64::try_from(head).unwrap();
    assert_eq!(head, start.head_seq + 3, "three events were logged");

    // Only our org's event arrives; the heartbeat moves past the other org's last one.
    let (events, covered) = events_through(&mut stream, head).await;
    assert_eq!(events, vec![mine.id.clone()]);
    assert_eq!(covered, head);

    // Resuming replays only our org's events too.
    let mut replayed = sync.watch(watch(start.head_seq, false)).await.expect("watch again").into_inner();
    let (events, covered) = events_through(&mut replayed, head).await;
    assert_eq!(events, vec![mine.id.clone()]);
    assert_eq!(covered, head);

    // A stream of two orgs (on the shared channel, filtered) gets only theirs too.
    let two = vec![ours.clone(), random_org()];
    let two = sync_pb::WatchRequest { after_seq: 0, from_head: true, org_ids: two };
    let mut two = sync.watch(two).await.expect("watch two orgs").into_inner();
    let Message::Heartbeat(now) = next(&mut two).await else { panic!("a stream starts with a heartbeat") };
    let (late, _) = plane.create_key(&ours, &[]).await;
    let (late_other, _) = plane.create_key(&theirs, &[]).await;
    revoke(&plane, &theirs, &late_other.id).await;
    revoke(&plane, &ours, &late.id).await;
    let (events, covered) = events_through(&mut two, now.head_seq + 2).await;
    assert_eq!(events, vec![late.id.clone()]);
    assert_eq!(covered, now.head_seq + 2);
    // The single-org stream, live all along, got the new one too.
    let (events, _) = events_through(&mut stream, now.head_seq + 2).await;
    assert_eq!(events, vec![late.id.clone()]);

    // A stream of every org (no org named) gets all the others' too.
    let every = sync_pb::WatchRequest { after_seq: start.head_seq, from_head: false, org_ids: Vec::new() };
    let mut every = sync.watch(every).await.expect("watch every org").into_inner();
    let (events, _) = events_through(&mut every, head + 2).await;
    assert_eq!(events, vec![other.id, mine.id, another.id, late_other.id, late.id]);
    plane.stop().await;
}

async fn a_sidecar_of_some_orgs_refuses_the_others(backend: Backend) {
    let plane = start_or_skip!(backend);
    let (ours, theirs) = (random_org(), random_org());
    let sidecar = TestSidecar::start(&plane, |config| config.orgs = vec![ours.clone()]).await;
    let (mine, my_token) = plane.create_key(&ours, &[]).await;
    let (_, their_token) = plane.create_key(&theirs, &[]).await;
    assert_eq!(sidecar.check_status(&my_token).await, 200);
    let refused = sidecar.check(&their_token, None).await;
    assert_eq!(refused.status(), 401, "another org's key is refused");
    assert_eq!(refused.text().await.unwrap(), "{\"error\":\"invalid_token\"}\n", "without saying why");
    assert_eq!(
        sidecar.metric("keyplane_sidecar_checks_total", "decision=\"deny\",reason=\"org_not_served\"").await,
        1.0
    );
    // Its own org's revocations still reach it.
    revoke(&plane, &ours, &mine.id).await;
    sidecar.wait_for_status(&my_token, 401).await;
    sidecar.stop().await;
    plane.stop().await;
}

async fn bad_interests(backend: Backend) {
    let plane = start_or_skip!(backend);
    let (_, credential) = plane.create_key("keyplane", &["keyplane:sidecar"]).await;
    let mut sync = plane.key_sync(&credential).await;
    let watch = |org_ids| sync_pb::WatchRequest { after_seq: 0, from_head: true, org_ids };
    for org_ids in [vec!["acme".to_owned(), "no spaces".to_owned()], vec![String::new()], vec!["a".repeat(129)]] {
        let status = sync.watch(watch(org_ids)).await.expect_err("refused");
        assert_invalid_field(&status, "org_ids");
    }
    let too_many = (0..1001).map(|i| format!("org-{i}")).collect();
    assert_invalid_field(&sync.watch(watch(too_many)).await.expect_err("refused"), "org_ids");
    plane.stop().await;
}
