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
        // Rows are decoded by hand (src/pb/row.rs): their feature maps dominate a request.
        .extern_path(".modeld.v1.Row", "crate::pb::Row")
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
    git_commit();
    Ok(())
}

/// `MODELD_GIT_COMMIT` for the build-info metric: as given to the build (an image build without
/// the repository passes it in), else the checkout's commit, else "unknown".
fn git_commit() {
    println!("cargo:rerun-if-env-changed=MODELD_GIT_COMMIT");
    let commit = env::var("MODELD_GIT_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        // Rebuild when the checkout moves: HEAD, or a branch (a commit rewrites its ref file).
        for watched in [".git/HEAD", ".git/refs/heads"] {
            if std::path::Path::new(watched).exists() {
                println!("cargo:rerun-if-changed={watched}");
            }
        }
        let out = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=MODELD_GIT_COMMIT={}", commit.unwrap_or_else(|| "unknown".to_owned()));
}
