//! Endpoint health: a run of failed attempts starts a subscription's
//! `failing_since`, a success ends it; an endpoint that answers 410 Gone, or
//! has failed without a single success for `--webhook-disable-after`, is
//! disabled (audited as the system, announced as `webhook.endpoint_disabled`).

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{DatabaseConnection, DatabaseTransaction};
use serde_json::json;

use crate::error::Result;
use crate::service::webhooks::outbox;
use crate::service::webhooks::system_events::{EndpointDisabled, SystemEvent};
use crate::store::audit::AuditAction;
use crate::store::deliveries::{AttemptRecord, NextStep};
use crate::store::{self, ChangeTx, audit, webhooks};
use crate::wakeups::Wakeups;

/// Why an endpoint answering 410 fails its delivery and is disabled at once.
pub const GONE: &str = "the endpoint answered 410 Gone";

/// An endpoint to disable, and why.
#[derive(Debug)]
pub struct Disabling {
    org: String,
    subscription_id: String,
    reason: String,
}

/// Tracks failure runs and disables endpoints.
pub struct EndpointHealth {
    db: DatabaseConnection,
    wakeups: Wakeups,
    disable_after: Duration,
}

impl EndpointHealth {
    pub fn new(db: DatabaseConnection, wakeups: Wakeups, disable_after: Duration) -> Self {
        Self { db, wakeups, disable_after }
    }

    /// Records, in `tx`, how each subscription's latest attempt among
    /// `records` went; returns the endpoints that must now be disabled.
    ///
    /// It writes only what changes: a failure run starts for an endpoint
    /// that was not failing when its delivery was claimed and ends for one
    /// that was, in one statement each per batch. A run another replica
    /// started after the claim is ended by this endpoint's next success,
    /// which sees it; the disabling decision uses the run's start as read at
    /// the claim (or now, for a run this batch starts).
    pub async fn record(&self, tx: &DatabaseTransaction, records: &[AttemptRecord]) -> Result<Vec<Disabling>> {
        let mut latest: HashMap<&str, &AttemptRecord> = HashMap::new();
        for record in records.iter().filter(|r| r.number.is_some()) {
            latest.insert(&record.subscription_id, record);
        }
        let now = store::now();
        let (mut recovered, mut failing) = (Vec::new(), Vec::new());
        let mut to_disable = Vec::new();
        for (subscription, last) in latest {
            if last.next == NextStep::Succeeded {
                if last.failing_since.is_some() {
                    recovered.push(subscription);
                }
                continue;
            }
            if last.failing_since.is_none() {
                failing.push(subscription);
            }
            let since = last.failing_since.unwrap_or(now);
            let reason = if last.status_code == Some(410) {
                Some(GONE.to_owned())
            } else {
                (now - since).to_std().is_ok_and(|d| d >= self.disable_after).then(|| {
                    format!("every attempt failed since {}", since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                })
            };
            if let Some(reason) = reason {
                let (org, subscription_id) = (last.org_id.clone(), subscription.to_owned());
                to_disable.push(Disabling { org, subscription_id, reason });
            }
        }
        webhooks::set_failure_run(tx, &recovered, None).await?;
        webhooks::set_failure_run(tx, &failing, Some(now)).await?;
        Ok(to_disable)
    }

    /// Disables each endpoint; a failure is logged, and the endpoint's next
    /// failed attempt tries again.
    pub async fn disable_all(&self, endpoints: Vec<Disabling>) {
        for disabling in endpoints {
            if let Err(error) = self.disable(&disabling).await {
                let subscription = &disabling.subscription_id;
                tracing::error!(%subscription, %error, "disabling a webhook endpoint failed");
            }
        }
    }

    /// Disables an endpoint (if still active), audits it and publishes
    /// `webhook.endpoint_disabled`.
    async fn disable(&self, disabling: &Disabling) -> Result<()> {
        let Disabling { org, subscription_id, reason } = disabling;
        let tx = ChangeTx::begin(&self.db, org).await?;
        if !webhooks::disable(&tx, subscription_id, reason).await? {
            return Ok(());
        }
        tracing::warn!(subscription = %subscription_id, %reason, "webhook endpoint disabled");
        let disabled = EndpointDisabled { subscription_id: subscription_id.clone(), reason: reason.clone() };
        let details = json!({ "subscription_id": subscription_id, "reason": reason });
        let event = audit::NewAuditEvent::by_system(
            "webhook-dispatcher",
            AuditAction::EndpointDisabled,
            subscription_id,
            details,
        );
        audit::append(&tx, event).await?;
        outbox::publish_system_event(&tx, SystemEvent::EndpointDisabled(disabled)).await?;
        tx.commit(&self.wakeups).await
    }
}
