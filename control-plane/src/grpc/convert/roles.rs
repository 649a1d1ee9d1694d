//! Roles and effective permissions ↔ protobuf.

use keyplane_proto::admin::v1 as pb;

use super::time_to_proto;
use crate::error::Result;
use crate::service::records::{Effective, RoleChanges, RoleRef, RoleView};

pub fn role_ref_to_proto(role: &RoleRef) -> pb::RoleRef {
    pb::RoleRef { id: role.id.clone(), name: role.name.clone() }
}

pub fn role_to_proto(view: &RoleView) -> pb::Role {
    let role = &view.role;
    pb::Role {
        id: role.id.clone(),
        org_id: role.org_id.clone(),
        name: role.name.clone(),
        description: role.description.clone(),
        permissions: role.permission_list(),
        holders: view.holders,
        created_at: Some(time_to_proto(role.created_at)),
        updated_at: Some(time_to_proto(role.updated_at)),
    }
}

/// The changes an UpdateRole request names.
pub fn role_changes(request: pb::UpdateRoleRequest) -> Result<RoleChanges> {
    let update = request.update.unwrap_or_default();
    let mut changes = RoleChanges::default();
    super::read_mask(request.update_mask.as_ref(), |path| {
        match path {
            "name" => changes.name = Some(update.name.clone()),
            "description" => changes.description = Some(update.description.clone()),
            "permissions" => changes.permissions = Some(update.permissions.clone()),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(changes)
}

pub fn effective_to_proto(effective: &Effective) -> pb::GetEffectivePermissionsResponse {
    pb::GetEffectivePermissionsResponse {
        permissions: effective
            .permissions
            .iter()
            .map(|(name, sources)| pb::EffectivePermission {
                name: name.clone(),
                sources: sources.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        roles: effective.roles.iter().map(role_ref_to_proto).collect(),
    }
}
