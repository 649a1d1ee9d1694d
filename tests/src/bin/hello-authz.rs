//! A trivial Envoy ext_authz gRPC server answering OK to every check at
//! once: the ceiling the sidecar's ext_authz `Check` is compared with in
//! BENCHMARKS.md (same service, same messages, same tonic server).
//!
//! By default the answer has the shape of the sidecar's allowed answer (its
//! six identity headers, from `identity_headers`, for a key like the load
//! generator's; the credential header removed), built per check the same way, so the comparison isolates
//! the check itself from encoding, sending and decoding a larger answer.
//! `--bare` answers with the status alone.
//!
//! `hello-authz 127.0.0.1:18090 [--bare]`

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
use keyplane_proto::token::Environment;
use keyplane_sidecar::cache::{KeyId, Principal};
use keyplane_sidecar::http::identity_headers;
use tonic::{Request, Response, Status};

struct AllowAll {
    /// Whose identity headers to answer with; `None` for a bare answer.
    answer_as: Option<(KeyId, Principal)>,
}

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let mut check = CheckResponse::with_status(Status::ok("allowed"));
        if let Some((key_id, principal)) = &self.answer_as {
            let mut ok = OkHttpResponseBuilder::new();
            for (name, value) in identity_headers(key_id, principal) {
                ok.add_header(name, value, Some(HeaderAppendAction::OverwriteIfExistsOrAdd), false);
            }
            ok.remove_header("authorization");
            check.set_http_response(ok.build());
        }
        Ok(Response::new(check))
    }
}

/// A key as `loadgen-sidecar` checks it: live, one scope, no identity.
fn a_key() -> (KeyId, Principal) {
    let principal = Principal {
        org_id: "org_1234567890abcdef".into(),
        scopes: "orders:read".into(),
        environment: Environment::Live,
        expires_at: None,
        limits: None,
        identity: None,
    };
    (KeyId::parse("key_0351p852NEghidiXb8k001").expect("a key id"), principal)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let addr = addr.parse().expect("an ip:port");
    let answer_as = (args.next().as_deref() != Some("--bare")).then(a_key);
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(AllowAll { answer_as }))
        .serve(addr)
        .await
        .expect("serve");
}
