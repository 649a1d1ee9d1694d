//! The background work of a running control plane: one cancellation signal
//! and one task set, so shutdown stops and drains everything the same way.
//! Every task the control plane starts goes through it: named long-lived
//! tasks ([`Background::spawn`]) and the short ones they start per
//! connection, stream or request ([`Background::spawn_child`]), which must
//! end on their own or when [`Background::stop`] is cancelled.

use std::future::Future;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The signal and the task set; clones share them.
#[derive(Clone)]
pub struct Background {
    /// Cancelled at shutdown.
    pub stop: CancellationToken,
    tasks: TaskTracker,
}

impl Default for Background {
    fn default() -> Self {
        Self { stop: CancellationToken::new(), tasks: TaskTracker::new() }
    }
}

impl Background {
    /// Runs `task` in a tracing span named `task` with field `name`.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        self.tasks.spawn(task.instrument(tracing::info_span!("task", name)))
    }

    /// Runs a short task in the caller's span.
    pub fn spawn_child<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task.in_current_span())
    }

    /// Serves one HTTP/1 or HTTP/2 connection on a task of its own until
    /// the client closes it, or until the stop signal, which shuts it down
    /// gracefully (requests in hand are answered).
    pub fn serve_connection<I, S, B>(&self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stop = self.stop.clone();
        self.spawn_child(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let serving = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(serving);
            tokio::select! {
                _ = serving.as_mut() => {}
                () = stop.cancelled() => {
                    serving.as_mut().graceful_shutdown();
                    let _ = serving.await;
                }
            }
        });
    }

    /// Cancels every task and waits for each to finish its work in hand.
    pub async fn drain(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
