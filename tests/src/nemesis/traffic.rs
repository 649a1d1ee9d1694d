//! Checks through one sidecar at a steady rate, alternating forward-auth
//! and ext_authz, with live keys, keys just taken away and spending keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3 as envoy;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use super::history::{Answer, Check, Clock, Shared, Via, record};
use super::workload::SharedPools;

/// Time between two checks of one sidecar.
const PERIOD: Duration = Duration::from_millis(25);
/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks through sidecar `sidecar` at `(grpc, http)` while `checking`.
pub async fn run(
    sidecar: usize,
    addrs: (String, String),
    pools: SharedPools,
    history: Shared,
    clock: Clock,
    checking: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    let http = reqwest::Client::builder().timeout(CHECK_TIMEOUT).build().expect("http client");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs.0))
        .expect("sidecar uri")
        .timeout(CHECK_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let mut authz = AuthorizationClient::new(channel);
    let check_url = format!("http://{}/check", addrs.1);
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut via = Via::ForwardAuth;
    while checking.load(Ordering::Acquire) {
        ticks.tick().await;
        let Some((key, token, scope)) = pick(&pools, &mut rng) else { continue };
        let sent = clock.now();
        let answer = match via {
            Via::ForwardAuth => {
                let request = http.get(&check_url).bearer_auth(&token).header("x-required-scopes", scope);
                match request.send().await {
                    Ok(response) => from_http(response.status().as_u16()),
                    Err(error) => Answer::Other(error_kind(&error)),
                }
            }
            Via::ExtAuthz => {
                let bearer = format!("Bearer {token}");
                let request = crate::ext_authz_request(&[("authorization", &bearer)], &[("required_scopes", scope)]);
                match authz.check(request).await {
                    Ok(response) => from_ext_authz(&response.into_inner()),
                    Err(status) => Answer::Other(format!("grpc {:?}", status.code())),
                }
            }
        };
        let check = Check { sidecar, via, key, scope, sent, answered: clock.now(), answer };
        record(&history, |h| h.checks.push(check));
        via = match via {
            Via::ForwardAuth => Via::ExtAuthz,
            Via::ExtAuthz => Via::ForwardAuth,
        };
    }
}

/// A key and the scope the route requires: half live keys, a quarter keys
/// just taken away (or narrowed), a quarter spending keys.
fn pick(pools: &SharedPools, rng: &mut StdRng) -> Option<(usize, String, &'static str)> {
    let pools = pools.lock().expect("pools");
    let scope = if rng.random_bool(0.5) { "read" } else { "write" };
    let roll = rng.random_range(0..100);
    let (key, token) = if roll < 50 {
        pools.full.choose(rng)?
    } else if roll < 65 {
        pools.gone.iter().collect::<Vec<_>>().choose(rng).copied()?
    } else if roll < 75 {
        pools.read_only.choose(rng)?
    } else {
        let (key, token) = pools.spenders.choose(rng)?;
        return Some((*key, token.clone(), "read"));
    };
    Some((*key, token.clone(), scope))
}

fn from_http(status: u16) -> Answer {
    match status {
        200 => Answer::Allowed,
        401 => Answer::Unauthorized,
        403 => Answer::Forbidden,
        429 => Answer::Limited,
        503 => Answer::Unavailable,
        other => Answer::Other(format!("http {other}")),
    }
}

fn from_ext_authz(response: &envoy::CheckResponse) -> Answer {
    if response.status.as_ref().is_some_and(|s| s.code == 0) {
        return Answer::Allowed;
    }
    match &response.http_response {
        Some(envoy::check_response::HttpResponse::DeniedResponse(denied)) => {
            from_http(denied.status.as_ref().map_or(0, |s| s.code as u16))
        }
        _ => Answer::Other(format!("ext_authz {:?}", response.status)),
    }
}

fn error_kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout".into()
    } else if error.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// Answers by kind, for the report.
pub fn tally(checks: &[Check]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for check in checks {
        let name = match &check.answer {
            Answer::Other(text) => text.clone(),
            answer => format!("{answer:?}"),
        };
        *counts.entry(name).or_default() += 1;
    }
    counts
}
