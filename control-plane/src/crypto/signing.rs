//! Standard Webhooks signatures (ARCHITECTURE.md, "A webhook delivery"): `v1,<base64 HMAC-SHA256 of
//! "id.timestamp.body">` with secrets written `whsec_<base64>`; during a
//! rotation every unexpired secret signs and the signatures are space-separated.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

const PREFIX: &str = "whsec_";
/// Bytes of a generated secret.
const SECRET_BYTES: usize = 24;

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
    /// Webhooks libraries); 16 to 64 key bytes.
    pub fn parse(text: &str) -> Result<Self> {
        let encoded = text.strip_prefix(PREFIX).unwrap_or(text);
        let bytes = BASE64.decode(encoded).map_err(|_| Error::invalid("secret", "is not whsec_<base64>"))?;
        if !(16..=64).contains(&bytes.len()) {
            return Err(Error::invalid("secret", "must hold 16 to 64 bytes"));
        }
        Ok(Self(bytes))
    }

    /// The `whsec_…` form (shown to the subscriber once).
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", BASE64.encode(&self.0))
    }

    /// `v1,<signature>` of one message.
    pub fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
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
}
