//! Per-endpoint throttling: at most `endpoint_concurrency` requests in
//! flight to one subscription (so a slow endpoint cannot take every worker),
//! and the subscription's own deliveries-per-second limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::store::webhooks;

/// How long a delivery waits when its endpoint has too many requests in flight.
const ENDPOINT_BUSY_DELAY: Duration = Duration::from_millis(200);
/// A subscription's rate limiter is forgotten after this long unused.
const LIMITER_IDLE: Duration = Duration::from_secs(600);

/// Requests in flight and rate limiters, per subscription.
pub struct EndpointThrottle {
    endpoint_concurrency: usize,
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    /// Limiters of subscriptions with a limit, with the limit they were built for.
    limiters: moka::sync::Cache<String, Arc<(NonZeroU32, DefaultDirectRateLimiter)>>,
}

impl EndpointThrottle {
    pub fn new(endpoint_concurrency: usize) -> Self {
        Self {
            endpoint_concurrency,
            in_flight: Arc::default(),
            limiters: moka::sync::Cache::builder().time_to_idle(LIMITER_IDLE).build(),
        }
    }

    /// How long a delivery to `subscription` must wait: its endpoint has
    /// the most requests in flight, or its rate limit is used up. `None`
    /// takes one of its rate-limit tokens.
    pub fn must_wait(&self, subscription: &webhooks::Model) -> Option<Duration> {
        let busy = self.in_flight.lock().ok()?.get(&subscription.id).copied().unwrap_or(0);
        if busy >= self.endpoint_concurrency {
            return Some(ENDPOINT_BUSY_DELAY);
        }
        let per_second = NonZeroU32::new(u32::try_from(subscription.rate_limit_per_second).ok()?)?;
        let limiter = match self.limiters.get(&subscription.id) {
            Some(limiter) if limiter.0 == per_second => limiter,
            _ => {
                let limiter = Arc::new((per_second, RateLimiter::direct(Quota::per_second(per_second))));
                self.limiters.insert(subscription.id.clone(), limiter.clone());
                limiter
            }
        };
        limiter.1.check().err().map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Counts a request to `subscription_id` in flight until the slot is dropped.
    pub fn occupy(&self, subscription_id: &str) -> EndpointSlot {
        if let Ok(mut in_flight) = self.in_flight.lock() {
            *in_flight.entry(subscription_id.to_owned()).or_default() += 1;
        }
        EndpointSlot { in_flight: self.in_flight.clone(), subscription_id: subscription_id.to_owned() }
    }
}

/// One request in flight to a subscription.
pub struct EndpointSlot {
    in_flight: Arc<Mutex<HashMap<String, usize>>>,
    subscription_id: String,
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.in_flight.lock()
            && let Some(count) = in_flight.get_mut(&self.subscription_id)
        {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.subscription_id);
            }
        }
    }
}
