//! The event-type grammar: what an event type and a subscription's pattern
//! may look like, and which events a pattern matches.

use crate::service::validate::Violations;

/// Most event types on one subscription.
const MAX_EVENT_TYPES: usize = 100;
/// Longest event type.
const MAX_EVENT_TYPE_LEN: usize = 128;

/// Event-type syntax: segments of `[a-z0-9_]` joined by dots, at least two.
pub fn check_event_type(value: &str) -> Result<(), String> {
    check(value, false)
}

/// Pattern syntax: an event type that may also use `*` as a whole segment,
/// or just `*`.
pub fn check_pattern(value: &str) -> Result<(), String> {
    check(value, true)
}

fn check(value: &str, pattern: bool) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_EVENT_TYPE_LEN {
        return Err(format!("must be 1 to {MAX_EVENT_TYPE_LEN} characters"));
    }
    if pattern && value == "*" {
        return Ok(());
    }
    let segments: Vec<&str> = value.split('.').collect();
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let ok =
        segments.len() >= 2 && plain(segments[0]) && segments[1..].iter().all(|s| plain(s) || (pattern && *s == "*"));
    if ok {
        Ok(())
    } else if pattern {
        Err(format!(
            "{value:?} is not an event type: use lowercase segments of [a-z0-9_] joined by dots (`order.created`), `*` for a whole segment (`order.*`), or `*`"
        ))
    } else {
        Err(format!(
            "{value:?} is not an event type: use lowercase segments of [a-z0-9_] joined by dots, e.g. `order.created`"
        ))
    }
}

/// Checks a subscription's list of patterns, naming each bad one.
pub fn check_patterns(violations: &mut Violations, field: &str, patterns: &[String]) {
    if patterns.is_empty() {
        violations.add(field, "name at least one event type or pattern (`*` for every event)");
    } else if patterns.len() > MAX_EVENT_TYPES {
        violations.add(field, format!("at most {MAX_EVENT_TYPES} event types"));
    }
    for (i, pattern) in patterns.iter().enumerate() {
        if let Err(why) = check_pattern(pattern) {
            violations.add(format!("{field}[{i}]"), why);
        }
    }
}

/// Whether `event_type` matches `pattern`: `*` matches everything, a `*`
/// segment matches one segment, and a trailing `*` any number (≥ 1).
pub fn matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let event: Vec<&str> = event_type.split('.').collect();
    let trailing_wildcard = pattern.last() == Some(&"*");
    let lengths_fit = if trailing_wildcard { event.len() >= pattern.len() } else { event.len() == pattern.len() };
    lengths_fit && pattern.iter().zip(&event).all(|(p, e)| *p == "*" || p == e)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn event_type_checks_never_panic(text in ".*") {
            let _ = check_event_type(&text);
            let _ = check_pattern(&text);
            let _ = matches(&text, "order.created");
            let _ = matches("order.*", &text);
        }

        #[test]
        fn valid_event_types_match_themselves_and_their_wildcards(
            segments in proptest::collection::vec("[a-z0-9_]{1,8}", 2..6)
        ) {
            let event_type = segments.join(".");
            proptest::prop_assert!(check_event_type(&event_type).is_ok());
            proptest::prop_assert!(matches(&event_type, &event_type));
            proptest::prop_assert!(matches("*", &event_type));
            let trailing = format!("{}.*", segments[0]);
            proptest::prop_assert!(check_pattern(&trailing).is_ok());
            proptest::prop_assert!(matches(&trailing, &event_type));
            let other = format!("{}x.*", segments[0]);
            proptest::prop_assert!(!matches(&other, &event_type));
        }
    }

    #[test]
    fn event_type_syntax() {
        assert!(check_event_type("order.created").is_ok());
        assert!(check_event_type("api_key.v2.created").is_ok());
        assert!(check_event_type("order").is_err());
        assert!(check_event_type("order.*").is_err());
        assert!(check_event_type("Order.created").is_err());
        assert!(check_event_type("order..created").is_err());
        assert!(check_pattern("order.*").is_ok());
        assert!(check_pattern("*").is_ok());
        assert!(check_pattern("*.created").is_err());
        assert!(check_pattern("order.cre*").is_err());
    }

    #[test]
    fn patterns_match_whole_segments() {
        assert!(matches("*", "order.created"));
        assert!(matches("order.*", "order.created"));
        assert!(matches("order.*", "order.item.added"));
        assert!(!matches("order.*", "orders.created"));
        assert!(!matches("order.*", "order"));
        assert!(matches("order.*.added", "order.item.added"));
        assert!(!matches("order.*.added", "order.item.removed"));
        assert!(matches("order.created", "order.created"));
        assert!(!matches("order.created", "order.created.late"));
    }
}
