//! Compiles `proto/appliance/v1/*.proto` with protox (pure Rust: no system protoc) and
//! generates tonic clients and servers, plus the encoded descriptor set that server
//! reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "appliance/v1/topics.proto",
    "appliance/v1/records.proto",
    "appliance/v1/groups.proto",
    "appliance/v1/plugins.proto",
    "appliance/v1/pipelines.proto",
    "appliance/v1/connectors.proto",
    "appliance/v1/links.proto",
    "appliance/v1/query.proto",
    "appliance/v1/security.proto",
    "appliance/v1/exports.proto",
    "appliance/v1/system.proto",
    "appliance/link/v1/link.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["."])?;
    std::fs::write(
        out_dir.join("appliance_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(descriptors)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
