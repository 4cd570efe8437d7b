//! Generates the gRPC code from `proto/` with a vendored protoc (no system protoc needed).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut prost = tonic_prost_build::Config::new();
    prost.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // `prost::Name` for every message: typed error details are packed into
    // `google.protobuf.Any` by their type URL.
    prost.enable_type_names();
    prost.type_name_domain(["."], "type.googleapis.com");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("kss_descriptor.bin"))
        .compile_with_config(
            prost,
            &[
                "proto/kss/v1/keyserver.proto",
                "proto/kss/v1/admin.proto",
                "proto/google/rpc/status.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
