//! Signature schemes of receivers that predate Standard Webhooks: a hex or
//! base64 HMAC-SHA256 in a header of their choosing, over the body or
//! `timestamp.body`. Sent beside the Standard Webhooks headers, never
//! instead of them, so a receiver can move to the standard before the
//! subscription switches.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tonic_types::FieldViolation;

use super::WebhookSecret;
use crate::error::{Error, Result};

/// Longest signature prefix (e.g. `sha256=`).
const MAX_PREFIX_CHARS: usize = 32;

/// How a subscription's deliveries are signed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SignatureScheme {
    /// The Standard Webhooks headers only.
    #[default]
    StandardWebhooks,
    /// Those, and a legacy HMAC header.
    HmacHeader(HmacHeader),
}

/// A legacy HMAC-SHA256 header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HmacHeader {
    /// Header carrying the signature, lowercase.
    pub header: String,
    pub encoding: Encoding,
    pub signed: SignedContent,
    /// Header carrying the Unix timestamp besides `webhook-timestamp`, lowercase.
    pub timestamp_header: Option<String>,
    /// Text before the signature, e.g. `sha256=`.
    pub prefix: String,
}

/// How the MAC is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Hex,
    Base64,
}

/// What the MAC covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignedContent {
    /// The request body.
    Body,
    /// `<unix seconds>.<body>`.
    TimestampDotBody,
}

/// Headers Keyplane sets itself or that proxies own.
fn reserved(name: &str) -> bool {
    name.starts_with("webhook-")
        || ["content-type", "content-length", "host", "user-agent", "transfer-encoding", "connection"].contains(&name)
}

impl HmacHeader {
    /// Checks and canonicalises a header scheme; violations name fields
    /// under `field` (e.g. `signature_scheme.hmac_header`), all at once.
    pub fn new(
        field: &str,
        header: &str,
        encoding: Encoding,
        signed: SignedContent,
        timestamp_header: &str,
        prefix: &str,
    ) -> Result<Self> {
        let mut violations = Vec::new();
        let mut name = |part: &str, value: &str, required: bool| -> Option<String> {
            let value = value.trim().to_ascii_lowercase();
            let why = if value.is_empty() {
                required.then_some("is required")
            } else if http::HeaderName::from_bytes(value.as_bytes()).is_err() {
                Some("is not an HTTP header name")
            } else if reserved(&value) {
                Some("is a header Keyplane or the connection sets")
            } else {
                None
            };
            if let Some(why) = why {
                violations.push(FieldViolation::new(format!("{field}.{part}"), why));
            }
            (!value.is_empty()).then_some(value)
        };
        let header = name("header", header, true).unwrap_or_default();
        let timestamp_header = name("timestamp_header", timestamp_header, false);
        if timestamp_header.as_deref() == Some(header.as_str()) {
            violations.push(FieldViolation::new(format!("{field}.timestamp_header"), "must differ from header"));
        }
        if prefix.chars().count() > MAX_PREFIX_CHARS || !prefix.chars().all(|c| c.is_ascii_graphic()) {
            let why = format!("must be at most {MAX_PREFIX_CHARS} visible ASCII characters");
            violations.push(FieldViolation::new(format!("{field}.prefix"), why));
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        Ok(Self { header, encoding, signed, timestamp_header, prefix: prefix.to_owned() })
    }

    /// The headers to send beside the standard ones. One signature, made
    /// with the oldest secret still signing (`secrets` oldest first): a
    /// legacy verifier compares against one value, and keeps the secret it
    /// has until a rotation's grace ends.
    pub fn headers(&self, secrets: &[WebhookSecret], timestamp: i64, body: &[u8]) -> Vec<(String, String)> {
        let Some(secret) = secrets.first() else { return Vec::new() };
        let timestamp = timestamp.to_string();
        let mac = match self.signed {
            SignedContent::Body => secret.mac(&[body]),
            SignedContent::TimestampDotBody => secret.mac(&[timestamp.as_bytes(), b".", body]),
        };
        let encoded = match self.encoding {
            Encoding::Hex => crate::crypto::hex(&mac),
            Encoding::Base64 => BASE64.encode(mac),
        };
        let mut headers = vec![(self.header.clone(), format!("{}{encoded}", self.prefix))];
        if let Some(name) = &self.timestamp_header {
            headers.push((name.clone(), timestamp));
        }
        headers
    }
}

impl SignatureScheme {
    /// The scheme in words, for the console: `header: what it holds`.
    pub fn describe(&self) -> Vec<String> {
        match self {
            Self::StandardWebhooks => Vec::new(),
            Self::HmacHeader(h) => {
                let encoding = match h.encoding {
                    Encoding::Hex => "hex",
                    Encoding::Base64 => "base64",
                };
                let signed = match h.signed {
                    SignedContent::Body => "body",
                    SignedContent::TimestampDotBody => "timestamp.body",
                };
                let mut lines = vec![format!("{}: {}<{encoding} HMAC-SHA256 of {signed}>", h.header, h.prefix)];
                if let Some(name) = &h.timestamp_header {
                    lines.push(format!("{name}: <the attempt's start, Unix seconds>"));
                }
                lines
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(encoding: Encoding, signed: SignedContent, timestamp_header: &str, prefix: &str) -> HmacHeader {
        HmacHeader::new("s", "X-Webhook-Signature", encoding, signed, timestamp_header, prefix).unwrap()
    }

    #[test]
    fn legacy_headers_match_a_plain_hmac() {
        let secret = WebhookSecret::import("secret", "0123456789abcdef0123").unwrap();
        // Python: hmac.new(b"0123456789abcdef0123", b'{"a":1}', hashlib.sha256).hexdigest()
        let expected = "0640ceab86823c77b6533e71ecc59b1b4895ad62630997b009a670094160767e";
        let hex =
            scheme(Encoding::Hex, SignedContent::Body, "", "").headers(std::slice::from_ref(&secret), 1, br#"{"a":1}"#);
        assert_eq!(hex, [("x-webhook-signature".to_owned(), expected.to_owned())]);

        let github =
            scheme(Encoding::Hex, SignedContent::Body, "", "sha256=").headers(std::slice::from_ref(&secret), 1, b"x");
        assert_eq!(github[0].1, format!("sha256={}", crate::crypto::hex(&secret.mac(&[b"x"]))));

        let stamped = scheme(Encoding::Base64, SignedContent::TimestampDotBody, "X-Webhook-Timestamp", "");
        let headers = stamped.headers(&[secret.clone(), WebhookSecret::generate()], 1700000000, b"{}");
        assert_eq!(headers[0].1, BASE64.encode(secret.mac(&[b"1700000000.{}"])), "the oldest secret signs");
        assert_eq!(headers[1], ("x-webhook-timestamp".to_owned(), "1700000000".to_owned()));
    }

    #[test]
    fn bad_schemes_name_every_field() {
        let error = HmacHeader::new("s", "webhook-signature", Encoding::Hex, SignedContent::Body, "bad header", "a b")
            .unwrap_err();
        let Error::InvalidArgument(violations) = error else { panic!("{error}") };
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["s.header", "s.timestamp_header", "s.prefix"]);
        assert!(HmacHeader::new("s", "", Encoding::Hex, SignedContent::Body, "", "").is_err());
        assert!(HmacHeader::new("s", "x-sig", Encoding::Hex, SignedContent::Body, "X-Sig", "").is_err());
    }

    #[test]
    fn schemes_round_trip_through_json() {
        let legacy = SignatureScheme::HmacHeader(scheme(Encoding::Base64, SignedContent::TimestampDotBody, "x-t", ""));
        for scheme in [SignatureScheme::StandardWebhooks, legacy] {
            let json = serde_json::to_value(&scheme).unwrap();
            assert_eq!(serde_json::from_value::<SignatureScheme>(json).unwrap(), scheme);
        }
    }
}
