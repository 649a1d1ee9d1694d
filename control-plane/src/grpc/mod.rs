//! Thin gRPC adapters, one per proto service: authenticate, convert, call the
//! service layer, convert back. Errors map to `Status` in `error.rs` only.

pub mod api_keys;
pub mod audit;
pub mod connections;
pub mod convert;
pub mod deliveries;
pub mod event_types;
pub mod events;
pub mod identities;
pub mod key_sync;
pub mod orgs;
pub mod roles;
pub mod usage;
pub mod webhooks;

use tonic::Request;

use crate::error::Result;
use crate::service::auth::Channel;
use crate::service::authz::{Action, Target};
use crate::service::{Authenticator, RequestContext};

/// Builds the request context of an admin service call: authenticates the
/// bearer token, spends one request of the credential's budget, and records
/// request id, peer address and user agent for the audit log.
pub async fn request_context<T>(auth: &Authenticator, request: &Request<T>) -> Result<RequestContext> {
    let ctx = authenticated_context(auth, request).await?;
    auth.admit(&ctx.actor)?;
    Ok(ctx)
}

/// [`request_context`], already allowed `action` in the org the request
/// names: for the handlers that convert a request before the service
/// decides on its exact target, so a caller who may not gets
/// PERMISSION_DENIED, not a lesson in the request's form.
pub async fn allowed_context<T>(
    auth: &Authenticator,
    request: &Request<T>,
    action: Action,
    org_id: impl FnOnce(&T) -> &str,
) -> Result<RequestContext> {
    let ctx = request_context(auth, request).await?;
    ctx.authorize(action, Target::Org(org_id(request.get_ref())))?;
    Ok(ctx)
}

/// [`request_context`] for the sidecar protocol, whose callers are not
/// budgeted: a sidecar's Verify calls follow its traffic, and its credential
/// is a platform key under the operator's control.
pub async fn sidecar_context<T>(auth: &Authenticator, request: &Request<T>) -> Result<RequestContext> {
    authenticated_context(auth, request).await
}

async fn authenticated_context<T>(auth: &Authenticator, request: &Request<T>) -> Result<RequestContext> {
    let metadata = request.metadata();
    let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let bearer = text("authorization")
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let actor = auth.authenticate(bearer, request.remote_addr().map(|addr| addr.ip())).await?;
    Ok(RequestContext {
        actor,
        channel: Channel::Api,
        request_id: text("x-request-id").chars().take(128).collect(),
        peer_address: request.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
        user_agent: text("user-agent").chars().take(512).collect(),
    })
}
