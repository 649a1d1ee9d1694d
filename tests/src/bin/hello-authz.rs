//! A trivial Envoy ext_authz gRPC server answering OK to every check at
//! once: the ceiling the sidecar's ext_authz `Check` is compared with in
//! BENCHMARKS.md (same service, same messages, same tonic server).
//!
//! By default the answer is the sidecar's allowed answer, built per check by
//! the sidecar's own `ext_authz::allowed` for a key like the load
//! generator's (six identity headers, the credential header removed), so the
//! comparison isolates the check itself from encoding, sending and decoding
//! a larger answer.
//! `--bare` answers with the status alone. The allowed answer is served
//! through the sidecar's `CopiedWrites` connections, as the sidecar serves it
//! (h2 then batches answers of this size; see BENCHMARKS.md); the bare one
//! through tonic's own, untouched.
//!
//! `hello-authz 127.0.0.1:18090 [--bare]`

use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use keyplane_proto::token::Environment;
use keyplane_sidecar::cache::{KeyId, Principal};
use keyplane_sidecar::ext_authz::allowed;
use keyplane_sidecar::listen::CopiedWrites;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

struct AllowAll {
    /// Whose identity headers to answer with; `None` for a bare answer.
    answer_as: Option<(KeyId, Principal)>,
}

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(match &self.answer_as {
            Some((key_id, principal)) => allowed(key_id, principal, Some("authorization")),
            None => CheckResponse::with_status(Status::ok("allowed")),
        }))
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
        grants: None,
    };
    (KeyId::parse("key_0351p852NEghidiXb8k001").expect("a key id"), principal)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind an ip:port");
    let answer_as = (args.next().as_deref() != Some("--bare")).then(a_key);
    println!("listening on {addr}");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let copied_writes = answer_as.is_some();
    let server = tonic::transport::Server::builder().add_service(AuthorizationServer::new(AllowAll { answer_as }));
    let served = if copied_writes {
        server.serve_with_incoming(incoming.map(|connection| connection.map(CopiedWrites))).await
    } else {
        server.serve_with_incoming(incoming).await
    };
    served.expect("serve");
}
