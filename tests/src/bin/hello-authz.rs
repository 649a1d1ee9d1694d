//! A trivial Envoy ext_authz gRPC server answering OK to every check at
//! once: the ceiling the sidecar's ext_authz `Check` is compared with in
//! BENCHMARKS.md (same service, same messages, same tonic server).
//! `hello-authz 127.0.0.1:18090`

use envoy_types::ext_authz::v3::CheckResponseExt;
use envoy_types::ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse};
use tonic::{Request, Response, Status};

struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(&self, _request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse::with_status(Status::ok("allowed"))))
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18090".into());
    let addr = addr.parse().expect("an ip:port");
    println!("listening on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(AuthorizationServer::new(AllowAll))
        .serve(addr)
        .await
        .expect("serve");
}
