//! Envoy `ext_authz` v3 over gRPC (`envoy.service.auth.v3.Authorization/Check`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use keyplane_proto::permissions::Query;
use tonic::{Request, Response, Status};

use crate::cache::{KeyId, Principal};
use crate::check::{CheckInput, Checker, Decision, DenyStatus, InvalidQuery, parse_cost, required_scopes};
use crate::client_address::parse_ip;
use crate::http::{credential_from, identity_headers, www_authenticate};

/// The ext_authz service.
pub struct ExtAuthz {
    checker: Arc<Checker>,
    credential_header: String,
    strip_credential: bool,
    default_scopes: Vec<String>,
}

impl ExtAuthz {
    /// An ext_authz service over `checker`.
    pub fn new(
        checker: Arc<Checker>,
        credential_header: String,
        strip_credential: bool,
        default_scopes: Vec<String>,
    ) -> Self {
        Self { checker, credential_header: credential_header.to_ascii_lowercase(), strip_credential, default_scopes }
    }
}

/// The answer allowing a request as key `key_id`, granted `principal`: its
/// identity headers set (overwriting any the client sent), and
/// `remove_header` (the credential, when it is stripped) removed.
pub fn allowed(key_id: &KeyId, principal: &Principal, remove_header: Option<&str>) -> CheckResponse {
    let mut ok = OkHttpResponseBuilder::new();
    for (name, value) in identity_headers(key_id, principal) {
        ok.add_header(name.as_str(), value, Some(HeaderAppendAction::OverwriteIfExistsOrAdd), false);
    }
    if let Some(name) = remove_header {
        ok.remove_header(name);
    }
    let mut check = CheckResponse::with_status(Status::ok("allowed"));
    check.set_http_response(ok.build());
    check
}

fn denied(code: tonic::Code, reason: &str, response: DeniedHttpResponse) -> CheckResponse {
    let mut check = CheckResponse::with_status(Status::new(code, reason));
    check.set_http_response(response);
    check
}

/// The downstream client's address as Envoy reports it: `ip:port` for logs,
/// and the IP for allow-lists.
fn source_address(address: &envoy_types::pb::envoy::config::core::v3::Address) -> (String, Option<IpAddr>) {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    let Some(address::Address::SocketAddress(socket)) = &address.address else { return (String::new(), None) };
    let ip = parse_ip(&socket.address);
    let text = match (socket.port_specifier.as_ref(), ip) {
        (Some(socket_address::PortSpecifier::PortValue(port)), Some(ip)) => {
            SocketAddr::new(ip, *port as u16).to_string()
        }
        _ => socket.address.clone(),
    };
    (text, ip)
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        let empty = HashMap::new();
        let headers = request.get_client_headers().unwrap_or(&empty);
        let context = request.attributes.as_ref().map(|a| &a.context_extensions);
        // The route's configuration, never the client's headers.
        let required =
            required_scopes(&self.default_scopes, context.and_then(|c| c.get("required_scopes")).map(String::as_str));
        let credential =
            credential_from(headers.get(&self.credential_header).map(String::as_str), &self.credential_header);
        let (peer, client) = request
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .and_then(|source| source.address.as_ref())
            .map(source_address)
            .unwrap_or_default();
        let request_id = headers.get("x-request-id").map(String::as_str).unwrap_or_default();
        let cost = parse_cost(context.and_then(|c| c.get("cost")).map(String::as_str));
        let permissions = context.and_then(|c| c.get("permissions")).map(|text| Query::parse(text)).transpose();
        if let Err(error) = &permissions {
            tracing::warn!(%error, "the route's permissions context extension is not a permission query");
        }
        let check = CheckInput {
            credential,
            required_scopes: &required,
            permissions: permissions.as_ref().map(Option::as_ref).map_err(|_| InvalidQuery),
            peer: &peer,
            client,
            cost,
            request_id,
        };
        let response = match self.checker.check(&check).await {
            Decision::Allow { key_id, principal } => {
                allowed(&key_id, &principal, self.strip_credential.then_some(self.credential_header.as_str()))
            }
            Decision::Deny(denial) => {
                let (code, http) = match denial.status {
                    DenyStatus::Unauthenticated => (tonic::Code::Unauthenticated, HttpStatusCode::Unauthorized),
                    DenyStatus::Forbidden => (tonic::Code::PermissionDenied, HttpStatusCode::Forbidden),
                    DenyStatus::RateLimited => (tonic::Code::ResourceExhausted, HttpStatusCode::TooManyRequests),
                    DenyStatus::Unavailable => (tonic::Code::Unavailable, HttpStatusCode::ServiceUnavailable),
                    DenyStatus::BadRequest => (tonic::Code::InvalidArgument, HttpStatusCode::BadRequest),
                };
                let mut builder = DeniedHttpResponseBuilder::new();
                builder.set_http_status(http);
                builder.add_header("content-type", "application/json", None, false);
                if denial.status == DenyStatus::Unauthenticated {
                    builder.add_header("www-authenticate", www_authenticate(denial.shown), None, false);
                }
                if let Some(wait) = denial.retry_after {
                    builder.add_header("retry-after", wait.as_secs().max(1).to_string(), None, false);
                }
                builder.set_body(format!("{{\"error\":\"{}\"}}", denial.shown));
                denied(code, denial.shown, builder.build())
            }
        };
        Ok(Response::new(response))
    }
}
