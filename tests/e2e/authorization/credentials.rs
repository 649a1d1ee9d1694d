//! The credentials every matrix is run with, created by the root token.

use keyplane_tests::TestControlPlane;

/// Every `keyplane:` scope, each held alone by one org key in a column.
pub const SCOPES: [&str; 15] = [
    "keyplane:keys:read",
    "keyplane:keys:write",
    "keyplane:keys:reveal",
    "keyplane:webhooks:read",
    "keyplane:webhooks:write",
    "keyplane:events:publish",
    "keyplane:deliveries:read",
    "keyplane:deliveries:write",
    "keyplane:audit:read",
    "keyplane:connections:read",
    "keyplane:connections:write",
    "keyplane:connections:reveal",
    "keyplane:usage:read",
    "keyplane:sidecar",
    "keyplane:admin",
];

/// A column: its name in the table and its token (`None`: the root token).
pub struct Credential {
    pub name: String,
    pub token: String,
}

/// Root, a platform admin, a sidecar's platform credential, an admin of
/// another org, and one key of `org` per scope.
pub async fn every_credential(plane: &TestControlPlane, org: &str, other_org: &str) -> Vec<Credential> {
    let mut credentials = vec![Credential { name: "root".into(), token: plane.root_token.clone() }];
    for (name, in_org, scope) in [
        ("platform admin", "keyplane", "keyplane:admin"),
        ("sidecar", "keyplane", "keyplane:sidecar"),
        ("other org admin", other_org, "keyplane:admin"),
    ] {
        let (_, token) = plane.create_key(in_org, &[scope]).await;
        credentials.push(Credential { name: name.into(), token });
    }
    for scope in SCOPES {
        let (_, token) = plane.create_key(org, &[scope]).await;
        credentials.push(Credential { name: scope.trim_start_matches("keyplane:").into(), token });
    }
    credentials
}
