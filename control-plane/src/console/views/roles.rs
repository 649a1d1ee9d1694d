//! The roles pages' templates, a key's permissions on its page, and the
//! identity page (an identity's roles and permissions).

use askama::Template;

use crate::console::nav::Nav;

/// One role in a listing.
pub struct RoleRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: String,
    pub holders: u64,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "roles.html")]
pub struct RolesPage {
    pub nav: Option<Nav>,
    pub roles: Vec<RoleRow>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "role.html")]
pub struct RolePage {
    pub nav: Option<Nav>,
    pub role: RoleRow,
    /// Keys and identities holding it (the first page of them).
    pub holders: Vec<String>,
}

/// A key's (or identity's) roles and what it holds, for its page
/// (`templates/permissions.html`).
pub struct PermissionsView {
    pub roles: String,
    /// (permission, where it comes from).
    pub rows: Vec<(String, String)>,
    /// Where the form setting its roles posts.
    pub set_roles: String,
}

#[derive(Template)]
#[template(path = "identity.html")]
pub struct IdentityPage {
    pub nav: Option<Nav>,
    pub id: String,
    pub external_id: String,
    pub limits: super::limits::LimitsView,
    /// Its own permissions, space-separated (for the form).
    pub own: String,
    pub permissions: PermissionsView,
}
