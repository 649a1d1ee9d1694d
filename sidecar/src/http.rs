//! The HTTP front end (hyper): forward-auth under `/check` for Envoy HTTP
//! ext_authz, Traefik ForwardAuth, nginx `auth_request` and Caddy
//! `forward_auth`; plus `/healthz`, `/readyz` and `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

use crate::cache::{KeyId, Principal};
use crate::check::{CheckInput, Checker, Decision, DenyStatus, parse_cost, required_scopes};
use crate::client_address::{self, TrustedProxies};
use crate::listen::Listener;
use crate::metrics::Metrics;
use crate::sync::Readiness;

/// Path prefix of forward-auth checks.
pub const CHECK_PREFIX: &str = "/check";
/// The header a proxy sets on the forward-auth request to name a route's
/// scopes. The client can send it too (a proxy forwards what it does not
/// overwrite), so it only ever adds to `--default-scopes`.
pub const REQUIRED_SCOPES_HEADER: &str = "x-required-scopes";

/// The headers a check reads and sets, named once at compile time: a
/// lookup or insert by `&str` parses and checks the name on every request.
mod names {
    use hyper::header::HeaderName;

    pub const REQUIRED_SCOPES: HeaderName = HeaderName::from_static(super::REQUIRED_SCOPES_HEADER);
    pub const FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
    pub const ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
    pub const FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
    pub const ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
    pub const REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub const COST: HeaderName = HeaderName::from_static("x-keyplane-cost");
    pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const REMOVE_HEADERS: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");
    pub const KEY_ID: HeaderName = HeaderName::from_static("x-keyplane-key-id");
    pub const ORG_ID: HeaderName = HeaderName::from_static("x-keyplane-org-id");
    pub const SCOPES: HeaderName = HeaderName::from_static("x-keyplane-scopes");
    pub const ENVIRONMENT: HeaderName = HeaderName::from_static("x-keyplane-environment");
    pub const IDENTITY: HeaderName = HeaderName::from_static("x-keyplane-identity");
    pub const IDENTITY_ID: HeaderName = HeaderName::from_static("x-keyplane-identity-id");
}

/// The identity headers set on allowed requests (overwriting any sent by
/// the client: the identity ones are empty for a key without an identity).
pub fn identity_headers<'a>(key_id: &'a KeyId, principal: &'a Principal) -> [(HeaderName, &'a str); 6] {
    let identity = principal.identity.as_ref();
    [
        (names::KEY_ID, key_id),
        (names::ORG_ID, &principal.org_id),
        (names::SCOPES, &principal.scopes),
        (names::ENVIRONMENT, principal.environment.as_str()),
        (names::IDENTITY, identity.map_or("", |i| &i.external_id)),
        (names::IDENTITY_ID, identity.map_or("", |i| &i.id)),
    ]
}

/// `WWW-Authenticate` for a 401 (RFC 6750); `reason` is what the client
/// may be told (`invalid_token` unless denial reasons are exposed).
pub fn www_authenticate(reason: &str) -> String {
    if reason == crate::check::GENERIC_REASON {
        "Bearer realm=\"keyplane\", error=\"invalid_token\"".to_owned()
    } else {
        format!("Bearer realm=\"keyplane\", error=\"invalid_token\", error_description=\"{reason}\"")
    }
}

/// The token in a credential header: `Bearer <token>` for `authorization`,
/// the raw value for any other header.
pub fn credential_from<'a>(value: Option<&'a str>, header: &str) -> Option<&'a str> {
    let value = value?.trim();
    if header.eq_ignore_ascii_case("authorization") {
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    } else {
        Some(value)
    }
}

/// What the HTTP front end serves.
pub struct HttpFrontEnd {
    /// The decision maker.
    pub checker: Arc<Checker>,
    pub metrics: Arc<Metrics>,
    /// Credential header name.
    pub credential_header: HeaderName,
    /// Ask the proxy to drop the credential header.
    pub strip_credential: bool,
    /// Scopes every check requires.
    pub default_scopes: Vec<String>,
    /// Permission queries of the routes under `/check/NAME`.
    pub routes: crate::routes::Routes,
    /// Proxies whose forwarding headers name the client.
    pub trusted_proxies: TrustedProxies,
}

type Reply = Response<Full<Bytes>>;

/// Who a connection comes from, worked out once per connection.
struct Peer {
    /// The socket peer's address (`unix` for a Unix socket), for logs.
    text: String,
    /// Its IP, for allow-lists.
    ip: Option<IpAddr>,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

impl HttpFrontEnd {
    async fn handle(&self, request: Request<Incoming>, peer: &Peer) -> Reply {
        let path = request.uri().path();
        match path {
            "/healthz" => reply(StatusCode::OK, "ok\n"),
            "/readyz" => match self.checker.readiness() {
                Readiness::Fresh => reply(StatusCode::OK, "ready\n"),
                Readiness::Stale => reply(StatusCode::SERVICE_UNAVAILABLE, "stale: no word from the control plane\n"),
                Readiness::NotSynced => reply(StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n"),
            },
            "/metrics" => {
                let mut response = reply(StatusCode::OK, self.metrics.render());
                response.headers_mut().insert(
                    "content-type",
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            _ if path == CHECK_PREFIX || path.starts_with("/check/") => self.forward_auth(&request, peer).await,
            _ => reply(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    async fn forward_auth(&self, request: &Request<Incoming>, peer: &Peer) -> Reply {
        let headers = request.headers();
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let required = required_scopes(&self.default_scopes, text(&names::REQUIRED_SCOPES));
        let credential = credential_from(text(&self.credential_header), self.credential_header.as_str());
        let decision = self
            .checker
            .check(&CheckInput {
                credential,
                required_scopes: &required,
                permissions: Ok(request
                    .uri()
                    .path()
                    .strip_prefix(CHECK_PREFIX)
                    .and_then(|rest| self.routes.for_path(rest))),
                peer: &peer.text,
                client: self.trusted_proxies.client(
                    peer.ip,
                    text(&names::REAL_IP),
                    headers.get_all(&names::FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()),
                ),
                cost: parse_cost(text(&names::COST)),
                request_id: text(&names::REQUEST_ID).unwrap_or_default(),
            })
            .await;
        // The field expressions run only when DEBUG is on.
        tracing::debug!(
            method = text(&names::FORWARDED_METHOD)
                .or_else(|| text(&names::ORIGINAL_METHOD))
                .unwrap_or(request.method().as_str()),
            uri = text(&names::FORWARDED_URI).or_else(|| text(&names::ORIGINAL_URI)).unwrap_or_default(),
            allowed = matches!(decision, Decision::Allow { .. }),
            "forward-auth check"
        );
        match decision {
            Decision::Allow { key_id, principal } => {
                let mut response = reply(StatusCode::OK, Bytes::new());
                let out = response.headers_mut();
                // Six identity headers and the credential to drop: sized once, not grown.
                out.reserve(8);
                for (name, value) in identity_headers(&key_id, &principal) {
                    // An absent identity's headers are empty: no copy to make.
                    let value =
                        if value.is_empty() { Ok(HeaderValue::from_static("")) } else { HeaderValue::from_str(value) };
                    if let Ok(value) = value {
                        out.insert(name, value);
                    }
                }
                if self.strip_credential {
                    // Envoy's HTTP ext_authz honours this; other proxies are configured to drop it.
                    out.insert(names::REMOVE_HEADERS, HeaderValue::from(self.credential_header.clone()));
                }
                response
            }
            Decision::Deny(denial) => {
                let status = StatusCode::from_u16(denial.status.http_code()).unwrap_or(StatusCode::UNAUTHORIZED);
                let mut response = reply(status, format!("{{\"error\":\"{}\"}}\n", denial.shown));
                let out = response.headers_mut();
                out.insert("content-type", HeaderValue::from_static("application/json"));
                if denial.status == DenyStatus::Unauthenticated
                    && let Ok(value) = HeaderValue::from_str(&www_authenticate(denial.shown))
                {
                    out.insert("www-authenticate", value);
                }
                if let Some(wait) = denial.retry_after {
                    out.insert("retry-after", HeaderValue::from(wait.as_secs().max(1)));
                }
                response
            }
        }
    }

    /// Serves connections from `listener` until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, listener: Listener, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "http accept failed");
                        continue;
                    }
                },
            };
            let front = self.clone();
            let peer = Arc::new(Peer { ip: client_address::peer_ip(&peer), text: peer });
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let (front, peer) = (front.clone(), peer.clone());
                    async move { Ok::<_, Infallible>(front.handle(request, &peer).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn header_parsing_never_panics(value in ".*", header in "[a-z-]{1,20}") {
            let _ = credential_from(Some(&value), &header);
            let _ = credential_from(Some(&value), "authorization");
            let _ = required_scopes(&[], Some(&value));
        }

        #[test]
        fn listen_addresses_round_trip(path in "/[a-z0-9/._-]{1,40}", port in proptest::num::u16::ANY) {
            use crate::config::ListenAddr;
            let unix = ListenAddr::Unix(path.into());
            proptest::prop_assert_eq!(unix.to_string().parse::<ListenAddr>(), Ok(unix));
            let tcp = ListenAddr::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            proptest::prop_assert_eq!(tcp.to_string().parse::<ListenAddr>(), Ok(tcp));
        }
    }

    #[test]
    fn credentials() {
        assert_eq!(credential_from(Some("Bearer abc"), "authorization"), Some("abc"));
        assert_eq!(credential_from(Some("bearer  abc "), "authorization"), Some("abc"));
        assert_eq!(credential_from(Some("Basic abc"), "authorization"), None);
        assert_eq!(credential_from(Some("abc"), "x-api-key"), Some("abc"));
        assert_eq!(credential_from(None, "x-api-key"), None);
    }
}
