//! Input rules shared by the services, reported as field violations.

use serde_json::Value;
use tonic_types::FieldViolation;

use crate::error::{Error, Result};

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

    /// The INVALID_ARGUMENT of what was recorded (for a caller that has
    /// just recorded a violation it cannot go on without).
    pub fn into_error(self) -> Error {
        Error::InvalidArgument(self.0)
    }

    /// Whether nothing is wrong so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when nothing was recorded.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(Error::InvalidArgument(self.0)) }
    }

    /// Checks a text that must say something, of at most `max` characters.
    pub fn required_text(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.add(field, "must not be empty");
        } else {
            self.optional_text(field, value, max);
        }
    }

    /// Checks a text of at most `max` characters (empty is fine).
    pub fn optional_text(&mut self, field: &str, value: &str, max: usize) {
        let chars = value.chars().count();
        if chars > max {
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

/// Grants (of a role or an identity): each a permission name, `prefix.*`
/// or `*` (`keyplane_proto::permissions::check_grant`), never a `keyplane:`
/// admin scope, at most `max`; sorted and without repeats when they pass.
impl Violations {
    pub fn grants(&mut self, field: &str, grants: &mut Vec<String>, max: usize) {
        if grants.len() > max {
            self.add(field, format!("at most {max}"));
            return;
        }
        for (i, grant) in grants.iter().enumerate() {
            if let Err(problem) = keyplane_proto::permissions::check_grant(grant) {
                self.add(format!("{field}[{i}]"), problem);
            } else if grant.starts_with("keyplane:") {
                self.add(format!("{field}[{i}]"), "keyplane: scopes are granted to keys only, not by roles");
            }
        }
        grants.sort_unstable();
        grants.dedup();
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
        fn scope_checks_never_panic(text in ".*") {
            let _ = check_scope(&text);
        }
    }
}
