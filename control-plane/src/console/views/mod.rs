//! What each page shows: one askama template a struct, with text already
//! formatted (askama escapes every value; only chart SVG, built by
//! `chart.rs` from escaped text, is marked safe).

pub mod limits;
pub mod roles;
pub mod webhooks;

use askama::Template;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::nav::Nav;
use crate::service::sessions::ShownOnce;
pub use webhooks::*;

/// A time as the console shows it.
pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional time, or a dash.
pub fn when_or_dash(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "—".to_owned(), when)
}

/// A chart and the numbers behind it (a table for screen readers).
pub struct ChartView {
    pub svg: String,
    pub caption: String,
    pub columns: Vec<String>,
    pub rows: Vec<(String, Vec<String>)>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub nav: Option<Nav>,
    pub status: u16,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub nav: Option<Nav>,
    pub nonce: String,
    pub error: Option<String>,
    /// Why the person is here again (their session ended).
    pub notice: Option<String>,
    /// Where to go once signed in.
    pub next: String,
    /// The OpenID provider's button label, when single sign-on is on.
    pub sso: Option<String>,
    /// Whether the form takes API keys and the root token.
    pub keys: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
pub struct UsersPage {
    pub nav: Option<Nav>,
    pub users: Vec<UserRow>,
}

/// A person on the users page.
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub name: String,
    /// "acme: keyplane:admin", one line per org.
    pub rights: Vec<String>,
    pub disabled: bool,
    pub last_sign_in: String,
}

#[derive(Template)]
#[template(path = "org.html")]
pub struct OrgPage {
    pub nav: Option<Nav>,
    pub current: String,
    /// Where to go once the org is chosen.
    pub next: String,
    /// The search typed.
    pub search: String,
    /// One page of orgs; `None` when the credential may not list them.
    pub orgs: Option<Vec<OrgRow>>,
    /// Query string of the next page.
    pub more: Option<String>,
}

/// An org in the org picker.
pub struct OrgRow {
    pub id: String,
    pub display_name: String,
    pub keys: u64,
    pub endpoints: u64,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub nav: Option<Nav>,
    pub usage: Option<ChartView>,
    /// The success rate and what it is a rate of.
    pub delivery_rate: Option<(String, String)>,
    /// (label, value, link).
    pub counts: Vec<(String, String, String)>,
    pub audit: Vec<AuditRow>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct KeyFilterForm {
    pub status: String,
    pub environment: String,
    pub prefix: String,
    pub page: String,
}

pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub environment: String,
    pub status: String,
    pub start: String,
    pub created: String,
    pub last_used: String,
    pub uses: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
pub struct KeysPage {
    pub nav: Option<Nav>,
    pub keys: Vec<KeyRow>,
    pub filter: KeyFilterForm,
    /// Query string of the next page.
    pub next: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewKeyForm {
    pub name: String,
    pub description: String,
    pub environment: String,
    /// Comma- or space-separated.
    pub scopes: String,
    /// `30d`, `12h`…; empty for no expiry.
    pub ttl: String,
    /// A JSON object, or empty.
    pub metadata: String,
    pub recoverable: Option<String>,
    #[serde(flatten)]
    pub limits: limits::NewLimitsForm,
}

#[derive(Template)]
#[template(path = "key_new.html")]
pub struct NewKeyPage {
    pub nav: Option<Nav>,
    pub form: NewKeyForm,
    pub errors: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "shown_once.html")]
pub struct ShownOncePage {
    pub nav: Option<Nav>,
    pub shown: ShownOnce,
}

pub struct KeyDetail {
    pub id: String,
    pub name: String,
    pub description: String,
    pub environment: String,
    pub status: String,
    pub active: bool,
    pub start: String,
    pub scopes: String,
    pub expires: String,
    pub limits: limits::LimitsView,
    pub metadata: String,
    pub recoverable: bool,
    pub created_by: String,
    pub created: String,
    pub updated: String,
    pub revoked: String,
    pub revocation_reason: String,
    pub rotated_from: String,
    pub last_used: String,
    pub uses: String,
    /// The form's current values: RFC 3339, JSON (empty for none).
    pub expires_input: String,
    pub metadata_input: String,
    /// The identity's id, or `none`.
    pub identity: String,
}

#[derive(Template)]
#[template(path = "key.html")]
pub struct KeyPage {
    pub nav: Option<Nav>,
    pub key: KeyDetail,
    pub permissions: roles::PermissionsView,
    pub usage: Option<ChartView>,
    pub granularity: String,
}

/// The confirmation a portal link shows before its one-time token is used
/// (a GET must not sign the browser in: link previews and cross-site
/// loads would use it up or swap the browser's session).
#[derive(Template)]
#[template(path = "portal_open.html")]
pub struct PortalOpenPage {
    pub nav: Option<Nav>,
    pub action: String,
    pub nonce: String,
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub struct ConfirmPage {
    pub nav: Option<Nav>,
    pub title: String,
    pub message: String,
    pub action: String,
    pub button: String,
    pub danger: bool,
    /// An input to fill in before confirming: (label, name, placeholder).
    pub input: Option<(String, String, String)>,
    pub back: String,
}

pub struct AuditRow {
    pub seq: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditFilterForm {
    pub action: String,
    pub actor: String,
    pub target: String,
    pub since: String,
    pub until: String,
    pub page: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
pub struct AuditPage {
    pub nav: Option<Nav>,
    pub events: Vec<AuditRow>,
    pub filter: AuditFilterForm,
    pub next: Option<String>,
    /// The result of "verify chain", when asked.
    pub chain: Option<(bool, String)>,
}

pub struct ConnectionRow {
    pub id: String,
    pub provider: String,
    pub account: String,
    pub scopes: String,
    pub expires: String,
}

#[derive(Template)]
#[template(path = "connections.html")]
pub struct ConnectionsPage {
    pub nav: Option<Nav>,
    pub connections: Vec<ConnectionRow>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "connection.html")]
pub struct ConnectionPage {
    pub nav: Option<Nav>,
    pub connection: ConnectionRow,
    pub refresh_token: bool,
    pub created: String,
    pub refreshed: String,
}

#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub nav: Option<Nav>,
    pub title: String,
    pub message: String,
    pub href: String,
    pub label: String,
}
