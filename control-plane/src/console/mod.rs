//! The web console (ARCHITECTURE.md, "The console"): server-rendered HTML
//! over the same `service/` layer and the same authorization as the gRPC
//! API, on its own listener. Askama templates (`control-plane/templates/`)
//! are compiled into the binary, as are the stylesheet and the one small
//! script (copy buttons only: every page works without JavaScript).
//!
//! A person signs in with the OpenID provider (`service/users.rs`), or a
//! browser with the root token or a Keyplane API key, and gets a
//! server-side session (`service/sessions.rs`); every form carries the
//! session's CSRF token; every response carries the security headers
//! (`headers.rs`). Portal sessions reach only their org's webhooks.

mod chart;
mod error;
mod headers;
mod input;
mod nav;
mod pages;
mod session;
mod views;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use hyper_util::service::TowerToHyperService;
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;

use crate::background::Background;
use crate::service::webhooks::{EventCatalog, PortalLinks};
use crate::service::{
    AuditService, ConnectionService, DeliveryService, IdentityService, KeyService, OrgService, RoleService,
    SessionService, UsageService, UserService, WebhookService,
};
use crate::tls::Incoming;

/// What the console's pages call.
pub struct Console {
    pub keys: Arc<KeyService>,
    pub webhooks: Arc<WebhookService>,
    pub catalog: Arc<EventCatalog>,
    pub deliveries: Arc<DeliveryService>,
    pub audit: Arc<AuditService>,
    pub connections: Arc<ConnectionService>,
    pub roles: Arc<RoleService>,
    pub orgs: Arc<OrgService>,
    pub identities: Arc<IdentityService>,
    pub usage: Arc<UsageService>,
    pub portal: Arc<PortalLinks>,
    pub sessions: Arc<SessionService>,
    pub users: Arc<UserService>,
    /// Mark cookies `Secure` and send `Strict-Transport-Security` (always
    /// when served over TLS; behind a TLS proxy when configured).
    pub secure_cookies: bool,
}

/// The peer of a console connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<std::net::SocketAddr>);

/// Every route of the console.
pub fn router(console: Arc<Console>) -> Router {
    use pages::{
        audit, catalog, connections, deliveries, endpoint, keys, overview, roles, shown, signin, users, webhooks,
    };
    Router::new()
        .route("/", get(overview::show))
        .route("/login", get(signin::form).post(signin::sign_in))
        .route("/login/oidc", get(users::begin_sign_in))
        .route("/login/oidc/callback", get(users::finish_sign_in))
        .route("/logout", post(signin::sign_out))
        .route("/users", get(users::list))
        .route("/users/{id}/disable", post(users::disable))
        .route("/users/{id}/enable", post(users::enable))
        .route("/org", get(signin::org_form).post(signin::choose_org))
        .route("/orgs", post(signin::create_org))
        .route("/portal/{token}", get(signin::confirm_portal).post(signin::open_portal))
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/new", get(keys::new_form))
        .route("/keys/{id}", get(keys::show))
        .route("/keys/{id}/update", post(keys::update))
        .route("/keys/{id}/rotate", get(keys::confirm_rotate).post(keys::rotate))
        .route("/keys/{id}/revoke", get(keys::confirm_revoke).post(keys::revoke))
        .route("/keys/{id}/delete", get(keys::confirm_delete).post(keys::delete))
        .route("/keys/{id}/reveal", post(keys::reveal))
        .route("/keys/{id}/roles", post(roles::set_key_roles))
        .route("/identities/{id}", get(roles::show_identity))
        .route("/identities/{id}/roles", post(roles::set_identity_roles))
        .route("/identities/{id}/permissions", post(roles::set_identity_permissions))
        .route("/roles", get(roles::list).post(roles::create))
        .route("/roles/{id}", get(roles::show))
        .route("/roles/{id}/update", post(roles::update))
        .route("/roles/{id}/delete", get(roles::confirm_delete).post(roles::delete))
        .route("/webhooks", get(webhooks::list).post(webhooks::create))
        .route("/webhooks/new", get(webhooks::new_form))
        .route("/webhooks/portal-link", post(webhooks::portal_link))
        .route("/webhooks/catalog", get(catalog::list))
        .route("/webhooks/catalog/policy", post(catalog::set_policy))
        .route("/webhooks/{id}", get(endpoint::show))
        .route("/webhooks/{id}/update", post(webhooks::update))
        .route("/webhooks/{id}/options", post(webhooks::set_options))
        .route("/webhooks/{id}/enable", post(webhooks::enable))
        .route("/webhooks/{id}/disable", post(webhooks::disable))
        .route("/webhooks/{id}/approve", post(webhooks::approve))
        .route("/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/webhooks/{id}/standard-signatures", post(webhooks::standard_signatures))
        .route("/webhooks/{id}/test", post(webhooks::send_test))
        .route("/webhooks/{id}/recover", post(webhooks::recover))
        .route("/webhooks/{id}/delete", get(webhooks::confirm_delete).post(webhooks::delete))
        .route("/deliveries/{id}", get(deliveries::show))
        .route("/deliveries/{id}/retry", post(deliveries::retry))
        .route("/shown", get(shown::page))
        .route("/audit", get(audit::list))
        .route("/audit/verify", get(audit::verify))
        .route("/connections", get(connections::list))
        .route("/connections/{id}", get(connections::show))
        .route("/connections/{id}/delete", get(connections::confirm_delete).post(connections::delete))
        .route("/static/console.css", get(headers::stylesheet))
        .route("/static/console.js", get(headers::script))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn_with_state(console.clone(), headers::security_headers))
        .with_state(console)
}

/// Serves `router` on the `incoming` connections until `stop`.
pub async fn serve(mut incoming: Incoming, router: Router, background: Background) {
    let stop = background.stop.clone();
    loop {
        let connection = tokio::select! {
            () = stop.cancelled() => return,
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => {
                    tracing::warn!(%error, "console accept failed");
                    continue;
                }
                None => return,
            },
        };
        let peer = Peer(connection.connect_info().remote_addr());
        let service = router.clone().layer(axum::Extension(peer));
        background.serve_connection(connection, TowerToHyperService::new(service));
    }
}
