//! The page frame's view of the caller: who it is, the org, and which
//! actions to draw (the service refuses the others anyway).

use crate::service::auth::RequestContext;
use crate::service::authz::Scope;

/// What the signed-in caller may do, for showing only the actions it may take.
#[derive(Clone, Copy, Debug, Default)]
pub struct Can {
    pub keys_read: bool,
    pub keys_write: bool,
    pub keys_reveal: bool,
    pub webhooks_read: bool,
    pub webhooks_write: bool,
    pub deliveries_read: bool,
    pub deliveries_write: bool,
    pub audit_read: bool,
    pub connections_read: bool,
    pub connections_write: bool,
    pub usage_read: bool,
    pub admin: bool,
}

impl Can {
    pub fn of(ctx: &RequestContext) -> Self {
        Self {
            keys_read: ctx.has_scope(Scope::KeysRead),
            keys_write: ctx.has_scope(Scope::KeysWrite),
            keys_reveal: ctx.has_scope(Scope::KeysReveal),
            webhooks_read: ctx.has_scope(Scope::WebhooksRead),
            webhooks_write: ctx.has_scope(Scope::WebhooksWrite),
            deliveries_read: ctx.has_scope(Scope::DeliveriesRead),
            deliveries_write: ctx.has_scope(Scope::DeliveriesWrite),
            audit_read: ctx.has_scope(Scope::AuditRead),
            connections_read: ctx.has_scope(Scope::ConnectionsRead),
            connections_write: ctx.has_scope(Scope::ConnectionsWrite),
            usage_read: ctx.has_scope(Scope::UsageRead),
            admin: ctx.has_scope(Scope::Admin),
        }
    }
}

/// What the page frame shows about the caller.
#[derive(Clone, Debug)]
pub struct Nav {
    pub who: String,
    pub org: String,
    pub can: Can,
    pub root: bool,
    pub portal: bool,
    pub platform: bool,
    /// Whether the caller may act in another org (platform credentials, people).
    pub chooses_org: bool,
    pub csrf: String,
    /// The section the page belongs to (for the navigation).
    pub section: &'static str,
}
