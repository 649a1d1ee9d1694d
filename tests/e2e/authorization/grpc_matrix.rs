//! Every RPC of every service in the descriptors (so a new RPC without a
//! row fails) × every credential, with a request naming the org under test
//! and nothing else: a denial must come before any other check.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut};
use keyplane_tests::{Backend, both_backends, random_org, start_or_skip};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

use super::credentials::every_credential;
use super::table;

both_backends!(every_rpc_asks_the_one_decision);

async fn every_rpc_asks_the_one_decision(backend: Backend) {
    let plane = start_or_skip!(backend);
    let org = random_org();
    let credentials = every_credential(&plane, &org, &random_org()).await;
    let channel = plane.channel().await;
    let columns: Vec<String> = credentials.iter().map(|c| c.name.clone()).collect();
    let mut seen = BTreeMap::new();
    for rpc in rpcs() {
        let mut row = Vec::new();
        for credential in &credentials {
            let outcome = call(channel.clone(), &rpc, &credential.token, &org).await;
            assert_ne!(outcome, Code::Unauthenticated, "{} as {}", rpc.path, credential.name);
            row.push(outcome != Code::PermissionDenied);
        }
        seen.insert(rpc.path.trim_start_matches('/').to_owned(), row);
    }
    table::assert_matches("Admin API", &columns, &seen);
    plane.stop().await;
}

struct Rpc {
    /// `/package.Service/Method`.
    path: String,
    server_streaming: bool,
    /// The number of the request's `org_id` field, if it has one.
    org_field: Option<u32>,
}

/// Every method of the keyplane services, from the descriptor set the
/// server's reflection serves.
fn rpcs() -> Vec<Rpc> {
    let set = prost_types::FileDescriptorSet::decode(keyplane_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    let mut messages = BTreeMap::new();
    for file in &set.file {
        for message in &file.message_type {
            messages.insert(format!(".{}.{}", file.package(), message.name()), message);
        }
    }
    let mut rpcs = Vec::new();
    for file in set.file.iter().filter(|f| f.package().starts_with("keyplane.")) {
        for service in &file.service {
            for method in &service.method {
                let input = messages[method.input_type()];
                let org_field = input.field.iter().find(|f| f.name() == "org_id").map(|f| f.number() as u32);
                rpcs.push(Rpc {
                    path: format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    server_streaming: method.server_streaming(),
                    org_field,
                });
            }
        }
    }
    assert!(rpcs.len() >= 44, "found {} RPCs", rpcs.len());
    rpcs
}

/// Calls `rpc` as `token` with only `org_id` set; the status code (OK when it succeeded).
async fn call(channel: tonic::transport::Channel, rpc: &Rpc, token: &str, org: &str) -> Code {
    let mut body = Vec::new();
    if let Some(field) = rpc.org_field {
        prost::encoding::string::encode(field, &org.to_owned(), &mut body);
    }
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = rpc.path.parse().expect("path");
    let result = if rpc.server_streaming {
        grpc.server_streaming(request, path, Raw).await.map(drop)
    } else {
        grpc.unary(request, path, Raw).await.map(drop)
    };
    result.err().map_or(Code::Ok, |status| status.code())
}

/// Messages as their encoded bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut item = vec![0; src.remaining()];
        src.copy_to_slice(&mut item);
        Ok(Some(item))
    }
}
