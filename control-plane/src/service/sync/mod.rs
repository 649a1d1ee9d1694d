//! What sidecars consume, for platform credentials holding
//! `keyplane:sidecar`: verification with the log position it reflects, the
//! key-event feed ([`feed`]), and usage reports.

pub mod channels;
pub mod feed;

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::sync::mpsc;

pub use channels::Interest;
pub use feed::{FeedMessage, FeedSettings, KeyEventFeed};

use super::auth::RequestContext;
use super::authz::{Action, Target};
use super::usage::ingest::{self, Applied, UsageRecorder, UsageReport};
use super::verify::{Purpose, Verification, Verifier};
use crate::error::Result;
use crate::store::{OrgScope, key_events};

/// The sidecar protocol's service.
pub struct SidecarSync {
    db: DatabaseConnection,
    verifier: Arc<Verifier>,
    feed: Arc<KeyEventFeed>,
    usage: Arc<UsageRecorder>,
}

impl SidecarSync {
    pub fn new(
        db: DatabaseConnection,
        verifier: Arc<Verifier>,
        feed: Arc<KeyEventFeed>,
        usage: Arc<UsageRecorder>,
    ) -> Self {
        Self { db, verifier, feed, usage }
    }

    /// Verifies a token of any org: the outcome, and the log head it
    /// reflects (read first, so the key row read afterwards reflects at least it).
    pub async fn verify(&self, ctx: &RequestContext, token: &str) -> Result<(Verification, i64)> {
        require_sidecar(ctx)?;
        let as_of = key_events::head_seq(&self.db).await?;
        Ok((self.verifier.verify(OrgScope::AllOrgs, token, Purpose::Check).await?, as_of))
    }

    /// Starts a Watch stream of the events of `orgs` (none: every org)
    /// after `after_seq`, or at the head for a sidecar with nothing cached.
    pub fn watch(
        &self,
        ctx: &RequestContext,
        after_seq: i64,
        from_head: bool,
        orgs: Vec<String>,
    ) -> Result<mpsc::Receiver<Result<FeedMessage>>> {
        require_sidecar(ctx)?;
        Ok(self.feed.watch(after_seq, from_head, Interest::new(orgs)?))
    }

    /// The heartbeat period of every Watch stream.
    pub fn heartbeat_interval(&self) -> std::time::Duration {
        self.feed.heartbeat_interval()
    }

    /// Applies a sidecar's usage report (once per report id).
    pub async fn report_usage(&self, ctx: &RequestContext, report: UsageReport) -> Result<Applied> {
        require_sidecar(ctx)?;
        ingest::check_report(&report, chrono::Utc::now())?;
        self.usage.apply(&report).await
    }
}

/// Refuses callers other than sidecars' platform credentials.
pub fn require_sidecar(ctx: &RequestContext) -> Result<()> {
    ctx.authorize(Action::RunSidecar, Target::AllOrgs).map(drop)
}
