//! The workload: keys created, rotated, revoked, deleted and narrowed;
//! rate limits and credits changed; events published by several
//! publishers with idempotency keys. Checks are in `traffic`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyplane_proto::admin::v1 as pb;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::admin::{Admin, Outcome};
use super::history::{Clock, Grant, Holder, Key, Narrowed, Narrowing, Publication, Shared, record};

/// The receiver's endpoints: (path, event types, channels).
pub const ENDPOINTS: [(&str, &[&str], &[&str]); 3] =
    [("/all", &EVENT_TYPES, &[]), ("/created", &["order.created"], &[]), ("/eu", &EVENT_TYPES, &["eu"])];
/// Their paths.
pub const ENDPOINT_PATHS: [&str; 3] = [ENDPOINTS[0].0, ENDPOINTS[1].0, ENDPOINTS[2].0];
/// What publishers publish.
pub const EVENT_TYPES: [&str; 2] = ["order.created", "order.paid"];
const CHANNELS: [&str; 2] = ["eu", "us"];

/// Whether the endpoint at `path` must receive `publication`.
pub fn matches(path: &str, publication: &Publication) -> bool {
    ENDPOINTS.iter().any(|(p, types, channels)| {
        *p == path
            && types.contains(&publication.event_type)
            && (channels.is_empty() || publication.channels.iter().any(|c| channels.contains(c)))
    })
}

/// Credits each spending key starts with, and its identity.
const KEY_CREDITS: u64 = 40;
const IDENTITY_CREDITS: u64 = 60;
/// Keys kept live at most.
const MAX_LIVE: usize = 40;

/// Keys the check traffic draws from (index into the history, token).
#[derive(Default)]
pub struct Pools {
    /// Live keys with `read` and `write`.
    pub full: Vec<(usize, String)>,
    /// Live keys whose `write` was removed.
    pub read_only: Vec<(usize, String)>,
    /// The most recently revoked, deleted or rotated-away keys.
    pub gone: VecDeque<(usize, String)>,
    /// Keys that spend credits (scope `read`).
    pub spenders: Vec<(usize, String)>,
}

pub type SharedPools = Arc<Mutex<Pools>>;

/// Everything the workload set up.
#[derive(Clone)]
pub struct Fixture {
    pub key_org: String,
    pub webhook_org: String,
    pub pools: SharedPools,
}

/// Creates the starting keys, the spending keys and their identity, and
/// the webhook subscriptions.
pub async fn prepare(admin: &Admin, receiver: &crate::receiver::Receiver, history: &Shared) -> Fixture {
    let key_org = crate::random_org();
    let webhook_org = crate::random_org();
    let pools: SharedPools = Arc::default();
    for _ in 0..20 {
        let (index, token) = create(admin, 0, &key_org, &["read", "write"], None, None).await.expect("starting key");
        pools.lock().expect("pools").full.push((index, token));
    }
    let identity = admin
        .identities(0)
        .create_identity(pb::CreateIdentityRequest {
            org_id: key_org.clone(),
            external_id: "nemesis".into(),
            credits: Some(pb::Credits { remaining: IDENTITY_CREDITS, ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("identity")
        .into_inner()
        .identity
        .expect("identity");
    let identity = record(history, |h| {
        h.identities.push(identity.id);
        h.grants.push(Grant { holder: Holder::Identity(0), amount: IDENTITY_CREDITS, acknowledged: true });
        h.identities.len() - 1
    });
    for n in 0..9 {
        // Six keys with credits of their own, three spending their identity's.
        let own = (n < 6).then_some(KEY_CREDITS);
        let (index, token) =
            create(admin, 0, &key_org, &["read"], own, (n >= 6).then_some(identity)).await.expect("spending key");
        if let Some(amount) = own {
            record(history, |h| h.grants.push(Grant { holder: Holder::Key(index), amount, acknowledged: true }));
        }
        pools.lock().expect("pools").spenders.push((index, token));
    }
    for (path, types, channels) in ENDPOINTS {
        let request = pb::CreateSubscriptionRequest {
            org_id: webhook_org.clone(),
            url: receiver.url(path),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        };
        admin.webhooks(0).create_subscription(request).await.expect("subscription");
    }
    Fixture { key_org, webhook_org, pools }
}

/// Creates a key through `replica`; returns its index in the history and
/// its token, or `None` when the outcome is not an acknowledgement.
async fn create(
    admin: &Admin,
    replica: usize,
    org: &str,
    scopes: &[&str],
    credits: Option<u64>,
    identity: Option<usize>,
) -> Option<(usize, String)> {
    let identity_id = match identity {
        Some(i) => record(admin.history(), |h| h.identities[i].clone()),
        None => String::new(),
    };
    let request = pb::CreateApiKeyRequest {
        org_id: org.to_owned(),
        name: "nemesis".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        credits: credits.map(|remaining| pb::Credits { remaining, ..Default::default() }),
        identity_id,
        ..Default::default()
    };
    let Outcome::Acknowledged(created) = admin.once(admin.keys(replica).create_api_key(request)).await else {
        return None;
    };
    let key = Key { id: created.api_key.expect("key").id, identity, spends: credits.is_some() || identity.is_some() };
    Some((
        record(admin.history(), |h| {
            h.keys.push(key);
            h.keys.len() - 1
        }),
        created.token,
    ))
}

/// The key operations, one every 150–400 ms until `until`; a narrowing is
/// retried until definitive (or `deadline`), so the time it took effect by
/// is known.
pub async fn change_keys(
    admin: Admin,
    fixture: Fixture,
    clock: Clock,
    until: Duration,
    deadline: Deadline,
    mut rng: StdRng,
) {
    let org = fixture.key_org.as_str();
    while clock.now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..400))).await;
        let replica = rng.random_range(0..super::cluster::SIZE);
        let live = {
            let pools = fixture.pools.lock().expect("pools");
            pools.full.len() + pools.read_only.len()
        };
        match rng.random_range(0..100) {
            0..25 if live < MAX_LIVE => {
                if let Some(created) = create(&admin, replica, org, &["read", "write"], None, None).await {
                    fixture.pools.lock().expect("pools").full.push(created);
                }
            }
            0..25 => {}
            25..40 => narrow(&admin, &fixture, Narrowed::Revoked, &clock, deadline, &mut rng).await,
            40..50 => narrow(&admin, &fixture, Narrowed::Deleted, &clock, deadline, &mut rng).await,
            50..65 => narrow(&admin, &fixture, Narrowed::Rotated, &clock, deadline, &mut rng).await,
            65..80 => narrow(&admin, &fixture, Narrowed::ScopeRemoved, &clock, deadline, &mut rng).await,
            80..90 => change_rate_limit(&admin, &fixture, replica, &mut rng).await,
            _ => add_credits(&admin, &fixture, replica, &mut rng).await,
        }
    }
}

/// When retries give up.
pub type Deadline = tokio::time::Instant;

/// Takes a live key out of its pool and narrows it `what` way; records
/// when that took effect by.
async fn narrow(admin: &Admin, fixture: &Fixture, what: Narrowed, clock: &Clock, deadline: Deadline, rng: &mut StdRng) {
    let org = fixture.key_org.clone();
    let (key, from_full) = {
        let mut pools = fixture.pools.lock().expect("pools");
        let from_full = what == Narrowed::ScopeRemoved || pools.read_only.is_empty() || rng.random_bool(0.5);
        let pool = if from_full { &mut pools.full } else { &mut pools.read_only };
        if pool.is_empty() {
            return;
        }
        let at = rng.random_range(0..pool.len());
        (pool.swap_remove(at), from_full)
    };
    let id = record(admin.history(), |h| h.keys[key.0].id.clone());
    let first = rng.random_range(0..super::cluster::SIZE);
    let invoked = clock.now();
    let revoke = |replica: usize| {
        let request = pb::RevokeApiKeyRequest { org_id: org.clone(), id: id.clone(), reason: "nemesis".into() };
        let mut keys = admin.keys(replica);
        async move { keys.revoke_api_key(request).await }
    };
    let (what, outcome) = match what {
        Narrowed::Revoked => (what, settled(admin.until_definitive(first, deadline, revoke).await)),
        Narrowed::Deleted => {
            let delete = |replica: usize| {
                let request = pb::DeleteApiKeyRequest { org_id: org.clone(), id: id.clone() };
                let mut keys = admin.keys(replica);
                async move { keys.delete_api_key(request).await }
            };
            (what, settled(admin.until_definitive(first, deadline, delete).await))
        }
        Narrowed::Rotated => {
            let request = pb::RotateApiKeyRequest {
                org_id: org.clone(),
                id: id.clone(),
                grace_period: Some(prost_types::Duration::default()),
            };
            match admin.once(admin.keys(first).rotate_api_key(request)).await {
                Outcome::Acknowledged(rotated) => {
                    let new = Key { id: rotated.api_key.expect("new key").id, identity: None, spends: false };
                    let index = record(admin.history(), |h| {
                        h.keys.push(new);
                        h.keys.len() - 1
                    });
                    // The new key has the old one's scopes.
                    let mut pools = fixture.pools.lock().expect("pools");
                    let pool = if from_full { &mut pools.full } else { &mut pools.read_only };
                    pool.push((index, rotated.token));
                    (what, true)
                }
                // Not known whether it rotated: revoke the old key for sure.
                _ => (Narrowed::Revoked, settled(admin.until_definitive(first, deadline, revoke).await)),
            }
        }
        Narrowed::ScopeRemoved => {
            let narrow = |replica: usize| {
                let request = pb::UpdateApiKeyRequest {
                    org_id: org.clone(),
                    id: id.clone(),
                    update: Some(pb::ApiKeyUpdate { scopes: vec!["read".into()], ..Default::default() }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["scopes".into()] }),
                };
                let mut keys = admin.keys(replica);
                async move { keys.update_api_key(request).await }
            };
            let done = matches!(admin.until_definitive(first, deadline, narrow).await, Outcome::Acknowledged(_));
            if done {
                fixture.pools.lock().expect("pools").read_only.push(key.clone());
            }
            (what, done)
        }
    };
    if !outcome {
        return;
    }
    let effective_by = clock.now();
    record(admin.history(), |h| h.narrowings.push(Narrowing { key: key.0, what, invoked, effective_by }));
    if what != Narrowed::ScopeRemoved {
        let mut pools = fixture.pools.lock().expect("pools");
        pools.gone.push_back(key);
        if pools.gone.len() > 20 {
            pools.gone.pop_front();
        }
    }
}

/// Whether a retried call reached a definitive answer (for a revocation or
/// deletion, a refusal means an earlier try already applied it).
fn settled<T>(outcome: Outcome<T>) -> bool {
    !matches!(outcome, Outcome::Unknown(_))
}

/// Sets or clears a rate limit of 5 requests a second on a live key, or on
/// the spending keys' identity.
async fn change_rate_limit(admin: &Admin, fixture: &Fixture, replica: usize, rng: &mut StdRng) {
    let rate_limit = rng.random_bool(0.5).then(|| pb::RateLimit {
        requests: 5,
        window: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        ..Default::default()
    });
    let (org_id, update_mask) =
        (fixture.key_org.clone(), Some(prost_types::FieldMask { paths: vec!["rate_limit".into()] }));
    if rng.random_bool(0.5) {
        let id = record(admin.history(), |h| h.identities[0].clone());
        let update = Some(pb::IdentityUpdate { rate_limit, ..Default::default() });
        let request = pb::UpdateIdentityRequest { org_id, id, update, update_mask };
        admin.once(admin.identities(replica).update_identity(request)).await;
        return;
    }
    let Some((key, _)) = fixture.pools.lock().expect("pools").full.choose(rng).cloned() else { return };
    let id = record(admin.history(), |h| h.keys[key].id.clone());
    let update = Some(pb::ApiKeyUpdate { rate_limit, ..Default::default() });
    let request = pb::UpdateApiKeyRequest { org_id, id, update, update_mask };
    admin.once(admin.keys(replica).update_api_key(request)).await;
}

/// Adds 10 credits to a spending key with credits of its own, or to the identity.
async fn add_credits(admin: &Admin, fixture: &Fixture, replica: usize, rng: &mut StdRng) {
    const ADD: u64 = 10;
    let change = Some(pb::CreditsChange { change: Some(pb::credits_change::Change::Add(ADD)) });
    let mask = Some(prost_types::FieldMask { paths: vec!["credits".into()] });
    let org_id = fixture.key_org.clone();
    let spender = fixture.pools.lock().expect("pools").spenders.choose(rng).map(|(index, _)| *index);
    let Some(spender) = spender else { return };
    let (holder, id) = record(admin.history(), |h| match h.keys[spender].identity {
        Some(identity) => (Holder::Identity(identity), h.identities[identity].clone()),
        None => (Holder::Key(spender), h.keys[spender].id.clone()),
    });
    let outcome = match holder {
        Holder::Key(_) => {
            let update = Some(pb::ApiKeyUpdate { credits: change, ..Default::default() });
            let request = pb::UpdateApiKeyRequest { org_id, id, update, update_mask: mask };
            admin.once(admin.keys(replica).update_api_key(request)).await.map(|_| ())
        }
        Holder::Identity(_) => {
            let update = Some(pb::IdentityUpdate { credits: change, ..Default::default() });
            let request = pb::UpdateIdentityRequest { org_id, id, update, update_mask: mask };
            admin.once(admin.identities(replica).update_identity(request)).await.map(|_| ())
        }
    };
    let acknowledged = match outcome {
        Outcome::Acknowledged(()) => true,
        Outcome::Unknown(_) => false,
        Outcome::Refused(_) => return,
    };
    record(admin.history(), |h| h.grants.push(Grant { holder, amount: ADD, acknowledged }));
}

/// One publisher: an event every 100–300 ms until `until`, each retried
/// with its idempotency key until acknowledged (or `deadline`).
pub async fn publish(
    admin: Admin,
    org: String,
    publisher: usize,
    clock: Clock,
    until: Duration,
    deadline: Deadline,
    mut rng: StdRng,
) {
    let mut n = 0u64;
    while clock.now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
        n += 1;
        let event_type = *EVENT_TYPES.choose(&mut rng).expect("types");
        let channels: Vec<&'static str> = CHANNELS.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
        let request = pb::PublishEventRequest {
            org_id: org.clone(),
            event_type: event_type.to_owned(),
            payload_json: format!(r#"{{"publisher":{publisher},"n":{n}}}"#),
            idempotency_key: format!("nemesis-{publisher}-{n}"),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
        };
        let first = rng.random_range(0..super::cluster::SIZE);
        let send = |replica: usize| {
            let (request, mut events) = (request.clone(), admin.events(replica));
            async move { events.publish_event(request).await }
        };
        match admin.until_definitive(first, deadline, send).await {
            Outcome::Acknowledged(published) => {
                let event_id = published.event.expect("event").id;
                let publication = Publication { event_id, event_type, channels, acknowledged: clock.now() };
                record(admin.history(), |h| h.publications.push(publication));
            }
            Outcome::Refused(code) => panic!("publication refused: {code:?}"),
            Outcome::Unknown(status) => {
                println!("publication nemesis-{publisher}-{n} never acknowledged; last answer: {status:?}");
                record(admin.history(), |h| h.unacknowledged += 1);
            }
        }
    }
}
