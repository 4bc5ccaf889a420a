//! Generates the gRPC code and the reflection descriptor set into OUT_DIR.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    // A vendored protoc keeps builds independent of the machine; PROTOC still wins when set.
    if env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("modeld_descriptor.bin"))
        // prost's codec, except that a request the server cannot decode is INVALID_ARGUMENT.
        .codec_path("crate::pb::Codec")
        .compile_with_config(config, &["proto/modeld/v1/inference.proto"], &["proto"])?;
    // The Open Inference Protocol (KServe V2), with the same codec.
    let mut config = prost_build::Config::new();
    if env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .codec_path("crate::pb::Codec")
        .compile_with_config(config, &["proto/inference/grpc_predict_v2.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
