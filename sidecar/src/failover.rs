//! Several control-plane replicas (`--control-plane a,b,c`): the sidecar
//! follows one at a time. Every call (Verify, leases, usage reports, the
//! Watch stream) goes to the replica it currently follows; when a call or
//! the stream fails at the transport level, or the stream goes silent, it
//! moves on to the next one and resumes the stream from its last applied
//! seq.
//!
//! Why not tonic's `Channel::balance_list`: its lazily connecting endpoints
//! report ready while down, so the balancer keeps picking a dead replica
//! (hyperium/tonic#2839); and one stream must follow one replica anyway.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

/// The replicas and the one followed now.
#[derive(Clone)]
pub struct Failover {
    replicas: Arc<[(String, Channel)]>,
    current: Arc<AtomicUsize>,
}

impl Failover {
    /// Follows the first of `replicas` (URL, channel) first.
    pub fn new(replicas: Vec<(String, Channel)>) -> Self {
        Self { replicas: replicas.into(), current: Arc::new(AtomicUsize::new(0)) }
    }

    /// The replica followed now: its position, for [`Self::move_on_from`].
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Acquire) % self.replicas.len()
    }

    /// The URL of the replica at `position`.
    pub fn url(&self, position: usize) -> &str {
        &self.replicas[position % self.replicas.len()].0
    }

    /// Moves on to the replica after `failed`, unless another failure
    /// already moved on from it (so concurrent failures move once).
    pub fn move_on_from(&self, failed: usize) {
        if self.replicas.len() < 2 {
            return;
        }
        let next = (failed + 1) % self.replicas.len();
        if self.current.compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            tracing::warn!(from = self.url(failed), to = self.url(next), "moving to another control-plane replica");
        }
    }
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, tonic::transport::Error>> + Send + 'static>>;

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = ResponseFuture;

    /// Always ready: each call readies the channel it goes to.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let position = self.current();
        let channel = self.replicas[position].1.clone();
        let failover = self.clone();
        Box::pin(async move {
            let response = channel.oneshot(request).await;
            // A transport error: the replica could not be reached (an answer,
            // even an error status, means it is up).
            if response.is_err() {
                failover.move_on_from(position);
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> Channel {
        tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
    }

    #[tokio::test]
    async fn concurrent_failures_move_on_once_and_wrap_around() {
        let failover = Failover::new(vec![("a".into(), channel()), ("b".into(), channel()), ("c".into(), channel())]);
        assert_eq!(failover.current(), 0);
        failover.move_on_from(0);
        failover.move_on_from(0);
        assert_eq!(failover.url(failover.current()), "b");
        failover.move_on_from(1);
        failover.move_on_from(2);
        assert_eq!(failover.url(failover.current()), "a", "after the last comes the first");
        let single = Failover::new(vec![("only".into(), channel())]);
        single.move_on_from(0);
        assert_eq!(single.current(), 0);
    }

    #[tokio::test]
    async fn a_replica_that_cannot_be_reached_is_left() {
        let failover = Failover::new(vec![("down".into(), channel()), ("next".into(), channel())]);
        let request = http::Request::builder().uri("http://127.0.0.1:9/x.Y/Z").body(Body::empty()).unwrap();
        assert!(failover.clone().oneshot(request).await.is_err());
        assert_eq!(failover.url(failover.current()), "next");
    }
}
