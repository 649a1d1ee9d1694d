//! Form fields as people type them: lists, times, durations, numbers and
//! JSON, each read into a value or a violation naming the field.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::error::{Error, Result};

/// Scopes or event types typed as one list (commas or spaces).
pub fn words(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\t']).map(str::trim).filter(|w| !w.is_empty()).map(str::to_owned).collect()
}

/// A `datetime-local` value (`YYYY-MM-DDTHH:MM`, taken as UTC), or none when empty.
pub fn local_time(field: &str, text: &str) -> Result<Option<DateTime<Utc>>> {
    if text.is_empty() {
        return Ok(None);
    }
    let parsed = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .map_err(|_| Error::invalid(field, "must be a date and time, YYYY-MM-DDTHH:MM (UTC)"))?;
    Ok(Some(parsed.and_utc()))
}

/// A duration typed as `30d`, `12h`, `90s`.
pub fn duration(field: &str, text: &str) -> Result<Option<Duration>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    humantime::parse_duration(text.trim())
        .map(Some)
        .map_err(|_| Error::invalid(field, "must be a duration such as 30d, 12h or 15m"))
}

/// When something ends, as typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    At(DateTime<Utc>),
    /// This long from now.
    After(Duration),
}

/// When something ends, typed either way: a duration from now (`30d`,
/// `12h`) or an RFC 3339 time (`2027-01-31T00:00:00Z`); none when empty.
pub fn ends(field: &str, text: &str) -> Result<Option<Ends>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(Ends::At(at.with_timezone(&Utc))));
    }
    humantime::parse_duration(text).map(|after| Some(Ends::After(after))).map_err(|_| {
        Error::invalid(field, "must be a duration from now such as 30d or 12h, or a time such as 2027-01-31T00:00:00Z")
    })
}

/// A whole number, e.g. a count of credits.
pub fn whole_number(field: &str, text: &str) -> Result<u64> {
    text.trim().parse().map_err(|_| Error::invalid(field, "must be a whole number"))
}

/// A JSON value, or none when empty.
pub fn json(field: &str, text: &str) -> Result<Option<serde_json::Value>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text).map(Some).map_err(|e| Error::invalid(field, format!("is not JSON: {e}")))
}
