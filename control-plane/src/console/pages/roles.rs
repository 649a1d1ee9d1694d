//! Roles (docs/api.md "Roles and permissions"): the list with a create form, one
//! role with its holders and an edit form, deletion (which takes the role
//! from its holders), and a key's roles and effective permissions on its
//! page.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{next_page, page_request, render, respond, see_other};
use crate::console::Console;
use crate::console::input::words;
use crate::console::pages::signin::Empty;
use crate::console::session::{Signed, SignedForm};
use crate::console::views::limits::LimitsView;
use crate::console::views::roles::{IdentityPage, PermissionsView, RolePage, RoleRow, RolesPage};
use crate::console::views::{ConfirmPage, when_or_dash};
use crate::error::Result;
use crate::service::RequestContext;
use crate::service::identities::IdentityRef;
use crate::service::records::{Effective, HasLimits, HolderId, NewRole, RoleChanges, RoleLookup, RoleView};

fn row(view: &RoleView) -> RoleRow {
    RoleRow {
        id: view.role.id.clone(),
        name: view.role.name.clone(),
        description: view.role.description.clone(),
        permissions: view.role.permission_list().join(" "),
        holders: view.holders,
        updated: when_or_dash(Some(view.role.updated_at)),
    }
}

fn permissions_view(effective: &Effective, set_roles: String) -> PermissionsView {
    let names: Vec<&str> = effective.roles.iter().map(|role| role.name.as_str()).collect();
    let rows = effective
        .permissions
        .iter()
        .map(|(name, sources)| (name.clone(), sources.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")))
        .collect();
    PermissionsView { roles: names.join(" "), rows, set_roles }
}

/// What the key page shows of key `id`'s permissions.
pub async fn of_key(console: &Console, ctx: &RequestContext, org: &str, id: &str) -> Result<PermissionsView> {
    Ok(permissions_view(
        &console.roles.effective(ctx, org, &HolderId::Key(id.to_owned())).await?,
        format!("/keys/{id}/roles"),
    ))
}

#[derive(Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    page: String,
}

pub async fn list(State(console): State<Arc<Console>>, signed: Signed, Query(query): Query<PageQuery>) -> Response {
    let nav = signed.nav("roles");
    let result = async {
        let page = console.roles.list(&signed.ctx, &signed.org(), &page_request(&query.page)).await?;
        let next = next_page(&[], &page.next_page_token);
        render(&RolesPage { nav: Some(nav.clone()), roles: page.items.iter().map(row).collect(), next })
    };
    respond(&nav, result.await)
}

#[derive(Deserialize)]
pub struct RoleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    /// Space- or comma-separated.
    #[serde(default)]
    permissions: String,
}

pub async fn create(State(console): State<Arc<Console>>, post: SignedForm<RoleForm>) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("roles");
    let result = async {
        let new = NewRole {
            name: form.name.trim().to_owned(),
            description: form.description,
            permissions: words(&form.permissions),
        };
        let role = console.roles.create(&signed.ctx, &signed.org(), new).await?;
        see_other(&format!("/roles/{}", role.role.id))
    };
    respond(&nav, result.await)
}

pub async fn show(State(console): State<Arc<Console>>, signed: Signed, Path(id): Path<String>) -> Response {
    let nav = signed.nav("roles");
    let result = async {
        let view = console.roles.get(&signed.ctx, &signed.org(), RoleLookup::Id(&id)).await?;
        let holders = console.roles.holders(&signed.ctx, &signed.org(), &id).await?;
        render(&RolePage { nav: Some(nav.clone()), role: row(&view), holders })
    };
    respond(&nav, result.await)
}

pub async fn update(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<RoleForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("roles");
    let result = async {
        let changes = RoleChanges {
            name: Some(form.name.trim().to_owned()),
            description: Some(form.description),
            permissions: Some(words(&form.permissions)),
        };
        console.roles.update(&signed.ctx, &signed.org(), &id, changes).await?;
        see_other(&format!("/roles/{id}"))
    };
    respond(&nav, result.await)
}

pub async fn confirm_delete(State(console): State<Arc<Console>>, signed: Signed, Path(id): Path<String>) -> Response {
    let nav = signed.nav("roles");
    let result = async {
        let view = console.roles.get(&signed.ctx, &signed.org(), RoleLookup::Id(&id)).await?;
        render(&ConfirmPage {
            nav: Some(nav.clone()),
            title: format!("Delete role {}?", view.role.name),
            message: format!(
                "The role is taken from the {} keys and identities holding it; sidecars stop granting its \
                 permissions at once.",
                view.holders
            ),
            action: format!("/roles/{id}/delete"),
            button: "Delete".into(),
            danger: true,
            input: None,
            back: format!("/roles/{id}"),
        })
    };
    respond(&nav, result.await)
}

pub async fn delete(State(console): State<Arc<Console>>, Path(id): Path<String>, post: SignedForm<Empty>) -> Response {
    let signed = post.signed;
    let nav = signed.nav("roles");
    let result = async {
        console.roles.delete(&signed.ctx, &signed.org(), &id, true).await?;
        see_other("/roles")
    };
    respond(&nav, result.await)
}

#[derive(Deserialize)]
pub struct HolderRolesForm {
    /// Role names, space- or comma-separated; empty takes every role away.
    #[serde(default)]
    roles: String,
}

/// Sets the roles of key `id` (from its page).
pub async fn set_key_roles(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<HolderRolesForm>,
) -> Response {
    set_holder_roles(&console, post, "keys", &format!("/keys/{id}"), &HolderId::Key(id)).await
}

/// Sets the roles of identity `id` (from its page).
pub async fn set_identity_roles(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<HolderRolesForm>,
) -> Response {
    let back = format!("/identities/{id}");
    set_holder_roles(&console, post, "roles", &back, &HolderId::Identity(id)).await
}

async fn set_holder_roles(
    console: &Console,
    post: SignedForm<HolderRolesForm>,
    section: &'static str,
    back: &str,
    holder: &HolderId,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav(section);
    let result = async {
        console.roles.set_roles(&signed.ctx, &signed.org(), holder, &words(&form.roles)).await?;
        see_other(back)
    };
    respond(&nav, result.await)
}

/// An identity: its limits, roles, own permissions and what its keys hold through it.
pub async fn show_identity(State(console): State<Arc<Console>>, signed: Signed, Path(id): Path<String>) -> Response {
    let nav = signed.nav("roles");
    let result = async {
        let identity = console.identities.get(&signed.ctx, &signed.org(), IdentityRef::Id(&id)).await?;
        let effective = console.roles.effective(&signed.ctx, &signed.org(), &HolderId::Identity(id.clone())).await?;
        render(&IdentityPage {
            nav: Some(nav.clone()),
            id: identity.id.clone(),
            external_id: identity.external_id.clone(),
            limits: LimitsView::of(&identity.limits()),
            own: identity.permission_list().join(" "),
            permissions: permissions_view(&effective, format!("/identities/{id}/roles")),
        })
    };
    respond(&nav, result.await)
}

#[derive(Deserialize)]
pub struct IdentityPermissionsForm {
    /// Space- or comma-separated; empty removes them.
    #[serde(default)]
    permissions: String,
}

/// Sets identity `id`'s own permissions (from its page).
pub async fn set_identity_permissions(
    State(console): State<Arc<Console>>,
    Path(id): Path<String>,
    post: SignedForm<IdentityPermissionsForm>,
) -> Response {
    let (signed, form) = (post.signed, post.form);
    let nav = signed.nav("roles");
    let result = async {
        console.roles.set_identity_permissions(&signed.ctx, &signed.org(), &id, words(&form.permissions)).await?;
        see_other(&format!("/identities/{id}"))
    };
    respond(&nav, result.await)
}
