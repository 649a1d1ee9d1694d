//! The nemesis run (docs/reliability.md): the workload and the faults run
//! together for a while from one seed; then every fault is healed, the
//! cluster's recovery is timed, and the checkers read the whole history.

mod admin;
mod check;
mod cluster;
mod faults;
mod history;
mod traffic;
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use rand::SeedableRng;
use rand::rngs::StdRng;

pub use cluster::STALENESS_BOUND;
use history::{Clock, History, Shared};

/// How long after the faults stop every replica and sidecar must be ready.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// How long after the faults stop every acknowledged publication must have arrived.
pub const DELIVERY_BOUND: Duration = Duration::from_secs(90);
/// How long a retried operation keeps trying after the faults stop.
const RETRY_GRACE: Duration = Duration::from_secs(60);

/// What to run.
pub struct Options {
    pub seed: u64,
    /// How long faults are injected.
    pub duration: Duration,
}

/// Runs the nemesis and prints its report; returns whether every checker
/// passed, or `None` when Postgres is missing (and not required).
pub async fn run(options: Options) -> Option<bool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed = options.seed;
    println!("nemesis: seed {seed}, faults for {:?}", options.duration);
    let rng = |stream: u64| StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(stream));
    let cluster = cluster::Cluster::start().await?;
    let history: Shared = Arc::default();
    let admin = admin::Admin::new(&cluster.replica_addrs, &cluster.root_token, history.clone());
    let fixture = workload::prepare(&admin, &cluster.receiver, &history).await;

    let clock = Clock::start();
    let until = options.duration;
    let deadline = tokio::time::Instant::now() + until + RETRY_GRACE;
    let checking = Arc::new(AtomicBool::new(true));
    let mut traffic = Vec::new();
    for (s, addrs) in cluster.sidecar_addrs.iter().enumerate() {
        let run = traffic::run(
            s,
            addrs.clone(),
            fixture.pools.clone(),
            history.clone(),
            clock,
            checking.clone(),
            rng(10 + s as u64),
        );
        traffic.push(tokio::spawn(run));
    }
    let mut workers =
        vec![tokio::spawn(workload::change_keys(admin.clone(), fixture.clone(), clock, until, deadline, rng(1)))];
    for p in 0..3 {
        let publish = workload::publish(
            admin.clone(),
            fixture.webhook_org.clone(),
            p,
            clock,
            until,
            deadline,
            rng(20 + p as u64),
        );
        workers.push(tokio::spawn(publish));
    }
    faults::run(&cluster, clock, until, rng(0), &history).await;
    let healed = clock.now();
    let recovery = cluster.wait_ready(RECOVERY_BOUND * 2).await;
    for worker in workers {
        worker.await.expect("workload task");
    }
    // Checks go on past the bound, so late allows would be seen.
    tokio::time::sleep(STALENESS_BOUND + Duration::from_secs(2)).await;
    checking.store(false, Ordering::Release);
    for task in traffic {
        task.await.expect("traffic task");
    }
    let drained = wait_delivered(&cluster, &history, DELIVERY_BOUND).await;

    let history = std::mem::take(&mut *history.lock().expect("history lock"));
    let mut violations = Vec::new();
    let (found, worst_lag) = check::revocations(&history);
    violations.extend(found);
    let (found, deliveries) = check::deliveries(&history, &cluster.receiver, clock);
    violations.extend(found);
    let (found, (spent, granted, unanswered)) = check::credits(&history);
    violations.extend(found);
    let (found, key_events) = check::key_event_log(&history, &cluster.postgres.url(&cluster.database)).await;
    violations.extend(found);
    let (found, audited) = verify_audit(&admin, &[&fixture.key_org, &fixture.webhook_org, "keyplane"]).await;
    violations.extend(found);
    for (what, took) in &recovery {
        if took.is_none_or(|t| t > RECOVERY_BOUND) {
            violations.push(check::Violation {
                checker: "recovery",
                what: format!("{what} not ready within {RECOVERY_BOUND:?}: {took:?}"),
                excerpt: Vec::new(),
            });
        }
    }
    if drained.is_none() {
        violations.push(check::Violation {
            checker: "recovery",
            what: format!("deliveries not drained within {DELIVERY_BOUND:?}"),
            excerpt: Vec::new(),
        });
    }

    println!("\nnemesis report (seed {seed}; faults healed at {})", check::at(healed));
    report_faults(&history);
    println!(
        "checks: {} through 3 sidecars; by answer: {:?}",
        history.checks.len(),
        sorted(traffic::tally(&history.checks))
    );
    let (acknowledged, refused, unknown) = history.operations;
    println!("admin operations: {acknowledged} acknowledged, {refused} refused, {unknown} with no answer");
    println!(
        "narrowings checked: {} (revoked, deleted, rotated, scope removed); latest allow after one took effect: {worst_lag:?} (bound {STALENESS_BOUND:?})",
        history.narrowings.len()
    );
    println!(
        "publications: {} acknowledged, {} never acknowledged; deliveries: {deliveries:?}",
        history.publications.len(),
        history.unacknowledged
    );
    println!(
        "credits: {spent} spending checks allowed, {granted} credits granted ({unanswered} by calls with no answer)"
    );
    println!("key-event log: {key_events} events; audit chains: {audited} events verified");
    for (what, took) in &recovery {
        println!("recovery: {what} ready after {took:?}");
    }
    println!("recovery: deliveries drained after {drained:?}");
    println!("violations: {}", violations.len());
    for violation in &violations {
        println!("\nVIOLATION [{}] {} (seed {seed})", violation.checker, violation.what);
        for line in &violation.excerpt {
            println!("    {line}");
        }
    }
    cluster.stop().await;
    Some(violations.is_empty())
}

/// Faults injected, by kind: how many and for how long in all.
fn report_faults(history: &History) {
    let mut kinds: BTreeMap<&str, (usize, Duration)> = BTreeMap::new();
    for span in &history.faults {
        let entry = kinds.entry(span.kind).or_default();
        entry.0 += 1;
        entry.1 += span.healed - span.started;
    }
    println!("faults: {}", history.faults.len());
    for (kind, (count, held)) in kinds {
        println!("  {kind}: {count} ({:.1}s in all)", held.as_secs_f64());
    }
}

fn sorted(counts: std::collections::HashMap<String, usize>) -> BTreeMap<String, usize> {
    counts.into_iter().collect()
}

/// Waits until every acknowledged publication has arrived (2xx) at every
/// endpoint it matches; returns how long that took, `None` past `within`.
async fn wait_delivered(cluster: &cluster::Cluster, history: &Shared, within: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    let expected: Vec<(&str, String)> = history::record(history, |h| {
        workload::ENDPOINT_PATHS
            .iter()
            .flat_map(|path| {
                h.publications.iter().filter(|p| workload::matches(path, p)).map(|p| (*path, p.event_id.clone()))
            })
            .collect()
    });
    while started.elapsed() < within {
        let mut arrived = std::collections::HashSet::new();
        for path in workload::ENDPOINT_PATHS {
            for request in cluster.receiver.received(path).iter().filter(|r| r.answered_ok) {
                arrived.insert((path, request.header("webhook-id")));
            }
        }
        if expected.iter().all(|(path, id)| arrived.contains(&(*path, id.clone()))) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// (4a) Every org's audit chain verifies. Returns the violations and the
/// number of events checked.
async fn verify_audit(admin: &admin::Admin, orgs: &[&str]) -> (Vec<check::Violation>, u64) {
    let mut violations = Vec::new();
    let mut checked = 0;
    for org in orgs {
        let request = pb::VerifyAuditChainRequest { org_id: (*org).to_owned() };
        let verdict = admin.audit(0).verify_audit_chain(request).await.expect("verify the audit chain").into_inner();
        checked += verdict.events_checked;
        if !verdict.intact {
            violations.push(check::Violation {
                checker: "audit chain",
                what: format!(
                    "{org}: broken at seq {} ({}): {}",
                    verdict.first_broken_seq, verdict.first_broken_id, verdict.problem
                ),
                excerpt: Vec::new(),
            });
        }
    }
    (violations, checked)
}
