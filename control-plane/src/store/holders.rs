//! [`HolderId`]: a key or an identity — what holds limits, credits and
//! roles — named by id where the id comes in from another layer (a
//! sidecar's lease, `SetRoles`, a console page), told apart there once.

use std::fmt;

use super::identities;

/// A key's id (`key_…`, or an imported key's) or an identity's (`idn_…`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HolderId {
    Key(String),
    Identity(String),
}

impl HolderId {
    /// What `id` names, by its prefix: an identity's, or else a key's (a
    /// lookup then finds it in the org or answers "not found").
    pub fn parse(id: &str) -> Self {
        if id.starts_with(identities::ID_PREFIX) {
            HolderId::Identity(id.to_owned())
        } else {
            HolderId::Key(id.to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            HolderId::Key(id) | HolderId::Identity(id) => id,
        }
    }

    /// What it is, in messages ("api key not found").
    pub fn kind_name(&self) -> &'static str {
        match self {
            HolderId::Key(_) => "api key",
            HolderId::Identity(_) => "identity",
        }
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn told_apart_by_prefix() {
        assert_eq!(HolderId::parse("idn_01"), HolderId::Identity("idn_01".into()));
        assert_eq!(HolderId::parse("key_01"), HolderId::Key("key_01".into()));
        assert_eq!(HolderId::parse("legacy-7").kind_name(), "api key");
        assert_eq!(HolderId::parse("idn_01").to_string(), "idn_01");
    }
}
