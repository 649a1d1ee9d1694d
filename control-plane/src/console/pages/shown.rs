//! Secrets shown once, by post/redirect/get: a form that makes one (a new
//! key, a rotation, a reveal, a signing secret, a portal link) keeps it
//! sealed on the session and answers with a redirect to `/shown`, whose GET
//! shows it and forgets it. A reload repeats the GET, not the form, and
//! finds nothing.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use super::{render, respond, see_other};
use crate::console::Console;
use crate::console::session::Signed;
use crate::console::views::{MessagePage, ShownOncePage};
use crate::error::Result;
use crate::service::sessions::ShownOnce;

/// Keeps `shown` for the page that shows it, and redirects there.
pub async fn show_once(console: &Console, signed: &Signed, shown: ShownOnce) -> Result<Response> {
    console.sessions.keep_shown_once(&signed.session, &shown).await?;
    see_other("/shown")
}

/// `GET /shown`: the secret waiting to be shown, once.
pub async fn page(State(console): State<Arc<Console>>, signed: Signed) -> Response {
    let nav = signed.nav("");
    let result = async {
        match console.sessions.take_shown_once(&signed.session).await? {
            Some(shown) => render(&ShownOncePage { nav: Some(nav.clone()), shown }),
            None => render(&MessagePage {
                nav: Some(nav.clone()),
                title: "Shown once".into(),
                message: "What this page showed is gone: it is shown once, and reloading neither shows it again \
                          nor repeats what made it."
                    .into(),
                href: "/".into(),
                label: "Back to the console".into(),
            }),
        }
    };
    respond(&nav, result.await)
}
