//! A trivial Envoy ext_authz gRPC server answering OK to every check at
//! once: the ceiling the sidecar's ext_authz `Check` is compared with in
//! BENCHMARKS.md (same service, same messages, same tonic server).
//!
//! By default the answer has the shape of the sidecar's allowed answer (the
//! six identity headers with values as long as a real key's, the credential
//! header removed), built per check the same way, so the comparison isolates
//! the check itself from encoding, sending and decoding a larger answer.
//! `--bare` answers with the status alone.
//!
//! `hello-authz 127.0.0.1:18090 [--bare]`

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
};
use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
use tonic::{Request, Response, Status};

struct AllowAll {
    bare: bool,
}

/// Identity headers as the sidecar sets them for a key without an identity.
const HEADERS: [(&str, &str); 6] = [
    ("x-keyplane-key-id", "key_0351p852NEghidiXb8k001"),
    ("x-keyplane-org-id", "org_1234567890abcdef"),
    ("x-keyplane-scopes", "orders:read"),
    ("x-keyplane-environment", "live"),
    ("x-keyplane-identity", ""),
    ("x-keyplane-identity-id", ""),
];

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let mut check = CheckResponse::with_status(Status::ok("allowed"));
        if !self.bare {
            let mut ok = OkHttpResponseBuilder::new();
            for (name, value) in HEADERS {
                ok.add_header(name, value, Some(HeaderAppendAction::OverwriteIfExistsOrAdd), false);
            }
            ok.remove_header("authorization");
            check.set_http_response(ok.build());
        }
        Ok(Response::new(check))
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let addr = addr.parse().expect("an ip:port");
    let bare = args.next().as_deref() == Some("--bare");
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(AllowAll { bare }))
        .serve(addr)
        .await
        .expect("serve");
}
