//! The event catalog, for the org's people and its webhook portal.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::{render, respond, see_other};
use crate::console::Console;
use crate::console::session::{Signed, SignedForm};
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
        let required = console.catalog.requires_cataloged(&signed.ctx, &signed.org()).await?;
        render(&CatalogPage { nav: Some(nav.clone()), groups, required })
    };
    respond(&nav, result.await)
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct PolicyForm {
    /// "on" to publish only cataloged types.
    required: String,
}

/// Sets whether the org publishes only cataloged types.
pub async fn set_policy(State(console): State<Arc<Console>>, post: SignedForm<PolicyForm>) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("webhooks");
    let set = console.catalog.set_policy(&signed.ctx, &signed.org(), form.required == "on").await;
    respond(&nav, set.and_then(|_| see_other("/webhooks/catalog")))
}
