//! What a route requires is configuration, never input: the sidecar's
//! `--default-scopes` always apply, a route adds to them (an ext_authz
//! context extension, or `X-Required-Scopes` set by the proxy), and nothing
//! a client sends lifts them.

use envoy::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3 as envoy;
use keyplane_tests::{Backend, TestSidecar, both_backends, ext_authz_request, random_org, start_or_skip};

both_backends!(a_client_cannot_lift_a_routes_scopes);

async fn a_client_cannot_lift_a_routes_scopes(backend: Backend) {
    let plane = start_or_skip!(backend);
    let sidecar = TestSidecar::start(&plane, |config| config.default_scopes = vec!["orders:read".into()]).await;
    let org = random_org();
    let (_, billing) = plane.create_key(&org, &["billing:read"]).await;
    let (_, both) = plane.create_key(&org, &["billing:read", "orders:read"]).await;

    // Forward-auth: an empty or comma-only header is no requirement lifted.
    for lifted in [None, Some(""), Some(","), Some(" , "), Some("billing:read")] {
        let status = sidecar.check(&billing, lifted).await.status().as_u16();
        assert_eq!(status, 403, "X-Required-Scopes {lifted:?} keeps --default-scopes");
    }
    assert_eq!(sidecar.check(&both, Some("billing:read")).await.status().as_u16(), 200);
    assert_eq!(sidecar.check(&both, Some("refunds:write")).await.status().as_u16(), 403, "a route adds");

    // ext_authz: the client's own x-required-scopes is never read.
    let mut envoy = AuthorizationClient::connect(format!("http://{}", sidecar.grpc_addr)).await.expect("connect");
    let code = |response: envoy::CheckResponse| response.status.expect("status").code;
    for (token, headers, context, expected) in [
        (&billing, vec![("x-required-scopes", "")], vec![], 7),
        (&billing, vec![("x-required-scopes", ",")], vec![], 7),
        (&billing, vec![("x-required-scopes", "billing:read")], vec![("required_scopes", "")], 7),
        (&billing, vec![], vec![("required_scopes", "billing:read")], 7),
        (&both, vec![], vec![("required_scopes", "billing:read")], 0),
        (&both, vec![("x-required-scopes", "")], vec![("required_scopes", "refunds:write")], 7),
    ] {
        let bearer = format!("Bearer {token}");
        let mut all = vec![("authorization", bearer.as_str())];
        all.extend(headers.iter().copied());
        let answer = envoy.check(ext_authz_request(&all, &context)).await.expect("check").into_inner();
        assert_eq!(code(answer), expected, "headers {headers:?}, context {context:?}");
    }
    sidecar.stop().await;
    plane.stop().await;
}
