//! Endpoint health: a run of failed attempts starts a subscription's
//! `failing_since` (announced as `webhook.endpoint_failing`), a success ends
//! it; an endpoint that answers 410 Gone, or has failed without a single
//! success for `--webhook-disable-after`, is disabled (audited as the
//! system, announced as `webhook.endpoint_disabled`). A delivery that gives
//! up is announced as `webhook.delivery_exhausted`.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{DatabaseConnection, DatabaseTransaction};
use serde_json::json;

use crate::error::Result;
use crate::service::webhooks::outbox;
use crate::service::webhooks::system_events::{DeliveryExhausted, EndpointDisabled, EndpointFailing, SystemEvent};
use crate::store::audit::AuditAction;
use crate::store::deliveries::{AttemptRecord, NextStep};
use crate::store::{self, ChangeTx, audit, webhooks};
use crate::wakeups::Wakeups;

/// Why an endpoint answering 410 fails its delivery and is disabled at once.
pub const GONE: &str = "the endpoint answered 410 Gone";
/// Why a delivery whose receiver stopped its retries failed.
pub const ABORTED: &str = "the receiver stopped retries (webhook-delivery: abort-message)";

/// An endpoint to disable, and why.
#[derive(Debug)]
pub struct Disabling {
    org: String,
    subscription_id: String,
    reason: String,
}

/// What a recorded batch says about endpoints: who to disable, and the
/// notices to publish once the batch is stored.
#[derive(Debug, Default)]
pub struct HealthNews {
    pub to_disable: Vec<Disabling>,
    /// Notices by org.
    notices: Vec<(String, SystemEvent)>,
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
    pub async fn record(&self, tx: &DatabaseTransaction, records: &[AttemptRecord]) -> Result<HealthNews> {
        let mut latest: HashMap<&str, &AttemptRecord> = HashMap::new();
        let mut news = HealthNews::default();
        for record in records.iter().filter(|r| r.number.is_some()) {
            latest.insert(&record.subscription_id, record);
            if record.next == NextStep::Failed && !SystemEvent::is_endpoint_notice(&record.event_type) {
                let exhausted = DeliveryExhausted {
                    delivery_id: record.delivery_id.clone(),
                    subscription_id: record.subscription_id.clone(),
                    event_type: record.event_type.clone(),
                    attempts: record.number.unwrap_or_default(),
                    status_code: record.status_code,
                    error: record.error.clone(),
                };
                news.notices.push((record.org_id.clone(), SystemEvent::DeliveryExhausted(exhausted)));
            }
        }
        let now = store::now();
        let (mut recovered, mut failing) = (Vec::new(), Vec::new());
        for (subscription, last) in latest {
            // A receiver that stopped a delivery's retries is up and answering.
            if last.next == NextStep::Succeeded || last.error.as_deref() == Some(ABORTED) {
                if last.failing_since.is_some() {
                    recovered.push(subscription);
                }
                continue;
            }
            if last.failing_since.is_none() {
                failing.push(subscription);
                let notice = EndpointFailing {
                    subscription_id: subscription.to_owned(),
                    status_code: last.status_code,
                    error: last.error.clone(),
                };
                news.notices.push((last.org_id.clone(), SystemEvent::EndpointFailing(notice)));
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
                news.to_disable.push(Disabling { org, subscription_id, reason });
            }
        }
        webhooks::set_failure_run(tx, &recovered, None).await?;
        webhooks::set_failure_run(tx, &failing, Some(now)).await?;
        Ok(news)
    }

    /// Publishes a stored batch's notices, one transaction per org, and
    /// disables the endpoints it named. A notice that cannot be stored is
    /// logged and not tried again (the attempts it is about are recorded).
    pub async fn announce(&self, news: HealthNews) {
        let mut by_org: HashMap<String, Vec<SystemEvent>> = HashMap::new();
        for (org, notice) in news.notices {
            by_org.entry(org).or_default().push(notice);
        }
        for (org, notices) in by_org {
            let published = async {
                let tx = ChangeTx::begin(&self.db, &org).await?;
                for notice in notices {
                    outbox::publish_system_event(&tx, notice).await?;
                }
                tx.commit(&self.wakeups).await
            };
            if let Err(error) = published.await {
                tracing::warn!(%org, %error, "publishing webhook health notices failed");
            }
        }
        self.disable_all(news.to_disable).await;
    }

    /// Disables each endpoint; a failure is logged, and the endpoint's next
    /// failed attempt tries again.
    async fn disable_all(&self, endpoints: Vec<Disabling>) {
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
