//! Compiles the Keyplane protos with a vendored protoc (no system install needed)
//! and writes a descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "keyplane/admin/v1/api_keys.proto",
        "keyplane/admin/v1/audit.proto",
        "keyplane/sync/v1/key_sync.proto",
    ];
    let wellknown = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("keyplane_descriptor.bin"))
        .compile_with_config(
            config,
            &protos.map(PathBuf::from),
            &[PathBuf::from("."), wellknown],
        )?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
