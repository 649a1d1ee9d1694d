//! Standard Webhooks signatures (ARCHITECTURE.md, "A webhook delivery"): `v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">` with secrets written `whsec_<base64>`; during a
//! rotation every unexpired secret signs and the signatures are space-separated.
//! A subscription may also carry a legacy HMAC header ([`legacy`]) for
//! receivers written before they met Standard Webhooks.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

pub mod legacy;

const PREFIX: &str = "whsec_";
/// Bytes of a generated secret.
const SECRET_BYTES: usize = 24;
/// Fewest key bytes: a shorter secret can be guessed offline from one
/// signed delivery.
const MIN_KEY_BYTES: usize = 16;
/// Most key bytes (imported secrets can be long text).
const MAX_KEY_BYTES: usize = 256;

/// A webhook signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        Self(super::random_bytes::<SECRET_BYTES>().to_vec())
    }

    /// Parses `whsec_<base64>` (the prefix is optional, as in the Standard
    /// Webhooks libraries); 16 to 256 key bytes.
    pub fn parse(text: &str) -> Result<Self> {
        let encoded = text.strip_prefix(PREFIX).unwrap_or(text);
        let bytes = BASE64.decode(encoded).map_err(|_| Error::invalid("secret", "is not whsec_<base64>"))?;
        Self::from_key("secret", bytes)
    }

    /// A secret brought from another system: `whsec_<base64>`, or any other
    /// text, whose UTF-8 bytes are the HMAC key (as in a receiver's
    /// `hmac.new(SECRET.encode(), …)`). Errors name `field` and never quote it.
    pub fn import(field: &str, text: &str) -> Result<Self> {
        if let Some(encoded) = text.strip_prefix(PREFIX) {
            let bytes = BASE64
                .decode(encoded)
                .map_err(|_| Error::invalid(field, "starts with whsec_ but is not whsec_<base64>"))?;
            return Self::from_key(field, bytes);
        }
        Self::from_key(field, text.as_bytes().to_vec())
    }

    fn from_key(field: &str, bytes: Vec<u8>) -> Result<Self> {
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&bytes.len()) {
            let why = format!("must hold {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes (shorter ones can be guessed)");
            return Err(Error::invalid(field, why));
        }
        Ok(Self(bytes))
    }

    /// The `whsec_…` form (shown to the subscriber once).
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", BASE64.encode(&self.0))
    }

    /// `v1,<signature>` of one message.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mac = self.mac(&[message_id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
        format!("v1,{}", BASE64.encode(mac))
    }

    /// HMAC-SHA256 of the concatenated `parts`.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(secrets: &[WebhookSecret], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().map(|secret| secret.sign(message_id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's test vectors.
    #[test]
    fn spec_vector_a() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn spec_vector_b() {
        let secret = WebhookSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn rotation_signs_with_every_secret_and_secrets_stay_hidden() {
        let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
        let header = signature_header(&[old.clone(), new.clone()], "msg_1", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts, [old.sign("msg_1", 1, b"{}"), new.sign("msg_1", 1, b"{}")]);
        assert_eq!(WebhookSecret::parse(&new.expose()).unwrap(), new);
        assert_eq!(format!("{new:?}"), "WebhookSecret(..)");
        assert!(WebhookSecret::parse("whsec_!!").is_err());
        assert!(WebhookSecret::parse("whsec_AAAA").is_err(), "too short");
    }

    #[test]
    fn imported_secrets_are_whsec_or_raw_text() {
        let raw = WebhookSecret::import("secret", "a-legacy-secret-of-some-length").unwrap();
        assert_eq!(raw.0, b"a-legacy-secret-of-some-length");
        let generated = WebhookSecret::generate();
        assert_eq!(WebhookSecret::import("secret", &generated.expose()).unwrap(), generated);
        let short = WebhookSecret::import("update.secret", "s3cr3t").unwrap_err().to_string();
        assert!(short.contains("update.secret") && !short.contains("s3cr3t"), "{short}");
        assert!(WebhookSecret::import("secret", "whsec_!!!!").is_err());
    }
}
