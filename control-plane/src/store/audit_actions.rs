//! Every action the audit log records, and what kind of thing each is done
//! to: the compiler lists them, `ListAuditEvents` filters by their names,
//! and the table in docs/security.md is checked against [`AuditAction::ALL`].

/// What an audit row's target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetType {
    ApiKey,
    Identity,
    Role,
    Org,
    Connection,
    WebhookSubscription,
    Delivery,
    PortalLink,
    ConsoleSession,
    User,
    EventType,
}

impl TargetType {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetType::ApiKey => "api_key",
            TargetType::Identity => "identity",
            TargetType::Role => "role",
            TargetType::Org => "org",
            TargetType::Connection => "connection",
            TargetType::WebhookSubscription => "webhook_subscription",
            TargetType::Delivery => "delivery",
            TargetType::PortalLink => "portal_link",
            TargetType::ConsoleSession => "console_session",
            TargetType::User => "user",
            TargetType::EventType => "event_type",
        }
    }
}

/// An audited action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    ApiKeyCreated,
    ApiKeyUpdated,
    ApiKeyRotated,
    ApiKeyRevoked,
    ApiKeyDeleted,
    ApiKeyRevealed,
    ApiKeyExpired,
    ApiKeyCreditsRefilled,
    ApiKeyImported,
    ApiKeyHashUpgraded,
    IdentityCreated,
    IdentityUpdated,
    IdentityDeleted,
    IdentityCreditsRefilled,
    ApiKeyRolesSet,
    IdentityRolesSet,
    IdentityPermissionsSet,
    RoleCreated,
    RoleUpdated,
    RoleDeleted,
    OrgCreated,
    OrgRenamed,
    OrgDeleted,
    ConnectionCreated,
    ConnectionDeleted,
    ConnectionAccessTokenIssued,
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionDeleted,
    SubscriptionApproved,
    SecretRotated,
    EndpointDisabled,
    PortalLinkCreated,
    PortalOpened,
    DeliveryRetried,
    DeliveriesRecovered,
    TestEventSent,
    ConsoleSignedIn,
    ConsoleSignedOut,
    UserDisabled,
    UserEnabled,
    EventTypeCreated,
    EventTypeUpdated,
    EventTypeArchived,
    EventTypeRestored,
    CatalogPolicySet,
}

impl AuditAction {
    pub const ALL: [AuditAction; 46] = [
        AuditAction::ApiKeyCreated,
        AuditAction::ApiKeyUpdated,
        AuditAction::ApiKeyRotated,
        AuditAction::ApiKeyRevoked,
        AuditAction::ApiKeyDeleted,
        AuditAction::ApiKeyRevealed,
        AuditAction::ApiKeyExpired,
        AuditAction::ApiKeyCreditsRefilled,
        AuditAction::ApiKeyImported,
        AuditAction::ApiKeyHashUpgraded,
        AuditAction::IdentityCreated,
        AuditAction::IdentityUpdated,
        AuditAction::IdentityDeleted,
        AuditAction::IdentityCreditsRefilled,
        AuditAction::ApiKeyRolesSet,
        AuditAction::IdentityRolesSet,
        AuditAction::IdentityPermissionsSet,
        AuditAction::RoleCreated,
        AuditAction::RoleUpdated,
        AuditAction::RoleDeleted,
        AuditAction::OrgCreated,
        AuditAction::OrgRenamed,
        AuditAction::OrgDeleted,
        AuditAction::ConnectionCreated,
        AuditAction::ConnectionDeleted,
        AuditAction::ConnectionAccessTokenIssued,
        AuditAction::SubscriptionCreated,
        AuditAction::SubscriptionUpdated,
        AuditAction::SubscriptionDeleted,
        AuditAction::SubscriptionApproved,
        AuditAction::SecretRotated,
        AuditAction::EndpointDisabled,
        AuditAction::PortalLinkCreated,
        AuditAction::PortalOpened,
        AuditAction::DeliveryRetried,
        AuditAction::DeliveriesRecovered,
        AuditAction::TestEventSent,
        AuditAction::ConsoleSignedIn,
        AuditAction::ConsoleSignedOut,
        AuditAction::UserDisabled,
        AuditAction::UserEnabled,
        AuditAction::EventTypeCreated,
        AuditAction::EventTypeUpdated,
        AuditAction::EventTypeArchived,
        AuditAction::EventTypeRestored,
        AuditAction::CatalogPolicySet,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ApiKeyCreated => "api_key.created",
            AuditAction::ApiKeyUpdated => "api_key.updated",
            AuditAction::ApiKeyRotated => "api_key.rotated",
            AuditAction::ApiKeyRevoked => "api_key.revoked",
            AuditAction::ApiKeyDeleted => "api_key.deleted",
            AuditAction::ApiKeyRevealed => "api_key.revealed",
            AuditAction::ApiKeyExpired => "api_key.expired",
            AuditAction::ApiKeyCreditsRefilled => "api_key.credits_refilled",
            AuditAction::ApiKeyImported => "api_key.imported",
            AuditAction::ApiKeyHashUpgraded => "api_key.hash_upgraded",
            AuditAction::IdentityCreated => "identity.created",
            AuditAction::IdentityUpdated => "identity.updated",
            AuditAction::IdentityDeleted => "identity.deleted",
            AuditAction::IdentityCreditsRefilled => "identity.credits_refilled",
            AuditAction::ApiKeyRolesSet => "api_key.roles_set",
            AuditAction::IdentityRolesSet => "identity.roles_set",
            AuditAction::IdentityPermissionsSet => "identity.permissions_set",
            AuditAction::RoleCreated => "role.created",
            AuditAction::RoleUpdated => "role.updated",
            AuditAction::RoleDeleted => "role.deleted",
            AuditAction::OrgCreated => "org.created",
            AuditAction::OrgRenamed => "org.renamed",
            AuditAction::OrgDeleted => "org.deleted",
            AuditAction::ConnectionCreated => "connection.created",
            AuditAction::ConnectionDeleted => "connection.deleted",
            AuditAction::ConnectionAccessTokenIssued => "connection.access_token_issued",
            AuditAction::SubscriptionCreated => "webhook.subscription_created",
            AuditAction::SubscriptionUpdated => "webhook.subscription_updated",
            AuditAction::SubscriptionDeleted => "webhook.subscription_deleted",
            AuditAction::SubscriptionApproved => "webhook.subscription_approved",
            AuditAction::SecretRotated => "webhook.secret_rotated",
            AuditAction::EndpointDisabled => "webhook.endpoint_disabled",
            AuditAction::PortalLinkCreated => "webhook.portal_link_created",
            AuditAction::PortalOpened => "webhook.portal_opened",
            AuditAction::DeliveryRetried => "delivery.retried",
            AuditAction::DeliveriesRecovered => "deliveries.recovered",
            AuditAction::TestEventSent => "delivery.test_sent",
            AuditAction::ConsoleSignedIn => "console.signed_in",
            AuditAction::ConsoleSignedOut => "console.signed_out",
            AuditAction::UserDisabled => "user.disabled",
            AuditAction::UserEnabled => "user.enabled",
            AuditAction::EventTypeCreated => "event_type.created",
            AuditAction::EventTypeUpdated => "event_type.updated",
            AuditAction::EventTypeArchived => "event_type.archived",
            AuditAction::EventTypeRestored => "event_type.restored",
            AuditAction::CatalogPolicySet => "org.catalog_policy_set",
        }
    }

    /// What the action is done to.
    pub fn target(self) -> TargetType {
        match self {
            AuditAction::ApiKeyCreated
            | AuditAction::ApiKeyUpdated
            | AuditAction::ApiKeyRotated
            | AuditAction::ApiKeyRevoked
            | AuditAction::ApiKeyDeleted
            | AuditAction::ApiKeyRevealed
            | AuditAction::ApiKeyExpired
            | AuditAction::ApiKeyCreditsRefilled
            | AuditAction::ApiKeyImported
            | AuditAction::ApiKeyHashUpgraded
            | AuditAction::ApiKeyRolesSet => TargetType::ApiKey,
            AuditAction::IdentityCreated
            | AuditAction::IdentityUpdated
            | AuditAction::IdentityDeleted
            | AuditAction::IdentityCreditsRefilled
            | AuditAction::IdentityRolesSet
            | AuditAction::IdentityPermissionsSet => TargetType::Identity,
            AuditAction::RoleCreated | AuditAction::RoleUpdated | AuditAction::RoleDeleted => TargetType::Role,
            AuditAction::OrgCreated
            | AuditAction::OrgRenamed
            | AuditAction::OrgDeleted
            | AuditAction::CatalogPolicySet => TargetType::Org,
            AuditAction::ConnectionCreated
            | AuditAction::ConnectionDeleted
            | AuditAction::ConnectionAccessTokenIssued => TargetType::Connection,
            AuditAction::SubscriptionCreated
            | AuditAction::SubscriptionUpdated
            | AuditAction::SubscriptionDeleted
            | AuditAction::SubscriptionApproved
            | AuditAction::SecretRotated
            | AuditAction::EndpointDisabled
            | AuditAction::DeliveriesRecovered
            | AuditAction::TestEventSent => TargetType::WebhookSubscription,
            AuditAction::PortalLinkCreated => TargetType::PortalLink,
            AuditAction::DeliveryRetried => TargetType::Delivery,
            AuditAction::PortalOpened | AuditAction::ConsoleSignedIn | AuditAction::ConsoleSignedOut => {
                TargetType::ConsoleSession
            }
            AuditAction::UserDisabled | AuditAction::UserEnabled => TargetType::User,
            AuditAction::EventTypeCreated
            | AuditAction::EventTypeUpdated
            | AuditAction::EventTypeArchived
            | AuditAction::EventTypeRestored => TargetType::EventType,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_listed_in_the_readme() {
        let mut names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        let readme = include_str!("../../../docs/security.md");
        for name in &names {
            assert!(readme.contains(&format!("`{name}`")), "docs/security.md lists audit action {name}");
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditAction::ALL.len());
    }
}
