//! Security headers on every response, and the embedded static assets.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, Response, header};
use axum::middleware::Next;
use axum::response::IntoResponse;

use super::Console;

const STYLESHEET: &str = include_str!("../../assets/console.css");
const SCRIPT: &str = include_str!("../../assets/console.js");

/// The policy of every page that is not a framed portal page.
pub const DEFAULT_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The policy of a portal page that `ancestors` may frame.
pub fn portal_csp(ancestors: &[String]) -> String {
    if ancestors.is_empty() {
        return DEFAULT_CSP.to_owned();
    }
    let base = DEFAULT_CSP.trim_end_matches("frame-ancestors 'none'");
    format!("{base}frame-ancestors {}", ancestors.join(" "))
}

/// Where the signed-in session of a request leaves the origins that may
/// frame its page (portal sessions only); read when the response leaves.
#[derive(Clone, Default)]
pub struct FrameAncestors(pub Arc<Mutex<Vec<String>>>);

/// Adds the security headers: a CSP with no inline script, nosniff, no
/// referrer, frame protection unless a portal session's link lists frame
/// ancestors, and `no-store` on every page (they show an org's data, and
/// some a secret once); HSTS when the console is reached over TLS.
pub async fn security_headers(
    State(console): State<Arc<Console>>,
    mut request: Request<Body>,
    next: Next,
) -> Response<Body> {
    let is_asset = request.uri().path().starts_with("/static/");
    let ancestors = FrameAncestors::default();
    request.extensions_mut().insert(ancestors.clone());
    let mut response = next.run(request).await;
    let ancestors = ancestors.0.lock().map(|list| list.clone()).unwrap_or_default();
    let headers = response.headers_mut();
    let csp = HeaderValue::from_str(&portal_csp(&ancestors)).unwrap_or(HeaderValue::from_static(DEFAULT_CSP));
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    let framable = !ancestors.is_empty();
    if !framable {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if console.secure_cookies {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    let cache = if is_asset { "public, max-age=3600" } else { "no-store" };
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

pub async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET)
}

pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT)
}
