//! From a request to a signed-in caller: the session cookie, the portal's
//! boundary, the org a platform credential acts in, and the CSRF token every
//! state-changing form must carry.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use super::error::error_page;
use super::headers::FrameAncestors;
use super::nav::{Can, Nav};
use super::{Console, Peer};
use crate::error::Error;
use crate::service::auth::{Actor, RequestContext};
use crate::service::sessions::{Client, Session};

pub const SESSION_COOKIE: &str = "kp_session";
/// Largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// A signed-in request.
pub struct Signed {
    pub session: Session,
    pub ctx: RequestContext,
    pub nav: Nav,
}

impl Signed {
    /// The org the session acts in ("" lets an org key's own org apply).
    pub fn org(&self) -> String {
        self.session.org.clone().unwrap_or_default()
    }

    /// The frame for a page of `section`.
    pub fn nav(&self, section: &'static str) -> Nav {
        Nav { section, ..self.nav.clone() }
    }
}

/// Where a request comes from.
pub fn client(parts: &Parts) -> Client {
    let peer = parts.extensions.get::<Peer>().and_then(|peer| peer.0);
    let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    Client {
        ip: peer.map(|addr| addr.ip()),
        address: peer.map(|addr| addr.to_string()).unwrap_or_default(),
        user_agent: user_agent.chars().take(512).collect(),
        request_id: crate::crypto::new_id("req_"),
    }
}

/// The value of cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, `path`; Secure when asked.
pub fn set_cookie(name: &str, value: &str, path: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut text = format!("{name}={value}; HttpOnly; SameSite=Strict; Path={path}");
    if let Some(seconds) = max_age {
        text.push_str(&format!("; Max-Age={seconds}"));
    }
    if secure {
        text.push_str("; Secure");
    }
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
}

/// Whether a portal session may open `path`: its org's webhooks and
/// deliveries, signing out, and the assets.
fn portal_may_open(path: &str) -> bool {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    (under("/webhooks") && path != "/webhooks/portal-link")
        || under("/deliveries")
        || path == "/logout"
        || path == "/shown"
        || under("/static")
}

fn who(actor: &Actor) -> String {
    match actor {
        Actor::Root => "root token".into(),
        Actor::Operator => "operator".into(),
        Actor::Portal { org_id, .. } => format!("webhook portal of {org_id}"),
        Actor::ApiKey { key_id, .. } => key_id.clone(),
        Actor::User { email, .. } => email.clone(),
    }
}

/// A redirect to `to` (the sign-in or the org page) that brings the
/// person back to the page they asked for (a GET's path and query; a form
/// post's page is not known) and, when their session `ended`, says so.
fn come_back(parts: &Parts, to: &str, ended: bool) -> Response {
    let mut query: Vec<(&str, &str)> = Vec::new();
    if ended {
        query.push(("ended", "1"));
    }
    let asked = parts.uri.path_and_query().map_or("/", |asked| asked.as_str());
    if parts.method == axum::http::Method::GET && asked != "/" {
        query.push(("next", asked));
    }
    let query = serde_urlencoded::to_string(&query).unwrap_or_default();
    Redirect::to(&if query.is_empty() { to.to_owned() } else { format!("{to}?{query}") }).into_response()
}

/// `next` if it is a path of this console to return to, else `/` (never
/// another site: `//host` and `/\host` are refused).
pub fn local_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control)
        && !next.starts_with("/login");
    if local { next } else { "/" }
}

impl FromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Response> {
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else { return Err(come_back(parts, "/login", false)) };
        let session = match console.sessions.resume(&id, &client(parts)).await {
            Ok(Some(session)) => session,
            Ok(None) => return Err(come_back(parts, "/login", true)),
            Err(error) => return Err(error_page(error, None)),
        };
        let path = parts.uri.path();
        if session.portal && !portal_may_open(path) {
            return Err(error_page(
                Error::PermissionDenied("the webhook portal shows this org's webhooks only".into()),
                None,
            ));
        }
        let org_free = matches!(path, "/org" | "/orgs" | "/logout" | "/users") || path.starts_with("/users/");
        if session.chooses_org() && session.org.is_none() && !org_free {
            return Err(come_back(parts, "/org", false));
        }
        if session.portal
            && let Some(slot) = parts.extensions.get::<FrameAncestors>()
            && let Ok(mut ancestors) = slot.0.lock()
        {
            ancestors.clone_from(&session.frame_ancestors);
        }
        let ctx = session.context(&client(parts));
        let nav = Nav {
            who: who(&session.actor),
            org: session.org.clone().unwrap_or_default(),
            can: Can::of(&ctx),
            root: session.is_root(),
            portal: session.portal,
            platform: session.is_platform(),
            chooses_org: session.chooses_org(),
            csrf: session.csrf.clone(),
            section: "",
        };
        Ok(Signed { session, ctx, nav })
    }
}

/// A signed-in form post whose CSRF token matches the session.
pub struct SignedForm<T> {
    pub signed: Signed,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<Arc<Console>> for SignedForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request<Body>, console: &Arc<Console>) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = Signed::from_request_parts(&mut parts, console).await?;
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| error_page(Error::invalid("form", "is too large"), Some(&signed.nav)))?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
        let token = pairs.into_iter().find(|(key, _)| key == "csrf").map(|(_, value)| value);
        let matches = token.is_some_and(|token| bool::from(token.as_bytes().ct_eq(signed.session.csrf.as_bytes())));
        if !matches {
            let stale = Error::PermissionDenied("the form is stale or came from another site: reload the page".into());
            return Err(error_page(stale, Some(&signed.nav)));
        }
        let form = serde_urlencoded::from_bytes::<T>(&bytes)
            .map_err(|e| error_page(Error::invalid("form", e.to_string()), Some(&signed.nav)))?;
        Ok(SignedForm { signed, form })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        for local in ["/keys", "/keys?status=active&prefix=a", "/webhooks/sub_1"] {
            assert_eq!(local_next(local), local);
        }
        for foreign in
            ["", "keys", "//evil.example", "/\\evil.example", "https://evil.example", "/x\r\nSet-Cookie: a", "/login"]
        {
            assert_eq!(local_next(foreign), "/", "{foreign:?}");
        }
    }

    #[test]
    fn the_portal_reaches_webhooks_only() {
        for open in ["/webhooks", "/webhooks/sub_1", "/webhooks/sub_1/rotate", "/deliveries/dlv_1", "/logout", "/shown"]
        {
            assert!(portal_may_open(open), "{open}");
        }
        for closed in ["/", "/keys", "/audit", "/connections", "/org", "/webhooksx", "/webhooks/portal-link"] {
            assert!(!portal_may_open(closed), "{closed}");
        }
    }
}
