//! OAuth connections: the list, one connection, deletion (with the
//! provider's revocation outcome).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{next_page, page_request, render, respond};
use crate::console::Console;
use crate::console::pages::signin::Empty;
use crate::console::session::{Signed, SignedForm};
use crate::console::views::{ConfirmPage, ConnectionPage, ConnectionRow, ConnectionsPage, MessagePage, when_or_dash};
use crate::service::records::Connection;

fn row(connection: &Connection) -> ConnectionRow {
    ConnectionRow {
        id: connection.id.clone(),
        provider: connection.provider.clone(),
        account: connection.account_label.clone(),
        scopes: connection.scope_list().join(" "),
        expires: when_or_dash(connection.expires_at),
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    page: String,
}

pub async fn list(State(console): State<Arc<Console>>, signed: Signed, Query(query): Query<PageQuery>) -> Response {
    let nav = signed.nav("connections");
    let result = async {
        let page = console.connections.list(&signed.ctx, &signed.org(), "", &page_request(&query.page)).await?;
        let next = next_page(&[], &page.next_page_token);
        render(&ConnectionsPage { nav: Some(nav.clone()), connections: page.items.iter().map(row).collect(), next })
    };
    respond(&nav, result.await)
}

pub async fn show(State(console): State<Arc<Console>>, signed: Signed, Path(id): Path<String>) -> Response {
    let nav = signed.nav("connections");
    let result = async {
        let connection = console.connections.get(&signed.ctx, &signed.org(), &id).await?;
        render(&ConnectionPage {
            nav: Some(nav.clone()),
            connection: row(&connection),
            refresh_token: connection.sealed_refresh_token.is_some(),
            created: when_or_dash(Some(connection.created_at)),
            refreshed: when_or_dash(connection.refreshed_at),
        })
    };
    respond(&nav, result.await)
}

pub async fn confirm_delete(signed: Signed, Path(id): Path<String>) -> Response {
    let nav = signed.nav("connections");
    respond(
        &nav,
        render(&ConfirmPage {
            nav: Some(nav.clone()),
            title: "Delete this connection?".into(),
            message: format!("Connection {id} is deleted and its grant revoked at the provider."),
            action: format!("/connections/{id}/delete"),
            button: "Delete".into(),
            danger: true,
            input: None,
            back: format!("/connections/{id}"),
        }),
    )
}

pub async fn delete(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("connections");
    let result = async {
        let revocation = console.connections.delete(&signed.ctx, &signed.org(), &id).await?;
        let message = if revocation.revoked {
            "The connection is deleted and the provider confirmed the revocation.".to_owned()
        } else {
            format!("The connection is deleted; the provider's revocation failed: {}", revocation.error)
        };
        render(&MessagePage {
            nav: Some(nav.clone()),
            title: "Connection deleted".into(),
            message,
            href: "/connections".into(),
            label: "Back to connections".into(),
        })
    };
    respond(&nav, result.await)
}
