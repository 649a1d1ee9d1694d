//! Global rate limits: one budget per window shared by every sidecar,
//! leased like credits. With 1, 3 and 10 sidecars under uneven load, the
//! checks allowed in each window stay within the limit (plus the checks in
//! flight when a window turns, which a client cannot place), where local
//! limits would allow up to N times it. The per-window counts are printed
//! (`--nocapture`) for BENCHMARKS.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{Backend, TestControlPlane, TestSidecar, both_backends, random_org};

both_backends!(a_global_limit_holds_across_sidecars);

/// Requests per window.
const LIMIT: u32 = 60;
const WINDOW: Duration = Duration::from_secs(2);
/// How long each configuration is loaded.
const RUN: Duration = Duration::from_secs(5);

fn window_of(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() / WINDOW.as_millis()
}

async fn a_global_limit_holds_across_sidecars(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let replica = plane.replica().await;
    for sidecars in [1, 3, 10] {
        let org = random_org();
        let request = pb::CreateApiKeyRequest {
            org_id: org.clone(),
            name: "global".into(),
            rate_limit: Some(pb::RateLimit {
                requests: LIMIT,
                window: prost_types::Duration::try_from(WINDOW).ok(),
                scope: pb::RateLimitScope::Global.into(),
            }),
            ..Default::default()
        };
        let created = plane.keys(&plane.root_token).await.create_api_key(request).await.expect("create");
        let token = created.into_inner().token;
        let mut running = Vec::new();
        for i in 0..sidecars {
            // Every other sidecar follows the replica.
            let via = if i % 2 == 0 { &plane } else { &replica };
            // The limit is what is measured, not how fast a lease call is
            // on a loaded CI machine: a slow one must not turn into a 503.
            running.push(
                TestSidecar::start(via, |config| {
                    config.control_plane_timeout = Duration::from_secs(10);
                    config.expose_denial_reasons = true;
                })
                .await,
            );
        }

        // Uneven load: sidecar i gets (i % 3) + 1 clients, each sending
        // checks back to back until the run ends (bounded in count too).
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        let mut concurrency = 0;
        for (i, sidecar) in running.iter().enumerate() {
            for _ in 0..(i % 3) + 1 {
                concurrency += 1;
                let (http, token) = (sidecar.http.clone(), token.clone());
                let url = format!("http://{}/check", sidecar.http_addr);
                clients.spawn(async move {
                    let mut allowed_at = Vec::new();
                    for _ in 0..20_000 {
                        if started.elapsed() >= RUN {
                            break;
                        }
                        let sent = SystemTime::now();
                        let answer = http.get(&url).bearer_auth(&token).send().await.expect("check");
                        let status = answer.status();
                        if status != 200 && status != 429 {
                            panic!("{status}: {}", answer.text().await.unwrap_or_default());
                        }
                        if status == 200 {
                            allowed_at.push(sent);
                        }
                    }
                    allowed_at
                });
            }
        }
        let mut per_window: BTreeMap<u128, u32> = BTreeMap::new();
        for sent in clients.join_all().await.concat() {
            *per_window.entry(window_of(sent)).or_default() += 1;
        }
        let counts: Vec<u32> = per_window.values().copied().collect();
        println!(
            "global limit {LIMIT}/{WINDOW:?}, {sidecars} sidecars, {concurrency} clients: allowed per window {counts:?}"
        );
        // A check decided in one window may have been sent in the previous
        // one: at most the clients in flight when the window turned.
        for count in &counts {
            assert!(*count <= LIMIT + concurrency, "{count} allowed in one window of {LIMIT} ({sidecars} sidecars)");
        }
        let full_windows: Vec<u32> = counts[1..counts.len().saturating_sub(1)].to_vec();
        assert!(full_windows.iter().any(|count| *count >= LIMIT / 2), "the budget is used: {counts:?}");
        for sidecar in running {
            sidecar.stop().await;
        }
    }
    replica.stop().await;
    plane.stop().await;
}
