//! What a key or an identity holds: its own permissions (a key's scopes,
//! an identity's list), its roles', and for a key its identity's own and
//! roles'. One place computes it, for checks (`verify`) and for people
//! (`GetEffectivePermissions`, the console).

use std::collections::BTreeMap;
use std::fmt;

use keyplane_proto::permissions::Held;
use sea_orm::ConnectionTrait;

use crate::error::Result;
use crate::store::{api_keys, identities, roles};

/// A role a key or an identity holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRef {
    /// `rol_…`.
    pub id: String,
    pub name: String,
}

/// Where a permission comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// One of the key's scopes.
    Scope,
    /// A role the key (or identity) holds itself.
    Role(String),
    /// The key's identity's own permissions.
    Identity,
    /// A role of the key's identity.
    IdentityRole(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Scope => f.write_str("scope"),
            Source::Role(name) => write!(f, "role:{name}"),
            Source::Identity => f.write_str("identity"),
            Source::IdentityRole(name) => write!(f, "identity role:{name}"),
        }
    }
}

/// Everything a key or an identity holds, and why.
#[derive(Clone, Debug, Default)]
pub struct Effective {
    /// Permission (or wildcard) → its sources, sorted by permission.
    pub permissions: BTreeMap<String, Vec<Source>>,
    /// Roles held, directly or through the key's identity, by name.
    pub roles: Vec<RoleRef>,
}

impl Effective {
    fn add(&mut self, permissions: impl IntoIterator<Item = String>, source: Source) {
        for permission in permissions {
            let sources = self.permissions.entry(permission).or_default();
            if !sources.contains(&source) {
                sources.push(source.clone());
            }
        }
    }

    /// The permissions, sorted.
    pub fn names(&self) -> Vec<String> {
        self.permissions.keys().cloned().collect()
    }

    /// The permissions as a set a query is evaluated against.
    pub fn held(&self) -> Held {
        Held::new(self.permissions.keys().cloned())
    }
}

/// What `key` (with its `identity`, if any) holds, reading its roles in one
/// query when it or its identity may hold any (`holds_roles`), in none otherwise.
pub async fn of_key(
    db: &impl ConnectionTrait,
    key: &api_keys::Model,
    identity: Option<&identities::Model>,
) -> Result<Effective> {
    let mut holders = Vec::with_capacity(2);
    if key.holds_roles {
        holders.push(key.id.as_str());
    }
    holders.extend(identity.filter(|identity| identity.holds_roles).map(|identity| identity.id.as_str()));
    let held = if holders.is_empty() { Vec::new() } else { roles::held_by(db, &key.org_id, &holders).await? };
    let mut effective = Effective::default();
    effective.add(key.scope_list(), Source::Scope);
    if let Some(identity) = identity {
        effective.add(identity.permission_list(), Source::Identity);
    }
    add_roles(&mut effective, held, |holder, name| {
        if holder == key.id { Source::Role(name.to_owned()) } else { Source::IdentityRole(name.to_owned()) }
    });
    Ok(effective)
}

/// What `identity` holds itself (every key of it holds this too).
pub async fn of_identity(db: &impl ConnectionTrait, identity: &identities::Model) -> Result<Effective> {
    let held = match identity.holds_roles {
        true => roles::held_by(db, &identity.org_id, &[identity.id.as_str()]).await?,
        false => Vec::new(),
    };
    let mut effective = Effective::default();
    effective.add(identity.permission_list(), Source::Identity);
    add_roles(&mut effective, held, |_, name| Source::Role(name.to_owned()));
    Ok(effective)
}

fn add_roles(effective: &mut Effective, mut held: Vec<(String, roles::Model)>, source: impl Fn(&str, &str) -> Source) {
    held.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    for (holder, role) in held {
        effective.add(role.permission_list(), source(&holder, &role.name));
        if !effective.roles.iter().any(|known| known.id == role.id) {
            effective.roles.push(RoleRef { id: role.id, name: role.name });
        }
    }
}
