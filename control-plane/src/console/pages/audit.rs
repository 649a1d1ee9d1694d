//! The audit log: filters, keyset pages, and the chain check.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::Response;

use super::{next_page, page_request, render, respond};
use crate::console::Console;
use crate::console::input::local_time;
use crate::console::session::Signed;
use crate::console::views::{AuditFilterForm, AuditPage, AuditRow, when};
use crate::error::Result;
use crate::service::paging::ListQuery;
use crate::service::records::{AuditEntry, AuditFilter};

/// An audit event as a table row: a key that acted is named.
pub fn audit_row(entry: AuditEntry) -> AuditRow {
    let AuditEntry { event, actor_name } = entry;
    let actor = format!("{}:{}", event.actor_type, event.actor_id);
    AuditRow {
        seq: event.seq.to_string(),
        at: when(event.created_at),
        actor: match actor_name {
            Some(name) => format!("{name} ({actor})"),
            None => actor,
        },
        action: event.action,
        target: format!("{}:{}", event.target_type, event.target_id),
        details: event.metadata.to_string(),
    }
}

pub async fn list(
    State(console): State<Arc<Console>>,
    signed: Signed,
    Query(filter): Query<AuditFilterForm>,
) -> Response {
    let nav = signed.nav("audit");
    respond(&nav, page(&console, &signed, filter, None).await)
}

async fn page(
    console: &Console,
    signed: &Signed,
    filter: AuditFilterForm,
    chain: Option<(bool, String)>,
) -> Result<Response> {
    let non_empty = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let query = ListQuery {
        org_id: signed.org(),
        page: page_request(&filter.page),
        filter: AuditFilter {
            action: non_empty(&filter.action),
            actor_id: non_empty(&filter.actor),
            target_id: non_empty(&filter.target),
            start_time: local_time("since", &filter.since)?,
            end_time: local_time("until", &filter.until)?,
        },
    };
    let page = console.audit.list(&signed.ctx, query).await?;
    let next = next_page(
        &[
            ("action", &filter.action),
            ("actor", &filter.actor),
            ("target", &filter.target),
            ("since", &filter.since),
            ("until", &filter.until),
        ],
        &page.next_page_token,
    );
    let events = page.items.into_iter().map(audit_row).collect();
    render(&AuditPage { nav: Some(signed.nav("audit")), events, filter, next, chain })
}

pub async fn verify(State(console): State<Arc<Console>>, signed: Signed) -> Response {
    let nav = signed.nav("audit");
    let result = async {
        let report = console.audit.verify_chain(&signed.ctx, &signed.org()).await?;
        let chain = match report.first_broken {
            None => (true, format!("{} events checked.", report.events_checked)),
            Some((seq, id, problem)) => (false, format!("event {seq} ({id}): {problem}")),
        };
        page(&console, &signed, AuditFilterForm::default(), Some(chain)).await
    };
    respond(&nav, result.await)
}
