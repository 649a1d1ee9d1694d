//! Compiles the Keyplane protos with a vendored protoc (no system install needed)
//! and writes a descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "keyplane/admin/v1/api_keys.proto",
        "keyplane/admin/v1/audit.proto",
        "keyplane/admin/v1/webhooks.proto",
        "keyplane/admin/v1/events.proto",
        "keyplane/admin/v1/deliveries.proto",
        "keyplane/admin/v1/connections.proto",
        "keyplane/admin/v1/usage.proto",
        "keyplane/admin/v1/identities.proto",
        "keyplane/admin/v1/roles.proto",
        "keyplane/admin/v1/orgs.proto",
        "keyplane/admin/v1/event_types.proto",
        "keyplane/sync/v1/key_sync.proto",
    ];
    let wellknown = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `prost::Name` on every message: the codec looks requests up by name.
    config.enable_type_names();

    tonic_prost_build::configure()
        .codec_path("crate::codec::KeyplaneCodec")
        .file_descriptor_set_path(out_dir.join("keyplane_descriptor.bin"))
        .compile_with_config(config, &protos.map(PathBuf::from), &[PathBuf::from("."), wellknown.clone()])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    reflection_descriptors(&out_dir, &wellknown)
}

/// Descriptor set of the ext_authz subset in `reflection/`, for the
/// sidecar's server reflection (no code is generated from it).
fn reflection_descriptors(
    out_dir: &std::path::Path,
    wellknown: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let status = std::process::Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out_dir.join("ext_authz_descriptor.bin").display()))
        .arg("-Ireflection")
        .arg(format!("-I{}", wellknown.display()))
        .arg("reflection/envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err("protoc failed on reflection/ protos".into());
    }
    println!("cargo:rerun-if-changed=reflection");
    Ok(())
}
