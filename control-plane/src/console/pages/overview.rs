//! The overview: verifications of the last 24 hours by outcome, the
//! delivery success rate, counts, and the latest audit events — each only
//! when the credential may read it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::{render, respond, usage_chart, window};
use crate::console::Console;
use crate::console::pages::audit::audit_row;
use crate::console::session::Signed;
use crate::console::views::OverviewPage;
use crate::error::Result;
use crate::service::paging::{ListQuery, PageRequest};
use crate::service::records::Granularity;
use crate::service::records::{AuditFilter, SubscriptionStatus};

/// Beyond this the overview says "10000+": counting keeps the page fast
/// whatever the org's size (BENCHMARKS.md, "Console").
const ACTIVE_KEYS_COUNTED_UP_TO: u64 = 10_000;

pub async fn show(State(console): State<Arc<Console>>, signed: Signed) -> Response {
    let nav = signed.nav("overview");
    respond(&nav, overview(&console, &signed).await)
}

async fn overview(console: &Console, signed: &Signed) -> Result<Response> {
    let (ctx, org) = (&signed.ctx, signed.org());
    let can = signed.nav.can;
    let mut counts = Vec::new();
    if can.keys_read {
        let active = console.keys.count_active(ctx, &org, ACTIVE_KEYS_COUNTED_UP_TO + 1).await?;
        let shown = if active > ACTIVE_KEYS_COUNTED_UP_TO {
            format!("{ACTIVE_KEYS_COUNTED_UP_TO}+")
        } else {
            active.to_string()
        };
        counts.push(("Active keys".to_owned(), shown, "/keys?status=active".to_owned()));
    }
    if can.webhooks_read {
        let page = PageRequest { size: crate::service::paging::MAX_PAGE_SIZE, token: String::new() };
        let subscriptions = console.webhooks.list(ctx, &org, &page).await?.items;
        let with = |status: SubscriptionStatus| subscriptions.iter().filter(|s| s.status == status).count();
        let failing = subscriptions.iter().filter(|s| s.failing_since.is_some()).count();
        counts.push(("Endpoints".into(), subscriptions.len().to_string(), "/webhooks".into()));
        counts.push(("Failing endpoints".into(), failing.to_string(), String::new()));
        counts.push(("Disabled endpoints".into(), with(SubscriptionStatus::Disabled).to_string(), String::new()));
        counts.push(("Pending approval".into(), with(SubscriptionStatus::PendingApproval).to_string(), String::new()));
    }
    let (mut usage, mut delivery_rate) = (None, None);
    if can.usage_read {
        let series = console.usage.key_usage(ctx, &org, None, window(Granularity::Hour), None).await?;
        usage = Some(usage_chart("Verifications, last 24 hours", &series, Granularity::Hour));
        let stats = console.usage.delivery_stats(ctx, &org, None, window(Granularity::Hour)).await?;
        let (attempts, succeeded) =
            stats.iter().fold((0, 0), |(a, s), bucket| (a + bucket.attempts, s + bucket.succeeded));
        delivery_rate = Some(if attempts == 0 {
            ("—".to_owned(), "no attempts".to_owned())
        } else {
            (format!("{:.1}%", 100.0 * succeeded as f64 / attempts as f64), format!("of {attempts} attempts"))
        });
    }
    let mut audit = Vec::new();
    if can.audit_read {
        let query = ListQuery {
            org_id: org.clone(),
            page: PageRequest { size: 10, token: String::new() },
            filter: AuditFilter::default(),
        };
        audit = console.audit.list(ctx, query).await?.items.into_iter().map(audit_row).collect();
    }
    render(&OverviewPage { nav: Some(signed.nav("overview")), usage, delivery_rate, counts, audit })
}
