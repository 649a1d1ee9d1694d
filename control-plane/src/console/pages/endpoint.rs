//! An endpoint's page: its settings and signature scheme, status actions,
//! attempt statistics, and its delivery log with filters and pages.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{next_page, page_request, render, respond, window};
use crate::console::Console;
use crate::console::chart::{self, Chart, Series};
use crate::console::input::local_time;
use crate::console::session::Signed;
use crate::console::views::{
    ChartView, DeliveryFilterForm, DeliveryRow, SubscriptionDetail, WebhookPage, options_lines, when, when_or_dash,
};
use crate::service::paging::ListQuery;
use crate::service::records::Granularity;
use crate::service::records::{DeliveryFilter, DeliveryStatus, Subscription, SubscriptionStatus};
use crate::service::usage::DeliveryStatsBucket;
use crate::service::webhooks::endpoints::OptionsView;

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct ShowQuery {
    #[serde(flatten)]
    filter: DeliveryFilterForm,
    /// How many failed deliveries a recovery queued: the page's only notice.
    /// Notices are built here from codes, never from text in the URL (a
    /// link could otherwise put any words on a trusted page).
    recovered: Option<u64>,
}

pub async fn show(
    State(console): State<Arc<Console>>,
    signed: Signed,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
) -> Response {
    let nav = signed.nav("webhooks");
    let result = async {
        let (ctx, org) = (&signed.ctx, signed.org());
        let subscription = console.webhooks.get(ctx, &org, &id).await?;
        let stats = if nav.can.usage_read {
            let buckets = console.usage.delivery_stats(ctx, &org, Some(&id), window(Granularity::Hour)).await?;
            Some(stats_chart(&buckets))
        } else {
            None
        };
        let (deliveries, next) = if nav.can.deliveries_read {
            let filter = &query.filter;
            let listing = ListQuery {
                org_id: org.clone(),
                page: page_request(&filter.page),
                filter: DeliveryFilter {
                    subscription_id: Some(id.clone()),
                    status: match filter.status.as_str() {
                        "pending" => Some(DeliveryStatus::Pending),
                        "succeeded" => Some(DeliveryStatus::Succeeded),
                        "failed" => Some(DeliveryStatus::Failed),
                        _ => None,
                    },
                    event_type: Some(filter.event_type.trim().to_owned()).filter(|t| !t.is_empty()),
                    created_after: local_time("since", &filter.since)?,
                    created_before: local_time("until", &filter.until)?,
                },
            };
            let page = console.deliveries.list(ctx, listing).await?;
            let filters = [
                ("status", filter.status.as_str()),
                ("event_type", &filter.event_type),
                ("since", &filter.since),
                ("until", &filter.until),
            ];
            let next = next_page(&filters, &page.next_page_token);
            let rows = page
                .items
                .iter()
                .map(|d| DeliveryRow {
                    id: d.id.clone(),
                    event_type: d.event_type.clone(),
                    status: d.status.as_str().to_owned(),
                    attempts: d.attempt_count.to_string(),
                    last_status: match (d.last_status_code, &d.last_error) {
                        (Some(code), _) => format!("HTTP {code}"),
                        (None, Some(error)) => error.clone(),
                        (None, None) => "—".into(),
                    },
                    created: when(d.created_at),
                })
                .collect();
            (rows, next)
        } else {
            (Vec::new(), None)
        };
        let notice = query.recovered.map(|n| format!("{n} failed deliveries will be sent again."));
        let catalog = console.catalog.list(ctx, &org, false).await?;
        let examples = catalog.into_iter().filter(|t| !t.examples.is_empty()).map(|t| t.name).collect();
        render(&WebhookPage {
            nav: Some(nav.clone()),
            subscription: detail(&subscription, &console.webhooks.options(&subscription)?),
            stats,
            deliveries,
            filter: query.filter,
            next,
            notice,
            examples,
        })
    };
    respond(&nav, result.await)
}

fn detail(subscription: &Subscription, options: &OptionsView) -> SubscriptionDetail {
    SubscriptionDetail {
        id: subscription.id.clone(),
        url: subscription.url.clone(),
        event_types: subscription.event_type_list().join(" "),
        description: subscription.description.clone(),
        status: subscription.status.as_str().to_owned(),
        active: subscription.status == SubscriptionStatus::Active,
        pending_approval: subscription.status == SubscriptionStatus::PendingApproval,
        disabled_reason: subscription.disabled_reason.clone().unwrap_or_default(),
        rate_limit: match subscription.rate_limit_per_second {
            0 => "none".into(),
            n => format!("{n} per second"),
        },
        rate_limit_input: match subscription.rate_limit_per_second {
            0 => String::new(),
            n => n.to_string(),
        },
        failing_since: when_or_dash(subscription.failing_since),
        created: when(subscription.created_at),
        legacy_signature: subscription.signature_scheme().describe(),
        channels: subscription.channel_list().join(" "),
        options: options_lines(options),
    }
}

/// Attempts per hour, succeeded and failed, with the median latency in the table.
fn stats_chart(buckets: &[DeliveryStatsBucket]) -> ChartView {
    let labels: Vec<String> = buckets.iter().map(|b| super::bucket_label(b.start, Granularity::Hour)).collect();
    let series = vec![
        Series { name: "succeeded", color: "green", values: buckets.iter().map(|b| b.succeeded as f64).collect() },
        Series { name: "failed", color: "red", values: buckets.iter().map(|b| b.failed as f64).collect() },
    ];
    let title = "Delivery attempts, last 24 hours";
    let svg = chart::line_chart(&Chart { title, unit: "attempts", labels: labels.clone(), series });
    let ms = |d: Option<std::time::Duration>| {
        d.map_or_else(|| "—".to_owned(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
    };
    let rows = buckets
        .iter()
        .zip(labels)
        .map(|(b, label)| {
            (label, vec![b.attempts.to_string(), b.succeeded.to_string(), b.failed.to_string(), ms(b.p50), ms(b.p99)])
        })
        .collect();
    ChartView {
        svg,
        caption: title.into(),
        columns: ["hour", "attempts", "succeeded", "failed", "p50 latency", "p99 latency"].map(str::to_owned).to_vec(),
        rows,
    }
}
