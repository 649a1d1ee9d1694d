//! The background work of a running control plane: one cancellation signal
//! and one task set, so shutdown stops and drains everything the same way.
//! Every task the control plane starts goes through it: named long-lived
//! tasks ([`Background::spawn`]) and the short ones they start per
//! connection, stream or request ([`Background::spawn_child`]), which must
//! end on their own or when [`Background::stop`] is cancelled.

use std::future::Future;

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

    /// Cancels every task and waits for each to finish its work in hand.
    pub async fn drain(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}
