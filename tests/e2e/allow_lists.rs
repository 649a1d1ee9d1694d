//! Key allow-lists: a key with `allowed_cidrs` works only from those
//! networks — in VerifyApiKey (the caller names the client), at the sidecar
//! (Envoy's source address; for forward-auth the socket peer, or the
//! forwarded address behind a `--trusted-proxy` only), and as an admin
//! credential. Malformed networks name their field.

use std::net::{IpAddr, Ipv4Addr};

use envoy::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3 as envoy;
use keyplane_proto::admin::v1 as pb;
use keyplane_tests::{
    Authed, Backend, TestControlPlane, TestSidecar, assert_invalid_field, both_backends, eventually, random_org,
};
use tonic::Code;

both_backends!(
    networks_are_checked_and_canonical,
    verify_api_key_needs_the_client_inside,
    the_sidecar_believes_forwarded_addresses_only_from_trusted_proxies,
    an_admin_key_works_only_from_its_networks
);

type Keys = pb::api_key_service_client::ApiKeyServiceClient<Authed>;

/// A loopback address other than 127.0.0.1 (Linux routes all of 127/8 to lo).
fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn create(
    keys: &mut Keys,
    org: &str,
    scopes: &[&str],
    cidrs: &[&str],
) -> Result<pb::CreateApiKeyResponse, tonic::Status> {
    let request = pb::CreateApiKeyRequest {
        org_id: org.to_owned(),
        name: "listed".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        allowed_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
        ..Default::default()
    };
    keys.create_api_key(request).await.map(tonic::Response::into_inner)
}

async fn set_networks(keys: &mut Keys, org: &str, id: &str, cidrs: &[&str]) -> Result<pb::ApiKey, tonic::Status> {
    let request = pb::UpdateApiKeyRequest {
        org_id: org.to_owned(),
        id: id.to_owned(),
        update: Some(pb::ApiKeyUpdate {
            allowed_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["allowed_cidrs".into()] }),
    };
    keys.update_api_key(request).await.map(|r| r.into_inner().api_key.expect("key"))
}

async fn networks_are_checked_and_canonical(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let created = create(&mut keys, &org, &[], &[" 10.1.2.3/8", "192.0.2.1", "2001:DB8::1/32", "10.0.0.0/8"])
        .await
        .expect("create");
    let key = created.api_key.expect("key");
    assert_eq!(key.allowed_cidrs, ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]);

    let refused = create(&mut keys, &org, &[], &["10.0.0.0/8", "10.0.0.0/33", "nope"]).await.expect_err("bad");
    assert_invalid_field(&refused, "allowed_cidrs[1]");
    assert_invalid_field(&refused, "allowed_cidrs[2]");
    let too_many: Vec<String> = (0..101).map(|i| format!("10.0.{i}.0/24")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    assert_invalid_field(&create(&mut keys, &org, &[], &too_many).await.expect_err("101"), "allowed_cidrs");
    let refused = set_networks(&mut keys, &org, &key.id, &["::1/129"]).await.expect_err("bad update");
    assert_invalid_field(&refused, "update.allowed_cidrs[0]");

    let cleared = set_networks(&mut keys, &org, &key.id, &[]).await.expect("clear");
    assert!(cleared.allowed_cidrs.is_empty());
    let audited = plane.audit_events(&org, "api_key.created").await;
    let details = audited[0].metadata.as_ref().expect("metadata");
    assert!(details.fields.contains_key("allowed_cidrs"), "{details:?}");
    plane.stop().await;
}

async fn verify_api_key_needs_the_client_inside(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let token = create(&mut keys, &org, &[], &["192.0.2.0/24", "2001:db8::/32"]).await.expect("create").token;
    let verify = |client: &str| pb::VerifyApiKeyRequest {
        token: token.clone(),
        client_address: client.to_owned(),
        ..Default::default()
    };
    for (client, failure) in [
        ("192.0.2.77", pb::VerifyFailure::Unspecified),
        ("2001:db8::5", pb::VerifyFailure::Unspecified),
        ("::ffff:192.0.2.77", pb::VerifyFailure::Unspecified),
        ("198.51.100.1", pb::VerifyFailure::IpNotAllowed),
        ("", pb::VerifyFailure::IpNotAllowed),
    ] {
        let response = keys.verify_api_key(verify(client)).await.expect("verify").into_inner();
        assert_eq!(response.failure(), failure, "from {client:?}");
        assert!(response.principal.is_some(), "the secret was right: the principal is named");
    }
    let refused = keys.verify_api_key(verify("192.0.2")).await.expect_err("not an address");
    assert_invalid_field(&refused, "client_address");
    plane.stop().await;
}

/// An ext_authz request whose downstream client is `source`.
fn from_source(bearer: &str, source: &str) -> envoy::CheckRequest {
    let mut request = keyplane_tests::ext_authz_request(&[("authorization", bearer)], &[]);
    let address = Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: source.to_owned(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(40_000)),
            ..Default::default()
        })),
    };
    request.attributes.as_mut().expect("attributes").source =
        Some(envoy::attribute_context::Peer { address: Some(address), ..Default::default() });
    request
}

/// Status of a forward-auth check sent from `source` with `headers`.
async fn forward_auth(sidecar: &TestSidecar, source: IpAddr, token: &str, headers: &[(&str, &str)]) -> u16 {
    let client = reqwest::Client::builder().local_address(source).build().expect("client");
    let mut request =
        client.get(format!("http://{}/check", sidecar.http_addr)).header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("check").status().as_u16()
}

async fn the_sidecar_believes_forwarded_addresses_only_from_trusted_proxies(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let direct = TestSidecar::start(&plane, |_| {}).await;
    let proxied =
        TestSidecar::start(&plane, |config| config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let org = random_org();
    let mut keys = plane.keys(&plane.root_token).await;
    let created = create(&mut keys, &org, &[], &["127.0.0.2/32", "2001:db8::/32"]).await.expect("create");
    let (key, token) = (created.api_key.expect("key"), created.token);

    let bearer = format!("Bearer {token}");
    let mut envoy = AuthorizationClient::connect(format!("http://{}", direct.grpc_addr)).await.expect("connect");
    let code = |response: envoy::CheckResponse| response.status.expect("status").code;
    assert_eq!(code(envoy.check(from_source(&bearer, "127.0.0.2")).await.expect("check").into_inner()), 0);
    assert_eq!(code(envoy.check(from_source(&bearer, "2001:db8::9")).await.expect("check").into_inner()), 0);
    let outside = envoy.check(from_source(&bearer, "127.0.0.9")).await.expect("check").into_inner();
    assert_eq!(code(outside.clone()), Code::PermissionDenied as i32);
    let Some(envoy::check_response::HttpResponse::DeniedResponse(denied)) = outside.http_response else {
        panic!("expected a denied response");
    };
    assert_eq!(denied.status.expect("http status").code, 403);

    // Forward-auth without trusted proxies: the socket peer, whatever the headers say.
    let spoofed = [("x-forwarded-for", "127.0.0.2"), ("x-real-ip", "127.0.0.2")];
    assert_eq!(forward_auth(&direct, loopback(2), &token, &[]).await, 200);
    assert_eq!(forward_auth(&direct, loopback(1), &token, &spoofed).await, 403);
    assert_eq!(direct.metric("keyplane_sidecar_checks_total", "reason=\"ip_not_allowed\"").await, 2.0);

    // Behind the trusted proxy 127.0.0.1: the forwarded client counts.
    assert_eq!(forward_auth(&proxied, loopback(1), &token, &[("x-forwarded-for", "127.0.0.2")]).await, 200);
    assert_eq!(forward_auth(&proxied, loopback(1), &token, &[("x-real-ip", "127.0.0.2")]).await, 200);
    let chain = [("x-forwarded-for", "127.0.0.2, 127.0.0.7")];
    assert_eq!(forward_auth(&proxied, loopback(1), &token, &chain).await, 403, "the client wrote the left entry");
    assert_eq!(forward_auth(&proxied, loopback(3), &token, &spoofed).await, 403, "127.0.0.3 is no trusted proxy");
    // The proxy's own X-Real-IP wins over an X-Forwarded-For the client wrote (nginx sets
    // X-Real-IP and passes the client's X-Forwarded-For along).
    let client_xff = [("x-forwarded-for", "127.0.0.2"), ("x-real-ip", "127.0.0.9")];
    assert_eq!(forward_auth(&proxied, loopback(1), &token, &client_xff).await, 403, "the proxy saw 127.0.0.9");
    // Every X-Forwarded-For line counts: the proxy appends its own last.
    let lines = [("x-forwarded-for", "127.0.0.2"), ("x-forwarded-for", "127.0.0.9")];
    assert_eq!(forward_auth(&proxied, loopback(1), &token, &lines).await, 403, "the client wrote the first line");
    let lines = [("x-forwarded-for", "127.0.0.9"), ("x-forwarded-for", "127.0.0.2")];
    assert_eq!(forward_auth(&proxied, loopback(1), &token, &lines).await, 200);

    // Lifting the list reaches the sidecars through the key-event stream.
    set_networks(&mut keys, &org, &key.id, &[]).await.expect("clear");
    eventually(|| forward_auth(&direct, loopback(1), &token, &[]), |status| *status == 200).await;
    direct.stop().await;
    proxied.stop().await;
    plane.stop().await;
}

async fn an_admin_key_works_only_from_its_networks(backend: Backend) {
    let Some(plane) = TestControlPlane::start(backend).await else { return };
    let org = random_org();
    let mut root = plane.keys(&plane.root_token).await;
    let admin = create(&mut root, "keyplane", &["keyplane:admin"], &["127.0.0.2/32"]).await.expect("admin key").token;
    let list = pb::ListApiKeysRequest { org_id: org.clone(), ..Default::default() };
    let (endpoint, admin) = (plane.endpoint(), &admin);
    let from = |source| {
        let endpoint = endpoint.clone().local_address(Some(source));
        async move {
            let channel = endpoint.connect().await.expect("connect");
            Keys::new(tonic::service::interceptor::InterceptedService::new(channel, keyplane_tests::bearer(admin)))
        }
    };
    let refused = from(loopback(1)).await.list_api_keys(list.clone()).await.expect_err("outside");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    from(loopback(2)).await.list_api_keys(list).await.expect("inside");
    plane.stop().await;
}
