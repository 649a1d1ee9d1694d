//! Webhook endpoints: the list, creation (the secret shown once), changes
//! (settings, status, secret rotation, the switch to Standard Webhooks),
//! recovery, test events, portal links. An endpoint's page is `endpoint.rs`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::shown::show_once;
use super::{bad_request, next_page, page_request, render, respond, see_other};
use crate::console::Console;
use crate::console::input::{local_time, words};
use crate::console::pages::signin::Empty;
use crate::console::session::{Signed, SignedForm};
use crate::console::views::{
    ConfirmPage, DeliveryOptionsForm, NewWebhookPage, SubscriptionRow, WebhookForm, WebhooksPage, when, when_or_dash,
};
use crate::error::{Error, Result};
use crate::service::authz::{Action, Target};
use crate::service::records::SignatureScheme;
use crate::service::sessions::ShownOnce;
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

pub async fn new_form(State(console): State<Arc<Console>>, signed: Signed) -> Response {
    let nav = signed.nav("webhooks");
    let result = async {
        let catalog = catalog_names(&console, &signed).await?;
        render(&NewWebhookPage { nav: Some(nav.clone()), form: WebhookForm::default(), errors: Vec::new(), catalog })
    };
    respond(&nav, result.await)
}

/// The names of the org's catalog, Keyplane's own first (none for a
/// credential that may add endpoints but not read them).
async fn catalog_names(console: &Console, signed: &Signed) -> Result<Vec<String>> {
    match console.catalog.list(&signed.ctx, &signed.org(), false).await {
        Ok(types) => Ok(types.into_iter().map(|t| t.name).collect()),
        Err(Error::PermissionDenied(_)) => Ok(Vec::new()),
        Err(other) => Err(other),
    }
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
                channels: words(&form.channels),
                ..NewSubscription::default()
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
            match catalog_names(&console, &signed).await {
                Ok(catalog) => {
                    render(&NewWebhookPage { nav: Some(nav.clone()), form, errors, catalog }).map(bad_request)
                }
                Err(error) => Err(error),
            }
        }
        Err(other) => Err(other),
    };
    respond(&nav, result)
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
            channels: Some(words(&form.channels)),
            ..SubscriptionChanges::default()
        };
        console.webhooks.update(&signed.ctx, &signed.org(), &id, changes).await?;
        see_other(&format!("/webhooks/{id}"))
    };
    respond(&nav, result.await)
}

/// Replaces the endpoint's delivery options with those typed.
pub async fn set_options(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<DeliveryOptionsForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    match form.options() {
        Ok(options) => {
            let changes = SubscriptionChanges { delivery_options: Some(options), ..SubscriptionChanges::default() };
            change(&console, signed, &id, changes).await
        }
        Err(error) => respond(&signed.nav("webhooks"), Err(error)),
    }
}

/// Applies `changes` to endpoint `id` and goes back to its page.
async fn change(console: &Console, signed: Signed, id: &str, changes: SubscriptionChanges) -> Response {
    let nav = signed.nav("webhooks");
    let result = async {
        console.webhooks.update(&signed.ctx, &signed.org(), id, changes).await?;
        see_other(&format!("/webhooks/{id}"))
    };
    respond(&nav, result.await)
}

pub async fn enable(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let changes = SubscriptionChanges { enabled: Some(true), ..SubscriptionChanges::default() };
    change(&console, post.signed, &id, changes).await
}

pub async fn disable(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let changes = SubscriptionChanges { enabled: Some(false), ..SubscriptionChanges::default() };
    change(&console, post.signed, &id, changes).await
}

/// Drops a legacy signature header, once the receiver verifies Standard Webhooks.
pub async fn standard_signatures(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<Empty>,
) -> Response {
    let changes = SubscriptionChanges {
        signature_scheme: Some(SignatureScheme::StandardWebhooks),
        ..SubscriptionChanges::default()
    };
    change(&console, post.signed, &id, changes).await
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

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct TestForm {
    /// A catalog type whose example to send (empty: the test event).
    event_type: String,
}

pub async fn send_test(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<TestForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("webhooks");
    let result = async {
        let delivery = console.deliveries.send_test(&signed.ctx, &signed.org(), &id, &form.event_type).await?;
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
