//! Compiles the contract with protox (no protoc needed) and writes the encoded descriptor set
//! that the servers hand to gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: [&str; 4] = [
    "data_management.proto",
    "metadata_store.proto",
    "training_service.proto",
    "prediction_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("automl_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
