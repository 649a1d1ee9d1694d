//! Single sign-on with the OpenID provider, and the users page.
//!
//! The sign-in's `state` also goes into a cookie scoped to the callback
//! path: the callback is refused unless the browser that began the sign-in
//! brings it back (no one can finish their sign-in in someone else's
//! browser). That cookie is `SameSite=Lax`, as the provider's redirect back
//! is a cross-site navigation.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::signin::{ComeBack, Empty, login_refusal};
use super::{render, respond, see_other};
use crate::console::Console;
use crate::console::session::{self, SESSION_COOKIE, Signed, SignedForm};
use crate::console::views::{UserRow, UsersPage, when};
use crate::error::Error;

/// The cookie carrying a begun sign-in's state to its callback.
const STATE_COOKIE: &str = "kp_oidc";
const CALLBACK: &str = "/login/oidc/callback";

/// Sends the browser to the provider.
pub async fn begin_sign_in(
    State(console): State<Arc<Console>>,
    Query(back): Query<ComeBack>,
    parts: Parts,
) -> Response {
    let next = session::local_next(&back.next);
    match console.users.begin_sign_in(next, &session::client(&parts)).await {
        Ok(start) => {
            let secure = if console.secure_cookies { "; Secure" } else { "" };
            let cookie =
                format!("{STATE_COOKIE}={}; HttpOnly; SameSite=Lax; Path={CALLBACK}; Max-Age=600{secure}", start.state);
            let cookie = HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static(""));
            ([(header::SET_COOKIE, cookie)], Redirect::to(&start.authorize_url)).into_response()
        }
        Err(error) => login_refusal(&console, error, next),
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct Callback {
    code: String,
    state: String,
    /// Set by the provider when the person or the provider said no.
    error: String,
}

/// The provider's redirect back: finish the sign-in, open the session.
pub async fn finish_sign_in(
    State(console): State<Arc<Console>>,
    Query(callback): Query<Callback>,
    parts: Parts,
) -> Response {
    let forget = HeaderValue::from_str(&format!("{STATE_COOKIE}=; HttpOnly; SameSite=Lax; Path={CALLBACK}; Max-Age=0"))
        .unwrap_or(HeaderValue::from_static(""));
    if !callback.error.is_empty() || callback.code.is_empty() || callback.state.is_empty() {
        let refused = Error::Unauthenticated("the identity provider did not sign you in");
        return with_cookie(forget, login_refusal(&console, refused, "/"));
    }
    let cookie_state = session::cookie(&parts.headers, STATE_COOKIE);
    let client = session::client(&parts);
    let finished =
        console.users.finish_sign_in(&callback.code, &callback.state, cookie_state.as_deref(), &client).await;
    let page = match finished {
        Ok((id, signed_in, next)) => {
            let next = session::local_next(&next);
            let to = match (signed_in.chooses_org() && signed_in.org.is_none(), next) {
                (true, "/") => "/org".to_owned(),
                (true, next) => format!("/org?{}", serde_urlencoded::to_string([("next", next)]).unwrap_or_default()),
                (false, next) => next.to_owned(),
            };
            let cookie = session::set_cookie(SESSION_COOKIE, &id, "/", console.secure_cookies, None);
            // A page of this site moves on, rather than a redirect: the chain
            // began at the provider, and a browser leaves the SameSite=Strict
            // session cookie off a cross-site redirect chain.
            let escaped =
                askama::filters::escape(&to, askama::filters::Html).map(|s| s.to_string()).unwrap_or_default();
            let body = format!(
                "<!doctype html><meta http-equiv=\"refresh\" content=\"0;url={escaped}\"><title>Signed in</title><a href=\"{escaped}\">Continue</a>"
            );
            ([(header::SET_COOKIE, cookie)], Html(body)).into_response()
        }
        Err(error) => login_refusal(&console, error, "/"),
    };
    with_cookie(forget, page)
}

fn with_cookie(cookie: HeaderValue, mut page: Response) -> Response {
    page.headers_mut().append(header::SET_COOKIE, cookie);
    page
}

/// Everyone who signed in with single sign-on (platform admins).
pub async fn list(State(console): State<Arc<Console>>, signed: Signed) -> Response {
    let nav = signed.nav("users");
    let result = async {
        let users = console.users.list(&signed.ctx).await?;
        let rows = users
            .into_iter()
            .map(|user| UserRow {
                rights: user
                    .rights
                    .iter()
                    .map(|right| {
                        let org = if right.org == "*" { "every org" } else { right.org.as_str() };
                        format!("{org}: {}", right.scopes.join(" "))
                    })
                    .collect(),
                id: user.id,
                email: user.email,
                name: user.name,
                disabled: user.disabled,
                last_sign_in: when(user.last_sign_in_at),
            })
            .collect();
        render(&UsersPage { nav: Some(nav.clone()), users: rows })
    };
    respond(&nav, result.await)
}

pub async fn disable(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    set_disabled(&console, &id, post, true).await
}

pub async fn enable(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    set_disabled(&console, &id, post, false).await
}

async fn set_disabled(console: &Console, id: &str, post: SignedForm<Empty>, disabled: bool) -> Response {
    let nav = post.signed.nav("users");
    let result = console.users.set_disabled(&post.signed.ctx, id, disabled).await;
    respond(&nav, result.and_then(|()| see_other("/users")))
}
