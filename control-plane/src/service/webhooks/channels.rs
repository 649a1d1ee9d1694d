//! Channels: a second, free-form axis beside the event type (a customer,
//! a project, a region). A publication names up to [`MAX_CHANNELS`]; a
//! subscription that names channels receives only events published to one
//! of them, and one that names none receives events of every channel and
//! of none (Svix's model).

use crate::service::validate::Violations;

/// Most channels on a publication or a subscription.
pub const MAX_CHANNELS: usize = 10;
/// Longest channel name.
const MAX_CHANNEL_LEN: usize = 128;

/// Checks a list of channels, naming each bad one.
pub fn check_channels(violations: &mut Violations, field: &str, channels: &[String]) {
    if channels.len() > MAX_CHANNELS {
        violations.add(field, format!("at most {MAX_CHANNELS} channels"));
    }
    for (i, channel) in channels.iter().enumerate() {
        let ok = (1..=MAX_CHANNEL_LEN).contains(&channel.len())
            && channel.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            violations.add(format!("{field}[{i}]"), format!("must be 1 to {MAX_CHANNEL_LEN} of [A-Za-z0-9._-]"));
        } else if channels[..i].contains(channel) {
            violations.add(format!("{field}[{i}]"), format!("{channel:?} is named twice"));
        }
    }
}

/// Whether a subscription listening to `wanted` (empty: every channel)
/// receives an event published to `published`.
pub fn listens(wanted: &[String], published: &[String]) -> bool {
    wanted.is_empty() || wanted.iter().any(|channel| published.contains(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_subscription_without_channels_gets_everything() {
        assert!(listens(&[], &[]));
        assert!(listens(&[], &strings(&["eu"])));
        assert!(listens(&strings(&["eu", "us"]), &strings(&["us"])));
        assert!(!listens(&strings(&["eu"]), &[]));
        assert!(!listens(&strings(&["eu"]), &strings(&["us"])));
    }

    #[test]
    fn channel_grammar() {
        let mut violations = Violations::default();
        check_channels(&mut violations, "channels", &strings(&["project-1.eu_west", "ok"]));
        assert!(violations.is_empty());
        check_channels(&mut violations, "channels", &strings(&["", "a b", "ok", "ok"]));
        let text = format!("{violations:?}");
        for field in ["channels[0]", "channels[1]", "channels[3]"] {
            assert!(text.contains(field), "{text}");
        }
        assert!(!text.contains("channels[2]"), "{text}");
    }
}
