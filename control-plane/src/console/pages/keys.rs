//! API keys: the list (filters, pages), creation (the token shown once),
//! a key's page with its usage graph, changes, rotation, revocation,
//! deletion and reveal.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::shown::show_once;
use super::{bad_request, granularity, next_page, page_request, render, respond, see_other, usage_chart, window};
use crate::console::Console;
use crate::console::input::{Ends, duration, ends, json, words};
use crate::console::pages::signin::Empty;
use crate::console::session::{Signed, SignedForm};
use crate::console::views::limits::{ChangeLimitsForm, LimitsView};
use crate::console::views::{
    ConfirmPage, KeyDetail, KeyFilterForm, KeyPage, KeyRow, KeysPage, NewKeyForm, NewKeyPage, when, when_or_dash,
};
use crate::error::{Error, Result};
use crate::service::api_keys::{Expiry, KeyChanges, NewKey};
use crate::service::paging::ListQuery;
use crate::service::records::Granularity;
use crate::service::records::{ApiKey, Environment, HasLimits, KeyFilter, KeyStatus};
use crate::service::sessions::ShownOnce;

pub async fn list(
    State(console): State<Arc<Console>>,
    signed: Signed,
    Query(filter): Query<KeyFilterForm>,
) -> Response {
    let nav = signed.nav("keys");
    let result = async {
        let query = ListQuery {
            org_id: signed.org(),
            page: page_request(&filter.page),
            filter: KeyFilter {
                status: match filter.status.as_str() {
                    "active" => Some(KeyStatus::Active),
                    "revoked" => Some(KeyStatus::Revoked),
                    "expired" => Some(KeyStatus::Expired),
                    _ => None,
                },
                environment: filter.environment.parse().ok(),
                name_prefix: Some(filter.prefix.clone()).filter(|p| !p.is_empty()),
                identity_id: None,
            },
        };
        let page = console.keys.list(&signed.ctx, query).await?;
        let filters =
            [("status", filter.status.as_str()), ("environment", &filter.environment), ("prefix", &filter.prefix)];
        let next = next_page(&filters, &page.next_page_token);
        let keys = page.items.iter().map(row).collect();
        render(&KeysPage { nav: Some(nav.clone()), keys, filter, next })
    };
    respond(&nav, result.await)
}

fn row(key: &ApiKey) -> KeyRow {
    KeyRow {
        id: key.id.clone(),
        name: key.name.clone(),
        environment: key.environment.as_str().to_owned(),
        status: status(key).to_owned(),
        start: key.start.clone(),
        created: when(key.created_at),
        last_used: when_or_dash(key.last_used_at),
        uses: key.usage_count.to_string(),
    }
}

/// `active`, `revoked`, or `expired` (also for an active key past its
/// expiry that the sweep has not marked yet).
fn status(key: &ApiKey) -> &'static str {
    match key.status {
        KeyStatus::Revoked => "revoked",
        KeyStatus::Expired => "expired",
        KeyStatus::Active if key.is_expired(crate::store::now()) => "expired",
        KeyStatus::Active => "active",
    }
}

pub async fn new_form(signed: Signed) -> Response {
    let nav = signed.nav("keys");
    respond(&nav, render(&NewKeyPage { nav: Some(nav.clone()), form: NewKeyForm::default(), errors: Vec::new() }))
}

/// The form as a service request; bad fields are field violations.
fn new_key(org: String, form: &NewKeyForm) -> Result<NewKey> {
    let mut violations = crate::service::validate::Violations::default();
    let environment = match form.environment.as_str() {
        "" | "live" => Environment::Live,
        "test" => Environment::Test,
        _ => {
            violations.add("environment", "must be live or test");
            Environment::Live
        }
    };
    let expiry = violations.absorb(ends("ttl", &form.ttl))?.flatten().map(|ends| match ends {
        Ends::At(at) => Expiry::At(at),
        Ends::After(after) => Expiry::Ttl(after),
    });
    let metadata = violations.absorb(json("metadata", &form.metadata))?.flatten();
    let limits = form.limits.limits(&mut violations)?;
    violations.finish()?;
    Ok(NewKey {
        org_id: org,
        name: form.name.trim().to_owned(),
        description: form.description.trim().to_owned(),
        environment,
        scopes: words(&form.scopes),
        expiry,
        limits,
        metadata,
        recoverable: form.recoverable.is_some(),
        identity_id: None,
    })
}

pub async fn create(State(console): State<Arc<Console>>, post: SignedForm<NewKeyForm>) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("keys");
    let created = match new_key(signed.org(), &form) {
        Ok(new) => console.keys.create(&signed.ctx, new).await,
        Err(error) => Err(error),
    };
    let result = match created {
        Ok(issued) => show_once(&console, &signed, ShownOnce {
            title: format!("Key “{}” created", issued.key.name),
            what: "API key token".into(),
            value: issued.token,
            warning:
                "This is the only time the token is shown. Store it in your secret manager; Keyplane keeps only a hash."
                    .into(),
            next_href: format!("/keys/{}", issued.key.id),
            next_label: "Go to the key".into(),
        }).await,
        Err(Error::InvalidArgument(violations)) => {
            let errors = violations.into_iter().map(|v| (v.field, v.description)).collect();
            render(&NewKeyPage { nav: Some(nav.clone()), form, errors }).map(bad_request)
        }
        Err(other) => Err(other),
    };
    respond(&nav, result)
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct KeyQuery {
    granularity: String,
}

pub async fn show(
    State(console): State<Arc<Console>>,
    signed: Signed,
    Path(id): Path<String>,
    Query(query): Query<KeyQuery>,
) -> Response {
    let nav = signed.nav("keys");
    let result = async {
        let key = console.keys.get(&signed.ctx, &signed.org(), &id).await?;
        let granularity = granularity(if query.granularity.is_empty() { "hour" } else { &query.granularity });
        let usage = if nav.can.usage_read {
            let series =
                console.usage.key_usage(&signed.ctx, &signed.org(), Some(&id), window(granularity), None).await?;
            let title = match granularity {
                Granularity::Minute => "Checks, last hour",
                Granularity::Hour => "Checks, last 24 hours",
                Granularity::Day => "Checks, last 30 days",
            };
            Some(usage_chart(title, &series, granularity))
        } else {
            None
        };
        let name = match granularity {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        };
        let permissions = super::roles::of_key(&console, &signed.ctx, &signed.org(), &id).await?;
        render(&KeyPage { nav: Some(nav.clone()), key: detail(&key), permissions, usage, granularity: name.into() })
    };
    respond(&nav, result.await)
}

fn detail(key: &ApiKey) -> KeyDetail {
    KeyDetail {
        id: key.id.clone(),
        name: key.name.clone(),
        description: key.description.clone(),
        environment: key.environment.as_str().to_owned(),
        status: status(key).to_owned(),
        active: key.status == KeyStatus::Active,
        start: key.start.clone(),
        scopes: key.scope_list().join(" "),
        expires: key.expires_at.map_or_else(|| "never".to_owned(), when),
        limits: LimitsView::of(&key.limits()),
        metadata: key.metadata.as_ref().map_or_else(|| "—".to_owned(), ToString::to_string),
        recoverable: key.sealed_token.is_some(),
        created_by: key.created_by.clone(),
        created: when(key.created_at),
        updated: when(key.updated_at),
        revoked: when_or_dash(key.revoked_at),
        revocation_reason: key.revocation_reason.clone().unwrap_or_default(),
        rotated_from: key.rotated_from.clone().unwrap_or_default(),
        last_used: when_or_dash(key.last_used_at),
        uses: key.usage_count.to_string(),
        expires_input: key
            .expires_at
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
        metadata_input: key.metadata.as_ref().map(ToString::to_string).unwrap_or_default(),
        identity: key.identity_id.clone().unwrap_or_else(|| "none".to_owned()),
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct UpdateForm {
    description: String,
    scopes: String,
    expires_at: String,
    metadata: String,
    #[serde(flatten)]
    limits: ChangeLimitsForm,
}

pub async fn update(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<UpdateForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("keys");
    let result = async {
        let mut violations = crate::service::validate::Violations::default();
        let expires_at = match violations.absorb(ends("update.expires_at", &form.expires_at))?.flatten() {
            None => None,
            Some(Ends::At(at)) => Some(at),
            Some(Ends::After(after)) => chrono::Duration::from_std(after)
                .ok()
                .and_then(|after| crate::store::now().checked_add_signed(after))
                .or_else(|| {
                    violations.add("update.expires_at", "is too far away");
                    None
                }),
        };
        let limits = form.limits.changes(&mut violations)?;
        let metadata = violations.absorb(json("update.metadata", &form.metadata))?.flatten();
        violations.finish()?;
        let changes = KeyChanges {
            description: Some(form.description.trim().to_owned()),
            scopes: Some(words(&form.scopes)),
            expires_at: Some(expires_at),
            metadata: Some(metadata),
            limits,
            ..KeyChanges::default()
        };
        console.keys.update(&signed.ctx, &signed.org(), &id, changes).await?;
        see_other(&format!("/keys/{id}"))
    };
    respond(&nav, result.await)
}

fn confirm(
    signed: &Signed,
    id: &str,
    action: &str,
    title: &str,
    message: String,
    input: Option<(&str, &str, &str)>,
) -> Response {
    let nav = signed.nav("keys");
    respond(
        &nav,
        render(&ConfirmPage {
            nav: Some(nav.clone()),
            title: title.into(),
            message,
            action: format!("/keys/{id}/{action}"),
            button: title.trim_end_matches('?').split(' ').next().unwrap_or("Confirm").to_owned(),
            danger: action != "rotate",
            input: input.map(|(label, name, placeholder)| (label.into(), name.into(), placeholder.into())),
            back: format!("/keys/{id}"),
        }),
    )
}

pub async fn confirm_rotate(signed: Signed, Path(id): Path<String>) -> Response {
    let message = "A new key replaces this one; the old token keeps working during the grace period.".to_owned();
    confirm(
        &signed,
        &id,
        "rotate",
        "Rotate this key?",
        message,
        Some(("Grace period (default 24h; 0s revokes now)", "grace", "24h")),
    )
}

pub async fn confirm_revoke(signed: Signed, Path(id): Path<String>) -> Response {
    let message = format!("Key {id} stops working everywhere within milliseconds. This cannot be undone.");
    confirm(
        &signed,
        &id,
        "revoke",
        "Revoke this key?",
        message,
        Some(("Reason (recorded in the audit log)", "reason", "")),
    )
}

pub async fn confirm_delete(signed: Signed, Path(id): Path<String>) -> Response {
    let message = format!("Key {id} is deleted: it stops working and disappears from listings.");
    confirm(&signed, &id, "delete", "Delete this key?", message, None)
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct RotateForm {
    grace: String,
}

pub async fn rotate(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<RotateForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("keys");
    let result = async {
        let grace = duration("grace_period", &form.grace)?;
        let rotation = console.keys.rotate(&signed.ctx, &signed.org(), &id, grace).await?;
        show_once(
            &console,
            &signed,
            ShownOnce {
                title: "Key rotated".into(),
                what: "Token of the new key".into(),
                value: rotation.issued.token,
                warning: "This is the only time the new token is shown.".into(),
                next_href: format!("/keys/{}", rotation.issued.key.id),
                next_label: "Go to the new key".into(),
            },
        )
        .await
    };
    respond(&nav, result.await)
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct RevokeForm {
    reason: String,
}

pub async fn revoke(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<RevokeForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("keys");
    let result = async {
        console.keys.revoke(&signed.ctx, &signed.org(), &id, form.reason.trim()).await?;
        see_other(&format!("/keys/{id}"))
    };
    respond(&nav, result.await)
}

pub async fn delete(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("keys");
    let result = async {
        console.keys.delete(&signed.ctx, &signed.org(), &id).await?;
        see_other("/keys")
    };
    respond(&nav, result.await)
}

pub async fn reveal(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("keys");
    let result = async {
        let token = console.keys.reveal(&signed.ctx, &signed.org(), &id).await?;
        show_once(
            &console,
            &signed,
            ShownOnce {
                title: "Token revealed".into(),
                what: "API key token".into(),
                value: token,
                warning: "Revealing is audited. Do not leave this page open.".into(),
                next_href: format!("/keys/{id}"),
                next_label: "Back to the key".into(),
            },
        )
        .await
    };
    respond(&nav, result.await)
}
