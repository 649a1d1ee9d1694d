//! Input rules shared by the services, reported as field violations.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use tonic_types::FieldViolation;

use crate::error::{Error, Result};

/// Default page size.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Largest serialized metadata object.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Largest number of scopes on a key.
pub const MAX_SCOPES: usize = 64;
/// Longest scope string.
pub const MAX_SCOPE_LEN: usize = 128;

/// Collects field violations and turns them into one INVALID_ARGUMENT.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records that `field` is wrong.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Records `result`'s violations, if it is an INVALID_ARGUMENT, and returns its value.
    pub fn absorb<T>(&mut self, result: Result<T>) -> Result<Option<T>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(Error::InvalidArgument(mut violations)) => {
                self.0.append(&mut violations);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Ok when nothing was recorded.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(self.0)) }
    }

    /// Checks a required text of 1 to `max` characters.
    pub fn text(&mut self, field: &str, value: &str, max: usize, required: bool) {
        let chars = value.chars().count();
        if required && value.trim().is_empty() {
            self.add(field, "must not be empty");
        } else if chars > max {
            self.add(field, format!("must be at most {max} characters (got {chars})"));
        } else if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        }
    }

    /// Checks a list of scopes.
    pub fn scopes(&mut self, field: &str, scopes: &[String]) {
        if scopes.len() > MAX_SCOPES {
            self.add(field, format!("at most {MAX_SCOPES} scopes"));
        }
        for (i, scope) in scopes.iter().enumerate() {
            if let Err(why) = check_scope(scope) {
                self.add(format!("{field}[{i}]"), why);
            }
        }
    }

    /// Checks that metadata is a JSON object of at most 16 KiB.
    pub fn metadata(&mut self, field: &str, metadata: &Value) {
        if !metadata.is_object() {
            self.add(field, "must be a JSON object");
        } else if metadata.to_string().len() > MAX_METADATA_BYTES {
            self.add(field, format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"));
        }
    }
}

/// Scope syntax: segments of `[A-Za-z0-9_.-]` (and `*`) separated by `:`;
/// `keyplane:` scopes must be ones Keyplane knows.
pub fn check_scope(scope: &str) -> std::result::Result<(), String> {
    if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
        return Err(format!("must be 1 to {MAX_SCOPE_LEN} characters"));
    }
    let segment_ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-*".contains(&b));
    if !scope.split(':').all(segment_ok) {
        return Err(format!("{scope:?} is not a scope: use letters, digits, '_', '.', '-', '*' separated by ':'"));
    }
    if scope.starts_with("keyplane:") && super::Scope::parse(scope).is_none() {
        return Err(format!("{scope:?} is not a Keyplane scope"));
    }
    Ok(())
}

/// Resolves a requested page size (0 means the default).
pub fn page_size(field: &str, requested: u32) -> Result<u64> {
    match requested {
        0 => Ok(u64::from(DEFAULT_PAGE_SIZE)),
        1..=MAX_PAGE_SIZE => Ok(u64::from(requested)),
        _ => Err(Error::invalid(field, format!("must be between 1 and {MAX_PAGE_SIZE}"))),
    }
}

/// Encodes a keyset position as an opaque page token for `kind` of listing.
pub fn encode_page_token(kind: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{position}"))
}

/// Decodes a page token produced by [`encode_page_token`] for the same `kind`.
pub fn decode_page_token(field: &str, kind: &str, token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::invalid(field, "is not a page token returned by this listing");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let position = text.strip_prefix(kind).and_then(|rest| rest.strip_prefix(':')).ok_or_else(invalid)?;
    Ok(Some(position.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert!(check_scope("orders:read").is_ok());
        assert!(check_scope("orders.v2:*").is_ok());
        assert!(check_scope("keyplane:keys:read").is_ok());
        assert!(check_scope("keyplane:keys:destroy").is_err());
        assert!(check_scope("a b").is_err());
        assert!(check_scope("a::b").is_err());
        assert!(check_scope("").is_err());
    }

    proptest::proptest! {
        #[test]
        fn page_tokens_round_trip(kind in "[a-z_]{1,12}", position in ".*") {
            let token = encode_page_token(&kind, &position);
            let decoded = decode_page_token("page_token", &kind, &token).expect("own tokens decode");
            proptest::prop_assert_eq!(decoded, Some(position));
        }

        #[test]
        fn decoding_any_text_never_panics(text in ".*") {
            let _ = decode_page_token("page_token", "keys", &text);
        }

        #[test]
        fn scope_checks_never_panic(text in ".*") {
            let _ = check_scope(&text);
        }
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let token = encode_page_token("keys", "key_abc");
        assert_eq!(decode_page_token("page_token", "keys", &token).unwrap().as_deref(), Some("key_abc"));
        assert!(decode_page_token("page_token", "audit", &token).is_err());
        assert!(decode_page_token("page_token", "keys", "!!!").is_err());
        assert_eq!(decode_page_token("page_token", "keys", "").unwrap(), None);
    }
}
