//! Why a verification fails, as metrics, logs and usage analytics count it.

use keyplane_proto::check::Denied;
use keyplane_proto::usage::Outcome;

/// Why a token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not a token of this format, or a wrong checksum.
    Malformed,
    /// No such key in the caller's reach.
    Unknown,
    /// The secret does not match.
    BadSecret,
    /// The key was revoked.
    Revoked,
    /// The check decision shared with the sidecar refused the key
    /// (expired, other environment, outside its networks, missing scope).
    Denied(Denied),
    /// Refused without hashing: too many wrong secrets for this key id
    /// recently, or for all keys together.
    Throttled,
    /// Fewer credits are left than the use costs.
    CreditsExhausted,
}

impl Failure {
    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::Unknown => "unknown",
            Failure::BadSecret => "bad_secret",
            Failure::Revoked => "revoked",
            Failure::Denied(denied) => denied.as_str(),
            Failure::Throttled => "throttled",
            Failure::CreditsExhausted => "credits_exhausted",
        }
    }

    /// How a verification that failed counts in usage analytics.
    pub fn outcome(self) -> Outcome {
        match self {
            Failure::Denied(denied) => denied.outcome(),
            Failure::CreditsExhausted => Outcome::RateLimited,
            Failure::Malformed | Failure::Unknown | Failure::BadSecret | Failure::Revoked | Failure::Throttled => {
                Outcome::Unauthorized
            }
        }
    }
}
