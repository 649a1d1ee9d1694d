//! Keyplane's protobuf messages and tonic services, generated from `proto/keyplane`.
//!
//! Both binaries depend on this crate, so the wire types exist exactly once.

/// Public admin API (`keyplane.admin.v1`).
pub mod admin {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs)]
        tonic::include_proto!("keyplane.admin.v1");
    }
}

/// Control plane ⇄ sidecar protocol (`keyplane.sync.v1`).
pub mod sync {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs)]
        tonic::include_proto!("keyplane.sync.v1");
    }
}

/// Most credits one check may cost (the proxy's `cost`, `VerifyApiKey.cost`):
/// the sidecar and the control plane refuse more alike.
pub const MAX_CHECK_COST: u64 = 1000;

pub mod check;
pub mod codec;
pub mod permissions;
pub mod shutdown;
pub mod token;
pub mod usage;

/// Encoded `FileDescriptorSet` of every Keyplane proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keyplane_descriptor");

/// Encoded `FileDescriptorSet` of Envoy's ext_authz v3 service (a
/// wire-compatible subset), so the sidecar's reflection covers `Check`.
pub const EXT_AUTHZ_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ext_authz_descriptor");
