//! Webhook endpoints: the list, creation (the secret shown once), an
//! endpoint's page (status actions, secret rotation, attempt statistics,
//! delivery log with filters and pages), recovery, test events, portal links.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::shown::show_once;
use super::{bad_request, local_time, next_page, page_request, render, respond, see_other, window, words};
use crate::console::Console;
use crate::console::chart::{self, Chart, Series};
use crate::console::pages::signin::Empty;
use crate::console::session::{Signed, SignedForm};
use crate::console::views::{
    ChartView, ConfirmPage, DeliveryFilterForm, DeliveryRow, NewWebhookPage, SubscriptionDetail, SubscriptionRow,
    WebhookForm, WebhookPage, WebhooksPage, when, when_or_dash,
};
use crate::error::{Error, Result};
use crate::service::authz::{Action, Target};
use crate::service::paging::ListQuery;
use crate::service::records::Granularity;
use crate::service::records::{DeliveryFilter, DeliveryStatus, Subscription, SubscriptionStatus};
use crate::service::sessions::ShownOnce;
use crate::service::usage::DeliveryStatsBucket;
use crate::service::webhooks::subscriptions::{NewSubscription, SubscriptionChanges};

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    page: String,
}

pub async fn list(State(console): State<Arc<Console>>, signed: Signed, Query(query): Query<PageQuery>) -> Response {
    let nav = signed.nav("webhooks");
    let result = async {
        let page = console.webhooks.list(&signed.ctx, &signed.org(), &page_request(&query.page)).await?;
        let subscriptions = page
            .items
            .iter()
            .map(|s| SubscriptionRow {
                id: s.id.clone(),
                url: s.url.clone(),
                event_types: s.event_type_list().join(" "),
                status: s.status.as_str().to_owned(),
                failing_since: when_or_dash(s.failing_since),
            })
            .collect();
        let next = next_page(&[], &page.next_page_token);
        render(&WebhooksPage { nav: Some(nav.clone()), subscriptions, next })
    };
    respond(&nav, result.await)
}

pub async fn new_form(signed: Signed) -> Response {
    let nav = signed.nav("webhooks");
    respond(&nav, render(&NewWebhookPage { nav: Some(nav.clone()), form: WebhookForm::default(), errors: Vec::new() }))
}

fn rate_limit(field: &str, text: &str) -> Result<u32> {
    if text.trim().is_empty() {
        return Ok(0);
    }
    text.trim().parse().map_err(|_| Error::invalid(field, "must be a whole number (0: no limit)"))
}

pub async fn create(State(console): State<Arc<Console>>, post: SignedForm<WebhookForm>) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("webhooks");
    let created = match rate_limit("rate_limit_per_second", &form.rate_limit) {
        Ok(rate_limit_per_second) => {
            let new = NewSubscription {
                org_id: signed.org(),
                url: form.url.trim().to_owned(),
                event_types: words(&form.event_types),
                description: form.description.trim().to_owned(),
                rate_limit_per_second,
            };
            console.webhooks.create(&signed.ctx, new).await
        }
        Err(error) => Err(error),
    };
    let result = match created {
        Ok(created) => {
            show_once(
                &console,
                &signed,
                ShownOnce {
                    title: "Endpoint added".into(),
                    what: "Signing secret".into(),
                    value: created.secret,
                    warning: "This is the only time the secret is shown. Give it to the receiver to verify signatures."
                        .into(),
                    next_href: format!("/webhooks/{}", created.subscription.id),
                    next_label: "Go to the endpoint".into(),
                },
            )
            .await
        }
        Err(Error::InvalidArgument(violations)) => {
            let errors = violations.into_iter().map(|v| (v.field, v.description)).collect();
            render(&NewWebhookPage { nav: Some(nav.clone()), form, errors }).map(bad_request)
        }
        Err(other) => Err(other),
    };
    respond(&nav, result)
}

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
        render(&WebhookPage {
            nav: Some(nav.clone()),
            subscription: detail(&subscription),
            stats,
            deliveries,
            filter: query.filter,
            next,
            notice,
        })
    };
    respond(&nav, result.await)
}

fn detail(subscription: &Subscription) -> SubscriptionDetail {
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

pub async fn update(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<WebhookForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("webhooks");
    let result = async {
        let changes = SubscriptionChanges {
            url: Some(form.url.trim().to_owned()).filter(|u| !u.is_empty()),
            event_types: Some(words(&form.event_types)).filter(|t| !t.is_empty()),
            description: Some(form.description.trim().to_owned()),
            rate_limit_per_second: Some(rate_limit("update.rate_limit_per_second", &form.rate_limit)?),
            ..SubscriptionChanges::default()
        };
        console.webhooks.update(&signed.ctx, &signed.org(), &id, changes).await?;
        see_other(&format!("/webhooks/{id}"))
    };
    respond(&nav, result.await)
}

async fn set_enabled(console: &Console, signed: Signed, id: &str, enabled: bool) -> Response {
    let nav = signed.nav("webhooks");
    let result = async {
        let changes = SubscriptionChanges { enabled: Some(enabled), ..SubscriptionChanges::default() };
        console.webhooks.update(&signed.ctx, &signed.org(), id, changes).await?;
        see_other(&format!("/webhooks/{id}"))
    };
    respond(&nav, result.await)
}

pub async fn enable(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    set_enabled(&console, post.signed, &id, true).await
}

pub async fn disable(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    set_enabled(&console, post.signed, &id, false).await
}

pub async fn approve(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("webhooks");
    let result = async {
        console.webhooks.approve(&signed.ctx, &signed.org(), &id).await?;
        see_other(&format!("/webhooks/{id}"))
    };
    respond(&nav, result.await)
}

pub async fn rotate(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("webhooks");
    let result = async {
        let rotated = console.webhooks.rotate_secret(&signed.ctx, &signed.org(), &id, None).await?;
        show_once(
            &console,
            &signed,
            ShownOnce {
                title: "Secret rotated".into(),
                what: "New signing secret".into(),
                value: rotated.secret,
                warning: "This is the only time the new secret is shown. The previous one keeps signing for 24 hours."
                    .into(),
                next_href: format!("/webhooks/{id}"),
                next_label: "Back to the endpoint".into(),
            },
        )
        .await
    };
    respond(&nav, result.await)
}

pub async fn send_test(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<Empty>,
) -> Response {
    let signed = post.signed;
    let nav = signed.nav("webhooks");
    let result = async {
        let delivery = console.deliveries.send_test(&signed.ctx, &signed.org(), &id).await?;
        see_other(&format!("/deliveries/{}", delivery.id))
    };
    respond(&nav, result.await)
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct RecoverForm {
    since: String,
}

pub async fn recover(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<RecoverForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("webhooks");
    let result = async {
        // The decision first, before the form is read.
        signed.ctx.authorize(Action::RetryDeliveries, Target::Org(&signed.org()))?;
        let since = local_time("since", &form.since)?.ok_or_else(|| Error::invalid("since", "is required"))?;
        let recovered = console.deliveries.recover_failed(&signed.ctx, &signed.org(), &id, since).await?;
        see_other(&format!("/webhooks/{id}?recovered={recovered}"))
    };
    respond(&nav, result.await)
}

pub async fn confirm_delete(signed: Signed, Path(id): Path<String>) -> Response {
    let nav = signed.nav("webhooks");
    respond(
        &nav,
        render(&ConfirmPage {
            nav: Some(nav.clone()),
            title: "Delete this endpoint?".into(),
            message: format!("Subscription {id} is deleted; its pending deliveries fail."),
            action: format!("/webhooks/{id}/delete"),
            button: "Delete".into(),
            danger: true,
            input: None,
            back: format!("/webhooks/{id}"),
        }),
    )
}

pub async fn delete(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("webhooks");
    let result = async {
        console.webhooks.delete(&signed.ctx, &signed.org(), &id).await?;
        see_other("/webhooks")
    };
    respond(&nav, result.await)
}

pub async fn portal_link(State(console): State<Arc<Console>>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("webhooks");
    let result = async {
        let link = console.portal.create(&signed.ctx, &signed.org(), None, Vec::new()).await?;
        show_once(
            &console,
            &signed,
            ShownOnce {
                title: "Portal link created".into(),
                what: "One-time link to this org's webhook portal".into(),
                value: link.url,
                warning: format!(
                    "Send it to your customer. It opens once, until {}; the portal shows this org's webhooks only.",
                    when(link.expires_at)
                ),
                next_href: "/webhooks".into(),
                next_label: "Back to webhooks".into(),
            },
        )
        .await
    };
    respond(&nav, result.await)
}
