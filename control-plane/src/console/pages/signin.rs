//! Signing in and out, choosing the org, and opening a portal link.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{next_page, page_request, render, respond, see_other};
use crate::console::Console;
use crate::console::error::error_page;
use crate::console::session::{self, SESSION_COOKIE, Signed, SignedForm};
use crate::console::views::{LoginPage, OrgPage, OrgRow, PortalOpenPage};
use crate::crypto::token::{encode_fixed, random_bytes};
use crate::error::Error;
use crate::service::sessions::KeySignIn;

/// The double-submit cookie of the sign-in form (there is no session yet).
const NONCE_COOKIE: &str = "kp_login";

/// Where a redirect to the sign-in or org page came from.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct ComeBack {
    /// Set when the person's session ended.
    ended: Option<String>,
    /// The page they asked for.
    pub next: String,
}

pub async fn form(State(console): State<Arc<Console>>, Query(back): Query<ComeBack>, parts: Parts) -> Response {
    let next = session::local_next(&back.next);
    if let Some(id) = session::cookie(&parts.headers, SESSION_COOKIE)
        && let Ok(Some(_)) = console.sessions.resume(&id, &session::client(&parts)).await
    {
        return Redirect::to(next).into_response();
    }
    let notice = back.ended.map(|_| "Your session ended (idle too long, signed out, or its key changed). Sign in again to go back where you were.".to_owned());
    login_page(&console, LoginState { error: None, notice, next: next.to_owned() }, StatusCode::OK)
}

/// What the sign-in page says and where it leads.
struct LoginState {
    error: Option<String>,
    notice: Option<String>,
    next: String,
}

impl LoginState {
    fn error(message: impl Into<String>, next: &str) -> Self {
        LoginState { error: Some(message.into()), notice: None, next: session::local_next(next).to_owned() }
    }
}

/// A double-submit nonce for a form shown before there is a session (and
/// so no CSRF token): the nonce for the form, and the cookie, scoped to
/// `path`, that must come back with it.
fn form_nonce(console: &Console, cookie: &str, path: &str) -> (String, HeaderValue) {
    let nonce = encode_fixed(&random_bytes::<16>(), 22);
    let set_cookie = session::set_cookie(cookie, &nonce, path, console.secure_cookies, None);
    (nonce, set_cookie)
}

/// Whether a form came back with the nonce its cookie carries.
fn nonce_matches(parts: &Parts, cookie: &str, nonce: &str) -> bool {
    session::cookie(&parts.headers, cookie).as_deref() == Some(nonce)
}

fn login_page(console: &Console, state: LoginState, status: StatusCode) -> Response {
    let (nonce, cookie) = form_nonce(console, NONCE_COOKIE, "/login");
    let LoginState { error, notice, next } = state;
    let sso = console.users.provider_label().map(str::to_owned);
    let keys = console.sessions.key_sign_in() == KeySignIn::Allowed;
    match render(&LoginPage { nav: None, nonce, error, notice, next, sso, keys }) {
        Ok(page) => (status, [(header::SET_COOKIE, cookie)], page).into_response(),
        Err(error) => error_page(error, None),
    }
}

#[derive(Deserialize)]
pub struct SignInForm {
    credential: String,
    nonce: String,
    #[serde(default)]
    next: String,
}

pub async fn sign_in(
    State(console): State<Arc<Console>>,
    parts: Parts,
    axum::Form(form): axum::Form<SignInForm>,
) -> Response {
    if !nonce_matches(&parts, NONCE_COOKIE, &form.nonce) {
        return login_page(
            &console,
            LoginState::error("The form expired; sign in again.", &form.next),
            StatusCode::FORBIDDEN,
        );
    }
    match console.sessions.sign_in(&form.credential, &session::client(&parts)).await {
        Ok((id, signed_in)) => {
            let cookie = session::set_cookie(SESSION_COOKIE, &id, "/", console.secure_cookies, None);
            let next = session::local_next(&form.next);
            let to = match (signed_in.chooses_org() && signed_in.org.is_none(), next) {
                (true, "/") => "/org".to_owned(),
                (true, next) => format!("/org?{}", serde_urlencoded::to_string([("next", next)]).unwrap_or_default()),
                (false, next) => next.to_owned(),
            };
            ([(header::SET_COOKIE, cookie)], Redirect::to(&to)).into_response()
        }
        Err(error) => login_refusal(&console, error, &form.next),
    }
}

/// The sign-in page again, saying why a sign-in was refused (the server's
/// own failures get the error page).
pub fn login_refusal(console: &Console, error: Error, next: &str) -> Response {
    let (message, status) = match error {
        Error::Unauthenticated(message) => (message.to_owned(), StatusCode::UNAUTHORIZED),
        Error::PermissionDenied(message) => (message, StatusCode::FORBIDDEN),
        Error::LimitReached(message) => (message, StatusCode::TOO_MANY_REQUESTS),
        other => return error_page(other, None),
    };
    login_page(console, LoginState::error(message, next), status)
}

#[derive(Deserialize)]
pub struct Empty {}

pub async fn sign_out(State(console): State<Arc<Console>>, parts: Parts, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    if let Err(error) = console.sessions.sign_out(&signed.session, &session::client(&parts)).await {
        return error_page(error, Some(&signed.nav));
    }
    let cookie = session::set_cookie(SESSION_COOKIE, "", "/", console.secure_cookies, Some(0));
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// What the org picker is asked: where to go next, and a search of orgs.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct OrgQuery {
    next: String,
    search: String,
    page: String,
}

/// The org picker: the orgs (searched, a page at a time) for credentials
/// that may list them, and a box for an org id.
pub async fn org_form(State(console): State<Arc<Console>>, signed: Signed, Query(query): Query<OrgQuery>) -> Response {
    let nav = signed.nav("");
    let next = session::local_next(&query.next).to_owned();
    let result = async {
        let (orgs, more) = match console.orgs.list(&signed.ctx, &query.search, &page_request(&query.page)).await {
            Ok(page) => {
                let filters = [("next", next.as_str()), ("search", query.search.as_str())];
                let more = next_page(&filters, &page.next_page_token);
                let rows = page.items.into_iter().map(|view| OrgRow {
                    keys: view.holdings.keys,
                    endpoints: view.holdings.subscriptions,
                    id: view.org.id,
                    display_name: view.org.display_name,
                });
                (Some(rows.collect()), more)
            }
            Err(Error::PermissionDenied(_)) => (None, None),
            Err(other) => return Err(other),
        };
        render(&OrgPage { current: signed.org(), nav: Some(nav.clone()), next, search: query.search, orgs, more })
    };
    respond(&nav, result.await)
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct OrgForm {
    org: String,
    /// Where to go once it is chosen.
    next: String,
}

pub async fn choose_org(State(console): State<Arc<Console>>, post: SignedForm<OrgForm>) -> Response {
    let nav = post.signed.nav("");
    let chosen = console.sessions.choose_org(&post.signed.session, post.form.org.trim()).await;
    respond(&nav, chosen.and_then(|()| see_other(session::local_next(&post.form.next))))
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct NewOrgForm {
    org_id: String,
    display_name: String,
    /// Where to go once it is open.
    next: String,
}

/// Creates an org (a platform admin's act) and opens it.
pub async fn create_org(State(console): State<Arc<Console>>, post: SignedForm<NewOrgForm>) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("");
    let result = async {
        let org = form.org_id.trim();
        console.orgs.create(&signed.ctx, org, &form.display_name).await?;
        console.sessions.choose_org(&signed.session, org).await?;
        see_other(session::local_next(&form.next))
    };
    respond(&nav, result.await)
}

/// The double-submit cookie of a portal link's confirmation form.
const PORTAL_NONCE_COOKIE: &str = "kp_portal";

/// A portal link shows a confirmation: opening the link by GET changes nothing.
pub async fn confirm_portal(State(console): State<Arc<Console>>, Path(token): Path<String>) -> Response {
    let (nonce, cookie) = form_nonce(&console, PORTAL_NONCE_COOKIE, "/portal");
    match render(&PortalOpenPage { nav: None, action: format!("/portal/{token}"), nonce }) {
        Ok(page) => ([(header::SET_COOKIE, cookie)], page).into_response(),
        Err(error) => error_page(error, None),
    }
}

#[derive(Deserialize)]
pub struct PortalForm {
    nonce: String,
}

/// Uses the link: a portal session replaces the browser's session.
pub async fn open_portal(
    State(console): State<Arc<Console>>,
    parts: Parts,
    Path(token): Path<String>,
    axum::Form(form): axum::Form<PortalForm>,
) -> Response {
    if !nonce_matches(&parts, PORTAL_NONCE_COOKIE, &form.nonce) {
        let stale = Error::PermissionDenied("the form is stale or came from another site: open the link again".into());
        return error_page(stale, None);
    }
    match console.sessions.open_portal(&token, &session::client(&parts)).await {
        Ok(Some((id, _))) => {
            let cookie = session::set_cookie(SESSION_COOKIE, &id, "/", console.secure_cookies, None);
            ([(header::SET_COOKIE, cookie)], Redirect::to("/webhooks")).into_response()
        }
        Ok(None) => error_page(Error::NotFound("portal link (it may have expired or been used already)"), None),
        Err(error) => error_page(error, None),
    }
}
