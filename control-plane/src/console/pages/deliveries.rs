//! One delivery with every attempt, and retrying it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;

use super::{render, respond, see_other};
use crate::console::Console;
use crate::console::pages::signin::Empty;
use crate::console::session::{Signed, SignedForm};
use crate::console::views::{AttemptRow, DeliveryPage, when};
use crate::service::records::DeliveryStatus;

pub async fn show(State(console): State<Arc<Console>>, signed: Signed, Path(id): Path<String>) -> Response {
    let nav = signed.nav("webhooks");
    let result = async {
        let detail = console.deliveries.detail(&signed.ctx, &signed.org(), &id).await?;
        let (delivery, in_flight) = (detail.delivery, detail.attempts.is_empty());
        let attempts = detail
            .attempts
            .iter()
            .map(|a| AttemptRow {
                number: a.number.to_string(),
                started: when(a.started_at),
                status: a.status_code.map_or_else(|| "no answer".to_owned(), |code| format!("HTTP {code}")),
                latency: format!("{:.0} ms", a.latency_micros as f64 / 1000.0),
                error: a.error.clone().unwrap_or_default(),
                excerpt: a.response_excerpt.clone().unwrap_or_default(),
            })
            .collect();
        let finished = delivery.status != DeliveryStatus::Pending;
        render(&DeliveryPage {
            nav: Some(nav.clone()),
            finished,
            // A first attempt waits for nothing: it is on its way (or about to be).
            sending: !finished && in_flight,
            status: delivery.status.as_str().to_owned(),
            next_attempt: when(delivery.next_attempt_at),
            url: detail.url.unwrap_or_else(|| "(the endpoint was deleted)".into()),
            body: detail.body.unwrap_or_default(),
            legacy_headers: detail.signature_scheme.describe(),
            created: when(delivery.created_at),
            id: delivery.id,
            subscription_id: delivery.subscription_id,
            event_id: delivery.event_id,
            event_type: delivery.event_type,
            attempts,
        })
    };
    respond(&nav, result.await)
}

pub async fn retry(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("webhooks");
    let result = async {
        console.deliveries.retry(&signed.ctx, &signed.org(), &id).await?;
        see_other(&format!("/deliveries/{id}"))
    };
    respond(&nav, result.await)
}
