//! Webhook pages: the endpoint list and forms, an endpoint's page, the
//! event catalog, a delivery.

use askama::Template;
use serde::Deserialize;

use super::ChartView;
use crate::console::input::duration;
use crate::console::nav::Nav;
use crate::error::{Error, Result};
use crate::service::webhooks::endpoints::{DeliveryOptions, OptionsView};

pub struct SubscriptionRow {
    pub id: String,
    pub url: String,
    pub event_types: String,
    pub status: String,
    pub failing_since: String,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
pub struct WebhooksPage {
    pub nav: Option<Nav>,
    pub subscriptions: Vec<SubscriptionRow>,
    pub next: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct WebhookForm {
    pub url: String,
    /// Comma- or space-separated event types and patterns.
    pub event_types: String,
    pub description: String,
    pub rate_limit: String,
    /// Space-separated channels; empty for every channel.
    pub channels: String,
}

/// The delivery-options form of an endpoint's page. Values are write-only:
/// it starts empty and replaces what is set.
#[derive(Default, Deserialize)]
#[serde(default)]
pub struct DeliveryOptionsForm {
    /// One `Name: value` a line.
    pub headers: String,
    pub client_certificate_pem: String,
    pub client_key_pem: String,
    pub ca_bundle_pem: String,
    /// A duration such as `3s`; empty for the server's.
    pub timeout: String,
}

impl DeliveryOptionsForm {
    /// The options typed; a header line without `:` is refused by name.
    pub fn options(&self) -> Result<DeliveryOptions> {
        let mut headers = Vec::new();
        for (i, line) in self.headers.lines().map(str::trim).filter(|l| !l.is_empty()).enumerate() {
            let Some((name, value)) = line.split_once(':') else {
                return Err(Error::invalid(format!("update.delivery_options.headers[{i}]"), "write `Name: value`"));
            };
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(DeliveryOptions {
            headers,
            client_certificate_pem: self.client_certificate_pem.trim().to_owned(),
            client_key_pem: self.client_key_pem.trim().to_owned(),
            ca_bundle_pem: self.ca_bundle_pem.trim().to_owned(),
            timeout: duration("update.delivery_options.timeout", &self.timeout)?,
        })
    }
}

/// What an endpoint's page says of its delivery options: (what, value) lines.
pub fn options_lines(options: &OptionsView) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    if !options.header_names.is_empty() {
        lines.push(("Custom headers".into(), format!("{} (values hidden)", options.header_names.join(", "))));
    }
    if let Some(fingerprint) = &options.client_certificate_sha256 {
        lines.push(("Client certificate".into(), format!("SHA-256 {fingerprint}")));
    }
    if options.ca_certificates > 0 {
        lines.push((
            "Trusted CA".into(),
            format!("{} certificate(s) instead of the public roots", options.ca_certificates),
        ));
    }
    if let Some(timeout) = options.timeout {
        lines.push(("Timeout".into(), humantime::format_duration(timeout).to_string()));
    }
    lines
}

#[derive(Template)]
#[template(path = "webhook_new.html")]
pub struct NewWebhookPage {
    pub nav: Option<Nav>,
    pub form: WebhookForm,
    pub errors: Vec<(String, String)>,
    /// The catalog's event types (Keyplane's own first), suggested in the form.
    pub catalog: Vec<String>,
}

pub struct SubscriptionDetail {
    pub id: String,
    pub url: String,
    pub event_types: String,
    pub description: String,
    pub status: String,
    pub active: bool,
    pub pending_approval: bool,
    pub disabled_reason: String,
    pub rate_limit: String,
    /// The rate limit as the edit form takes it (empty: none).
    pub rate_limit_input: String,
    pub failing_since: String,
    pub created: String,
    /// Space-separated; empty for every channel.
    pub channels: String,
    /// Its delivery options, as [`options_lines`] says them (empty: none).
    pub options: Vec<(String, String)>,
    /// The legacy signature headers sent beside Standard Webhooks' (empty: none).
    pub legacy_signature: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DeliveryFilterForm {
    pub status: String,
    pub event_type: String,
    /// `YYYY-MM-DDTHH:MM` (UTC), as a datetime-local input sends it.
    pub since: String,
    pub until: String,
    pub page: String,
}

pub struct DeliveryRow {
    pub id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: String,
    pub last_status: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "webhook.html")]
pub struct WebhookPage {
    pub nav: Option<Nav>,
    pub subscription: SubscriptionDetail,
    pub stats: Option<ChartView>,
    pub deliveries: Vec<DeliveryRow>,
    pub filter: DeliveryFilterForm,
    pub next: Option<String>,
    pub notice: Option<String>,
    /// Catalog types with an example, which the endpoint can be sent.
    pub examples: Vec<String>,
}

#[derive(Template)]
#[template(path = "catalog.html")]
pub struct CatalogPage {
    pub nav: Option<Nav>,
    /// Types by group, Keyplane's own first.
    pub groups: Vec<(String, Vec<CatalogRow>)>,
    /// Whether the org publishes only cataloged types.
    pub required: bool,
}

/// An event type of the catalog, as the catalog page shows it.
pub struct CatalogRow {
    pub name: String,
    pub description: String,
    pub deprecated: bool,
    pub system: bool,
    /// "v2", or empty without a schema.
    pub version: String,
    /// The newest schema, indented.
    pub schema: String,
    /// The first example, indented.
    pub example: String,
}

pub struct AttemptRow {
    pub number: String,
    pub started: String,
    pub status: String,
    pub latency: String,
    pub error: String,
    pub excerpt: String,
}

#[derive(Template)]
#[template(path = "delivery.html")]
pub struct DeliveryPage {
    pub nav: Option<Nav>,
    pub id: String,
    pub subscription_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub finished: bool,
    /// Pending with no attempt yet: sending now; the page refreshes.
    pub sending: bool,
    pub next_attempt: String,
    pub created: String,
    /// The endpoint's URL.
    pub url: String,
    /// The request body every attempt sends (empty when the event is gone).
    pub body: String,
    /// Legacy signature headers sent too (`name: what`).
    pub legacy_headers: Vec<String>,
    pub attempts: Vec<AttemptRow>,
}
