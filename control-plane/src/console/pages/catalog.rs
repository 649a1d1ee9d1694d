//! The event catalog, for the org's people and its webhook portal.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::{render, respond};
use crate::console::Console;
use crate::console::session::Signed;
use crate::console::views::{CatalogPage, CatalogRow};

pub async fn list(State(console): State<Arc<Console>>, signed: Signed) -> Response {
    let nav = signed.nav("webhooks");
    let result = async {
        let types = console.catalog.list(&signed.ctx, &signed.org(), false).await?;
        let mut groups: Vec<(String, Vec<CatalogRow>)> = Vec::new();
        for t in types {
            let newest = t.schemas.last();
            let pretty = |value: &serde_json::Value| serde_json::to_string_pretty(value).unwrap_or_default();
            let row = CatalogRow {
                version: newest.map(|s| format!("v{}", s.version)).unwrap_or_default(),
                schema: newest.map(|s| pretty(&s.schema)).unwrap_or_default(),
                example: t.examples.first().map(pretty).unwrap_or_default(),
                name: t.name,
                description: t.description,
                deprecated: t.deprecated,
                system: t.system,
            };
            match groups.last_mut() {
                Some((group, rows)) if *group == t.group => rows.push(row),
                _ => groups.push((t.group, vec![row])),
            }
        }
        render(&CatalogPage { nav: Some(nav.clone()), groups })
    };
    respond(&nav, result.await)
}
