//! OAuth-connection helpers shared by the tests: a control plane that knows
//! fake providers, and connecting through the API.

use std::time::Duration;

use keyplane_proto::admin::v1 as pb;

use crate::oauth_provider::FakeProvider;
use crate::{Backend, TestControlPlane};

pub const CLIENT_SECRET: &str = "fake-client-secret-9f2c";
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk-0123456789";

/// A control plane that knows `providers` (name, provider, auth method) and may call loopback.
pub async fn start(backend: Backend, providers: &[(&str, &FakeProvider, &str)]) -> Option<TestControlPlane> {
    start_with_egress(backend, providers, true).await
}

/// Like [`start`]; loopback is reachable only if `allow_loopback`.
pub async fn start_with_egress(
    backend: Backend,
    providers: &[(&str, &FakeProvider, &str)],
    allow_loopback: bool,
) -> Option<TestControlPlane> {
    let dir = tempfile::tempdir().unwrap().keep();
    let secret = dir.join("client-secret");
    std::fs::write(&secret, CLIENT_SECRET).unwrap();
    let file = dir.join("providers.toml");
    let text: String = providers.iter().map(|(name, p, method)| p.provider_toml(name, &secret, method)).collect();
    std::fs::write(&file, text).unwrap();
    TestControlPlane::start_with(backend, |config| {
        config.oauth_providers = Some(file);
        config.oauth_timeout = Duration::from_secs(1);
        if allow_loopback {
            config.egress.allow_cidr = vec!["127.0.0.0/8".parse().unwrap()];
        }
        config.egress.allow_http = true;
    })
    .await
}

/// An ExchangeCode request for `provider` with PKCE `verifier` (empty: none).
pub fn exchange(org: &str, provider: &str, code: String, verifier: &str) -> pb::ExchangeCodeRequest {
    pb::ExchangeCodeRequest {
        org_id: org.to_owned(),
        provider: provider.to_owned(),
        code,
        redirect_uri: "https://app.example/oauth/callback".into(),
        code_verifier: verifier.to_owned(),
        account_label: "dns@acme".into(),
    }
}

/// Connects `org` to `provider` (named `acme`) with the root token.
pub async fn connect(plane: &TestControlPlane, org: &str, provider: &FakeProvider) -> pb::Connection {
    let code = provider.issue_code(Some(&FakeProvider::challenge(VERIFIER)));
    plane
        .connections(&plane.root_token)
        .await
        .exchange_code(exchange(org, "acme", code, VERIFIER))
        .await
        .expect("exchange")
        .into_inner()
        .connection
        .expect("connection")
}

/// GetAccessToken with the root token.
pub async fn access_token(plane: &TestControlPlane, org: &str, id: &str) -> Result<String, tonic::Status> {
    let mut client = plane.connections(&plane.root_token).await;
    let request = pb::GetAccessTokenRequest { org_id: org.to_owned(), id: id.to_owned() };
    client.get_access_token(request).await.map(|r| r.into_inner().access_token)
}
