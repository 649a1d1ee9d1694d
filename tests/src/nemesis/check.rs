//! The checkers, run over the whole history after the run. Each returns
//! what it counted and the violations it found, each violation with the
//! few history records that show it.

use std::collections::HashMap;
use std::time::Duration;

use keyplane_control_plane::store::key_events::{self, KeyEventKind};

use super::cluster::STALENESS_BOUND;
use super::history::{Answer, At, Check, Clock, History, Holder, Narrowed};
use super::workload::{ENDPOINT_PATHS, matches};
use crate::receiver::Receiver;

/// A broken promise and the records that show it.
pub struct Violation {
    pub checker: &'static str,
    pub what: String,
    pub excerpt: Vec<String>,
}

/// (1) No check is allowed by a key later than [`STALENESS_BOUND`] after
/// its revocation, deletion, rotation or narrowing took effect. Returns the
/// violations and the latest allow seen after any such change.
pub fn revocations(history: &History) -> (Vec<Violation>, Duration) {
    let mut by_key: HashMap<usize, Vec<&Check>> = HashMap::new();
    for check in &history.checks {
        by_key.entry(check.key).or_default().push(check);
    }
    let mut violations = Vec::new();
    let mut worst = Duration::ZERO;
    for narrowing in &history.narrowings {
        let taken_away = |check: &&&Check| {
            check.answer == Answer::Allowed
                && check.sent > narrowing.effective_by
                && (narrowing.what != Narrowed::ScopeRemoved || check.scope == "write")
        };
        for check in by_key.get(&narrowing.key).into_iter().flatten().filter(taken_away) {
            let lag = check.sent - narrowing.effective_by;
            worst = worst.max(lag);
            if lag > STALENESS_BOUND {
                let mut excerpt = vec![format!(
                    "{} {:?} of key {}: sent {}, effective by {}",
                    at(narrowing.invoked),
                    narrowing.what,
                    history.keys[narrowing.key].id,
                    at(narrowing.invoked),
                    at(narrowing.effective_by)
                )];
                excerpt.extend(faults_between(
                    history,
                    narrowing.invoked.saturating_sub(STALENESS_BOUND),
                    check.answered,
                ));
                excerpt.push(describe(check));
                violations.push(Violation {
                    checker: "revocation bound",
                    what: format!("allowed {lag:?} after the change took effect (bound {STALENESS_BOUND:?})"),
                    excerpt,
                });
            }
        }
    }
    (violations, worst)
}

/// What the delivery checker counted.
#[derive(Default, Debug)]
pub struct Deliveries {
    /// (publication, endpoint) pairs that must arrive.
    pub expected: usize,
    pub delivered: usize,
    /// Arrivals answered 2xx beyond the first of a pair, by the fault in
    /// force when they were sent.
    pub duplicates: std::collections::BTreeMap<&'static str, usize>,
    /// Distinct events delivered that no publisher saw acknowledged.
    pub unacknowledged_delivered: usize,
}

/// (2) Every acknowledged publication reaches every endpoint it matches,
/// and no endpoint gets one it does not match.
pub fn deliveries(history: &History, receiver: &Receiver, clock: Clock) -> (Vec<Violation>, Deliveries) {
    let mut counts = Deliveries::default();
    let mut violations = Vec::new();
    let acknowledged: HashMap<&str, _> = history.publications.iter().map(|p| (p.event_id.as_str(), p)).collect();
    for path in ENDPOINT_PATHS {
        // Each event's arrivals answered 2xx, in order.
        let mut ok: HashMap<String, Vec<At>> = HashMap::new();
        for request in receiver.received(path) {
            let arrivals = ok.entry(request.header("webhook-id")).or_default();
            if request.answered_ok {
                arrivals.push(clock.since(request.at));
            }
        }
        for publication in &history.publications {
            let arrived = ok.get(&publication.event_id).map(Vec::as_slice).unwrap_or_default();
            if !matches(path, publication) {
                if ok.contains_key(&publication.event_id) {
                    violations.push(Violation {
                        checker: "deliveries",
                        what: format!("{path} got {} which it does not match", publication.event_id),
                        excerpt: vec![format!("{publication:?}")],
                    });
                }
                continue;
            }
            counts.expected += 1;
            let Some((first, again)) = arrived.split_first() else {
                let mut excerpt = vec![format!("{} acknowledged {publication:?}", at(publication.acknowledged))];
                excerpt.extend(faults_between(
                    history,
                    publication.acknowledged.saturating_sub(Duration::from_secs(5)),
                    publication.acknowledged + Duration::from_secs(60),
                ));
                violations.push(Violation {
                    checker: "deliveries",
                    what: format!("{} never delivered to {path}", publication.event_id),
                    excerpt,
                });
                continue;
            };
            counts.delivered += 1;
            for copy in again {
                // The fault in force from just before the first copy (a
                // lease earlier) to this one.
                let cause = history
                    .faults
                    .iter()
                    .find(|f| f.healed >= first.saturating_sub(DUPLICATE_WINDOW) && f.started <= *copy)
                    .map_or("no fault", |f| f.kind);
                *counts.duplicates.entry(cause).or_default() += 1;
            }
        }
        counts.unacknowledged_delivered +=
            ok.iter().filter(|(id, n)| !n.is_empty() && !acknowledged.contains_key(id.as_str())).count();
    }
    (violations, counts)
}

/// How long before a delivery's first copy a fault can make it sent again:
/// the delivery lease, and a second.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(6);

/// (3) Allowed checks of a holder's keys never exceed the credits it was
/// granted (counting grants whose outcome is unknown as granted). Returns
/// the violations and (allowed spending checks, credits granted, of which
/// with no answer).
pub fn credits(history: &History) -> (Vec<Violation>, (u64, u64, u64)) {
    let mut spent: HashMap<Holder, u64> = HashMap::new();
    for check in history.checks.iter().filter(|c| c.answer == Answer::Allowed) {
        let key = &history.keys[check.key];
        if key.spends {
            let holder = key.identity.map_or(Holder::Key(check.key), Holder::Identity);
            *spent.entry(holder).or_default() += 1;
        }
    }
    let mut granted: HashMap<Holder, u64> = HashMap::new();
    for grant in &history.grants {
        *granted.entry(grant.holder).or_default() += grant.amount;
    }
    let violations = spent
        .iter()
        .filter(|(holder, allowed)| **allowed > granted.get(holder).copied().unwrap_or(0))
        .map(|(holder, allowed)| Violation {
            checker: "credits",
            what: format!(
                "{holder:?}: {allowed} checks allowed, {} credits granted",
                granted.get(holder).copied().unwrap_or(0)
            ),
            excerpt: history.grants.iter().filter(|g| g.holder == *holder).map(|g| format!("{g:?}")).collect(),
        })
        .collect();
    let unanswered = history.grants.iter().filter(|g| !g.acknowledged).map(|g| g.amount).sum();
    (violations, (spent.values().sum(), granted.values().sum(), unanswered))
}

/// (4b) The key-event log is gap-free and in commit order, and holds an
/// event for every change the workload saw take effect. Returns the
/// violations and the number of events read.
pub async fn key_event_log(history: &History, database_url: &str) -> (Vec<Violation>, usize) {
    let db = sea_orm::Database::connect(database_url).await.expect("connect to the nemesis database");
    let events = key_events::after(&db, 0, i64::MAX as u64).await.expect("read the key-event log");
    let mut violations = Vec::new();
    let mut kinds: HashMap<&str, Vec<KeyEventKind>> = HashMap::new();
    for event in &events {
        kinds.entry(event.key_id.as_str()).or_default().push(event.kind);
    }
    for pair in events.windows(2) {
        let (last, next) = (&pair[0], &pair[1]);
        if next.seq != last.seq + 1 || next.created_at < last.created_at {
            violations.push(Violation {
                checker: "key-event log",
                what: format!(
                    "seq {} ({}) is followed by seq {} ({})",
                    last.seq, last.created_at, next.seq, next.created_at
                ),
                excerpt: Vec::new(),
            });
        }
    }
    for narrowing in &history.narrowings {
        let kind = match narrowing.what {
            Narrowed::Revoked | Narrowed::Rotated => KeyEventKind::Revoked,
            Narrowed::Deleted => KeyEventKind::Deleted,
            Narrowed::ScopeRemoved => KeyEventKind::Updated,
        };
        let id = history.keys[narrowing.key].id.as_str();
        if !kinds.get(id).is_some_and(|k| k.contains(&kind)) {
            violations.push(Violation {
                checker: "key-event log",
                what: format!("no {kind:?} event for {id}"),
                excerpt: vec![format!("{narrowing:?}")],
            });
        }
    }
    db.close().await.ok();
    (violations, events.len())
}

/// The faults in force at some time within `[from, to]`.
fn faults_between(history: &History, from: At, to: At) -> Vec<String> {
    history
        .faults
        .iter()
        .filter(|f| f.healed >= from && f.started <= to)
        .map(|f| format!("{}–{} fault: {}", at(f.started), at(f.healed), f.fault))
        .collect()
}

fn describe(check: &Check) -> String {
    format!(
        "{}–{} sidecar {} {:?} scope {} → {:?}",
        at(check.sent),
        at(check.answered),
        check.sidecar,
        check.via,
        check.scope,
        check.answer
    )
}

/// A moment as seconds since the start.
pub fn at(moment: At) -> String {
    format!("{:.3}s", moment.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::history::{Grant, Key, Narrowing, Publication, Via};

    fn key(spends: bool, identity: Option<usize>) -> Key {
        Key { id: "key_x".into(), identity, spends }
    }

    fn allowed(key: usize, scope: &'static str, sent: Duration) -> Check {
        Check { sidecar: 0, via: Via::ForwardAuth, key, scope, sent, answered: sent, answer: Answer::Allowed }
    }

    fn seconds(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn an_allow_past_the_bound_after_a_change_is_a_violation() {
        let mut history = History { keys: vec![key(false, None), key(false, None)], ..Default::default() };
        let narrowing = |key, what| Narrowing { key, what, invoked: seconds(0.5), effective_by: seconds(1.0) };
        history.narrowings = vec![narrowing(0, Narrowed::Revoked), narrowing(1, Narrowed::ScopeRemoved)];
        let late = seconds(1.0) + STALENESS_BOUND + seconds(0.001);
        // Before the change took effect, within the bound, or a scope still held: no violation.
        history.checks =
            vec![allowed(0, "read", seconds(0.8)), allowed(0, "read", seconds(2.0)), allowed(1, "read", late)];
        let (violations, worst) = revocations(&history);
        assert!(violations.is_empty());
        assert_eq!(worst, seconds(1.0));
        history.checks.push(allowed(0, "read", late));
        history.checks.push(allowed(1, "write", late));
        let (violations, worst) = revocations(&history);
        assert_eq!(violations.len(), 2, "the revoked key and the removed scope");
        assert_eq!(worst, late - seconds(1.0));
    }

    #[test]
    fn allows_beyond_the_credits_granted_are_a_violation() {
        let mut history =
            History { keys: vec![key(true, None), key(true, Some(0)), key(true, Some(0))], ..Default::default() };
        history.grants = vec![
            Grant { holder: Holder::Key(0), amount: 2, acknowledged: true },
            Grant { holder: Holder::Identity(0), amount: 2, acknowledged: true },
            Grant { holder: Holder::Identity(0), amount: 1, acknowledged: false },
        ];
        history.checks = (0..2).map(|_| allowed(0, "read", seconds(1.0))).collect();
        history.checks.extend([allowed(1, "read", seconds(1.0)), allowed(2, "read", seconds(1.0))]);
        history.checks.push(allowed(2, "read", seconds(1.0)));
        let (violations, totals) = credits(&history);
        assert!(violations.is_empty(), "a grant with no answer counts as granted");
        assert_eq!(totals, (5, 5, 1));
        history.checks.push(allowed(0, "read", seconds(2.0)));
        history.checks.push(allowed(1, "read", seconds(2.0)));
        let (violations, _) = credits(&history);
        assert_eq!(violations.len(), 2, "the key's own credits and its identity's");
    }

    #[tokio::test]
    async fn a_publication_missing_at_a_matching_endpoint_is_a_violation() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clock = Clock::start();
        let receiver = Receiver::start().await;
        let publication = |id: &str, event_type, channels: Vec<&'static str>| Publication {
            event_id: id.into(),
            event_type,
            channels,
            acknowledged: seconds(1.0),
        };
        let history = History {
            publications: vec![
                publication("evt_a", "order.created", vec!["eu"]),
                publication("evt_b", "order.paid", vec![]),
            ],
            ..Default::default()
        };
        let http = reqwest::Client::new();
        let deliver = |path: &str, id: &str| http.post(receiver.url(path)).header("webhook-id", id).send();
        for (path, id) in
            [("/all", "evt_a"), ("/created", "evt_a"), ("/eu", "evt_a"), ("/all", "evt_b"), ("/all", "evt_b")]
        {
            deliver(path, id).await.expect("deliver");
        }
        let (violations, counts) = deliveries(&history, &receiver, clock);
        assert!(violations.is_empty(), "{:?}", violations.iter().map(|v| &v.what).collect::<Vec<_>>());
        assert_eq!((counts.expected, counts.delivered), (4, 4));
        assert_eq!(counts.duplicates.get("no fault"), Some(&1));
        // evt_b is not for /eu (no channel); evt_a never reaching /all is lost.
        deliver("/eu", "evt_b").await.expect("deliver");
        let history = History {
            publications: vec![publication("evt_c", "order.created", vec![]), history.publications[1].clone()],
            ..history
        };
        let (violations, _) = deliveries(&history, &receiver, clock);
        let found: Vec<&str> = violations.iter().map(|v| v.what.as_str()).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().any(|v| v.contains("evt_b") && v.contains("/eu")), "{found:?}");
        assert_eq!(found.iter().filter(|v| v.contains("evt_c never delivered")).count(), 2, "{found:?}");
    }
}
